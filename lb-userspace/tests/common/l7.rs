//! Helpers for the L7 listener tests of `l7_protocols.rs` and `l7_tls.rs`: [`Setup`] writes a
//! one-listener configuration (listener `web`, pool `app`) with its certificates and starts
//! [`HttpBackend`]s and an [`L7Lab`] on 127.0.0.1; [`Client`] (in `l7/client.rs`) is an HTTPS
//! client (HTTP/1.1 or HTTP/2 by ALPN) that chooses its SNI, records the certificate it was
//! shown, and sends request bodies either whole or streamed from a channel ([`streamed`]).
//!
//! Data flow: `Setup::new` -> `cert`, `plain_backend`/`tls_backend`, setting lines -> `start`
//! -> [`Running`] (the lab and its address) -> [`Client::connect`] -> [`Client::fetch`].

#![allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]

pub mod client;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

pub use super::http::free_port;
use lb::lab::{
    Issued, Pki,
    http::HttpBackend,
    l7::{L7Lab, LabDir, OneListener},
};
use rustls::{RootCertStore, ServerConfig};

use self::client::{Client, Tls};

/// The name the listener's default certificate holds, and the `Host` of requests.
pub const HOST: &str = "www.example";
/// Longest wait for anything in these tests: a test that waits longer has failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `future`, or a panic naming `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {TIMEOUT:?}"))
}

/// Waits until `condition` holds (checked every 10 ms); panics naming `what` after [`TIMEOUT`].
/// For what another task counts after the client has seen its effect.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The listener's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Offload,
    Bridging,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Offload => "offload",
            Self::Bridging => "bridging",
        }
    }
}

/// A one-listener lab being put together: listener `web` on 127.0.0.1, pool `app`.
#[derive(Debug)]
pub struct Setup {
    pub dir: LabDir,
    /// The CA of the listener's certificates (clients trust it).
    pub pki: Pki,
    /// The CA of the backends' certificates (bridging); its PEM is `ca.pem`.
    pub backend_pki: Pki,
    pub backend_ca: PathBuf,
    mode: Mode,
    backends: Vec<(HttpBackend, Option<String>)>,
    /// Pool members after the backends: ports without a lab backend.
    other_ports: Vec<u16>,
    /// The configuration but for its members and the backends' CA.
    config: OneListener,
    verify_backends: bool,
}

impl Setup {
    /// A lab in a fresh directory, with two fresh CAs; bridging verifies the backends against
    /// `backend_pki` unless [`Setup::skip_verification`] is called.
    pub fn new(prefix: &str, mode: Mode) -> Self {
        let dir = LabDir::new(prefix).expect("lab directory");
        let pki = Pki::new("listener CA").expect("listener CA");
        let backend_pki = Pki::new("backend CA").expect("backend CA");
        let backend_ca = dir
            .write("backend-ca.pem", backend_pki.ca_pem().as_bytes())
            .expect("writing the backend CA");
        Self {
            dir,
            pki,
            backend_pki,
            backend_ca,
            mode,
            backends: Vec::new(),
            other_ports: Vec::new(),
            config: OneListener {
                mode: mode.as_str(),
                ..OneListener::default()
            },
            verify_backends: true,
        }
    }

    /// Issues a listener certificate for `names` from [`Setup::pki`], writes it as `file`.pem
    /// and `file`.key, and lists it (the first listed is the default).
    pub fn cert(&mut self, file: &str, names: &[&str]) -> Issued {
        let issued = self.pki.issue(names).expect("issuing a certificate");
        let files = write_issued(&self.dir, file, &issued);
        self.config.certificates.push(files);
        issued
    }

    /// A plain HTTP backend named `name`.
    pub async fn plain_backend(&mut self, name: &str) -> &HttpBackend {
        self.backend(name, None, None).await
    }

    /// A TLS backend named `name` presenting a certificate for `names` from
    /// [`Setup::backend_pki`].
    pub async fn tls_backend(&mut self, name: &str, names: &[&str]) -> &HttpBackend {
        let issued = self.backend_pki.issue(names).expect("backend certificate");
        self.backend(name, Some(backend_tls(&issued)), None).await
    }

    /// A backend named `name`, over TLS if `tls` is given, with its own `server_name` in the
    /// pool if given.
    pub async fn backend(
        &mut self,
        name: &str,
        tls: Option<Arc<ServerConfig>>,
        server_name: Option<&str>,
    ) -> &HttpBackend {
        let backend = HttpBackend::start("127.0.0.1:0".parse().expect("address"), name, tls)
            .await
            .expect("starting a backend");
        self.backends
            .push((backend, server_name.map(str::to_owned)));
        &self.backends.last().expect("just pushed").0
    }

    /// A backend started elsewhere.
    pub fn started_backend(&mut self, backend: HttpBackend) -> &mut Self {
        self.backends.push((backend, None));
        self
    }

    /// A pool member on `port` of 127.0.0.1 without a lab backend (one that misbehaves, or
    /// nothing), after the backends.
    pub fn other_port(&mut self, port: u16) -> &mut Self {
        self.other_ports.push(port);
        self
    }

    /// Adds `line` to `[listeners.web]`.
    pub fn listener(&mut self, line: &str) -> &mut Self {
        self.config.listener.push(line.to_owned());
        self
    }

    /// Adds `line` to `[listeners.web.tls]`.
    pub fn tls(&mut self, line: &str) -> &mut Self {
        self.config.tls.push(line.to_owned());
        self
    }

    /// Adds `line` to `[listeners.web.http]`.
    pub fn http(&mut self, line: &str) -> &mut Self {
        self.config.http.push(line.to_owned());
        self
    }

    /// Adds `line` to `[listeners.web.backend]`.
    pub fn backend_setting(&mut self, line: &str) -> &mut Self {
        self.config.backend.push(line.to_owned());
        self
    }

    /// Bridging without verifying the backends (`dangerously_skip_verification`).
    pub fn skip_verification(&mut self) -> &mut Self {
        self.verify_backends = false;
        self.backend_setting("dangerously_skip_verification = true")
    }

    /// The configuration for a listener on `port`.
    pub fn config_text(&self, port: u16) -> String {
        let mut config = self.config.clone();
        config.members = self
            .backends
            .iter()
            .map(|(backend, server_name)| (backend.address.port(), server_name.clone()))
            .chain(self.other_ports.iter().map(|port| (*port, None)))
            .collect();
        if self.mode == Mode::Bridging && self.verify_backends {
            config
                .backend
                .push(format!("ca_file = \"{}\"", self.backend_ca.display()));
        }
        config.text(port)
    }

    /// Starts the listener on a free port.
    pub fn start(self) -> Running {
        let port = free_port();
        let text = self.config_text(port);
        let backends = self.backends.into_iter().map(|(b, _)| b).collect();
        let lab = L7Lab::start(self.dir, self.pki, &text, backends)
            .unwrap_or_else(|e| panic!("starting the lab: {e}\n{text}"));
        let roots = lab.pki.roots().expect("roots");
        Running {
            lab,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            roots,
            backend_pki: self.backend_pki,
            backend_ca: self.backend_ca,
        }
    }
}

/// A started [`Setup`].
#[derive(Debug)]
pub struct Running {
    pub lab: L7Lab,
    pub address: SocketAddr,
    /// Trusts the listener's CA.
    pub roots: RootCertStore,
    pub backend_pki: Pki,
    pub backend_ca: PathBuf,
}

impl Running {
    pub fn backend(&self, index: usize) -> &HttpBackend {
        &self.lab.backends[index]
    }

    /// A client for [`HOST`] (SNI and verification), HTTP/2 if `h2`.
    pub async fn client(&self, h2: bool) -> Client {
        Client::connect(self.address, &Tls::to(HOST, &self.roots).h2(h2))
            .await
            .unwrap_or_else(|e| panic!("connecting to the listener (h2 {h2}): {e}"))
    }

    /// Rewrites the listener certificate files `file`.pem and `file`.key with `issued` (for
    /// `lb cert reload`); returns their paths.
    pub fn rewrite_cert(&self, file: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        write_issued(&self.lab.dir, file, issued)
    }

    /// The listener's request path (for its counters).
    pub fn proxy(&self) -> Arc<lb::l7::proxy::Proxy> {
        self.lab
            .l7
            .proxies()
            .into_iter()
            .next()
            .expect("one listener")
    }
}

/// Writes `issued`'s chain and key as `file`.pem and `file`.key (mode 0600) in `dir`.
pub fn write_issued(dir: &LabDir, file: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    lb::lab::l7::write_issued(dir, file, issued).expect("writing a certificate and its key")
}

/// A backend's TLS configuration for `issued`, offering `h2` and `http/1.1` by ALPN.
pub fn backend_tls(issued: &Issued) -> Arc<ServerConfig> {
    issued.http_server_config().expect("server config")
}
