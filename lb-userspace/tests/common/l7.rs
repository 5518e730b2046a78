//! The one harness of the L7 listener tests: [`Setup`] puts together listener `web` on
//! 127.0.0.1 in front of pool `app` (its mode, certificates, backends and settings as TOML
//! lines, written by the lab's [`ListenerToml`] and [`pool_toml`]) and starts it as a [`Site`]
//! (in `l7/site.rs`): the lab, its address and the clients that reach it. [`Site::start`] is
//! the short way to an offload site of given backends and [`Settings`]; [`Client`] (in
//! `l7/client.rs`) is an HTTPS client (HTTP/1.1 or HTTP/2 by ALPN) that chooses its SNI,
//! records the certificate it was shown, and sends request bodies either whole or streamed.
//!
//! Data flow: `Setup::new` (issues the default certificate) -> backends, setting lines ->
//! `start` -> [`Site`] -> [`Site::client`], [`Site::https`] or the raw clients of `http.rs`
//! -> requests -> the answers and the proxy's counters.

#![allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]

pub mod client;
mod site;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use lb::lab::{
    Issued, Pki,
    http::HttpBackend,
    l7::{LabDir, ListenerToml, pool_toml, quoted_path, write_sticky_keys},
};
use rustls::ServerConfig;

pub use self::site::Site;

/// The name the listener's default certificate holds, and the `Host` of requests.
pub const HOST: &str = "www.example";
/// The listener's name.
pub const LISTENER: &str = "web";
/// The pool's name.
pub const POOL: &str = "app";
/// Longest wait for anything in these tests: a test that waits longer has failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `future`, or a panic naming `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {TIMEOUT:?}"))
}

/// Waits until `condition` holds (checked every 5 ms); panics naming `what` after [`TIMEOUT`].
/// For what another task counts after the client has seen its effect.
pub async fn until(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A free TCP port on 127.0.0.1 (bound, then released). Nothing listens on it afterwards, so a
/// backend on it refuses connections.
pub fn free_port() -> u16 {
    lb::lab::free_port().expect("a free port on 127.0.0.1")
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` plain lab backends on 127.0.0.1, named `backend-0`, `backend-1`, ...
pub async fn http_backends(n: usize) -> Vec<HttpBackend> {
    let mut backends = Vec::new();
    for i in 0..n {
        let backend = HttpBackend::start(loopback(0), &format!("backend-{i}"), None)
            .await
            .expect("starting a lab backend");
        backends.push(backend);
    }
    backends
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

/// TOML lines of an offload site's listener (for [`Site::start`]), beyond its address, pool
/// and certificate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings<'a> {
    /// Keys of `[listeners.web]`, e.g. `balance = "round_robin"`.
    pub listener: &'a str,
    /// Keys of `[listeners.web.http]`.
    pub http: &'a str,
    /// Keys of `[listeners.web.backend]`.
    pub backend: &'a str,
}

/// A one-listener lab being put together: listener `web` on 127.0.0.1, pool `app`.
#[derive(Debug)]
pub struct Setup {
    pub dir: LabDir,
    /// The CA of the listener's certificates (clients trust it).
    pub pki: Pki,
    /// The listener's default certificate, `www`, for [`HOST`].
    pub www: Issued,
    /// The CA of the backends' certificates (bridging); its PEM is `ca.pem`.
    pub backend_pki: Pki,
    pub backend_ca: PathBuf,
    mode: Mode,
    backends: Vec<(HttpBackend, Option<String>)>,
    /// Pool members after the backends: ports without a lab backend.
    other_ports: Vec<u16>,
    /// The listener but for the backends' CA.
    listener: ListenerToml,
    /// Listeners beside `web`, each as `web` but for its name, port and sticky lines.
    others: Vec<(String, u16, Vec<String>)>,
    verify_backends: bool,
}

impl Setup {
    /// A lab in a fresh directory, with two fresh CAs and the default certificate `www` for
    /// [`HOST`]; bridging verifies the backends against `backend_pki` unless
    /// [`Setup::skip_verification`] is called.
    pub fn new(prefix: &str, mode: Mode) -> Self {
        let dir = LabDir::new(prefix).expect("lab directory");
        let pki = Pki::new("listener CA").expect("listener CA");
        let backend_pki = Pki::new("backend CA").expect("backend CA");
        let backend_ca = dir
            .write("backend-ca.pem", backend_pki.ca_pem().as_bytes())
            .expect("writing the backend CA");
        let www = pki.issue(&[HOST]).expect("issuing a certificate");
        let mut listener = ListenerToml::new(mode.as_str(), POOL);
        listener.certificates.push(write_issued(&dir, "www", &www));
        Self {
            dir,
            pki,
            www,
            backend_pki,
            backend_ca,
            mode,
            backends: Vec::new(),
            other_ports: Vec::new(),
            listener,
            others: Vec::new(),
            verify_backends: true,
        }
    }

    /// A listener in `mode` with one backend (`backend-0`) speaking `protocol` (`http1` or
    /// `http2`) to it: plain for offload, TLS for bridging (its certificate for 127.0.0.1).
    pub async fn one_backend(prefix: &str, mode: Mode, protocol: &str) -> Site {
        let mut setup = Self::new(prefix, mode);
        match mode {
            Mode::Offload => {
                setup.plain_backend("backend-0").await;
            }
            Mode::Bridging => {
                setup.tls_backend("backend-0", &["127.0.0.1"]).await;
            }
        }
        setup.backend_setting(&format!("protocol = \"{protocol}\""));
        setup.start()
    }

    /// Issues a listener certificate for `names` from [`Setup::pki`], writes it as `file`.pem
    /// and `file`.key, and lists it after those listed before.
    pub fn cert(&mut self, file: &str, names: &[&str]) -> Issued {
        let issued = self.pki.issue(names).expect("issuing a certificate");
        let files = write_issued(&self.dir, file, &issued);
        self.listener.certificates.push(files);
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
        let backend = HttpBackend::start(loopback(0), name, tls)
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

    /// Adds `lines` (one or more, by `\n`) to `[listeners.web]`.
    pub fn listener(&mut self, lines: &str) -> &mut Self {
        push_lines(&mut self.listener.listener, lines);
        self
    }

    /// Adds `lines` to `[listeners.web.tls]`.
    pub fn tls(&mut self, lines: &str) -> &mut Self {
        push_lines(&mut self.listener.tls, lines);
        self
    }

    /// Adds `lines` to `[listeners.web.http]`.
    pub fn http(&mut self, lines: &str) -> &mut Self {
        push_lines(&mut self.listener.http, lines);
        self
    }

    /// Adds `lines` to `[listeners.web.backend]`.
    pub fn backend_setting(&mut self, lines: &str) -> &mut Self {
        push_lines(&mut self.listener.backend, lines);
        self
    }

    /// Cookie stickiness: writes `keys` (the first seals) as `sticky.keys`, the listener's
    /// `key_file`, and adds `lines` to `[listeners.web.sticky]`; returns the key file's path.
    pub fn sticky(&mut self, keys: &[[u8; 32]], lines: &str) -> PathBuf {
        let file = write_sticky_keys(&self.dir, "sticky.keys", keys).expect("writing the keys");
        self.listener.sticky_keys = Some(file.clone());
        push_lines(&mut self.listener.sticky, lines);
        file
    }

    /// Another listener, `name` on `port`: as `web` (pool, certificates, settings, key file)
    /// but for its sticky lines, which are `sticky`.
    pub fn other_listener(&mut self, name: &str, port: u16, sticky: &str) -> &mut Self {
        let mut lines = Vec::new();
        push_lines(&mut lines, sticky);
        self.others.push((name.to_owned(), port, lines));
        self
    }

    /// Bridging without verifying the backends (`dangerously_skip_verification`).
    pub fn skip_verification(&mut self) -> &mut Self {
        self.verify_backends = false;
        self.backend_setting("dangerously_skip_verification = true")
    }

    /// `[pools.app]` and listener `web` as it is served (with the backends' CA).
    fn parts(&self) -> (String, ListenerToml) {
        let members: Vec<(SocketAddr, Option<String>)> = self
            .backends
            .iter()
            .map(|(backend, server_name)| (backend.address, server_name.clone()))
            .chain(self.other_ports.iter().map(|port| (loopback(*port), None)))
            .collect();
        let mut listener = self.listener.clone();
        if self.mode == Mode::Bridging && self.verify_backends {
            listener
                .backend
                .push(format!("ca_file = {}", quoted_path(&self.backend_ca)));
        }
        (pool_toml(POOL, &members), listener)
    }

    /// The configuration, listener `web` on `port`.
    pub fn config_text(&self, port: u16) -> String {
        let (pool, listener) = self.parts();
        let mut text = pool + &listener.text(LISTENER, port);
        for (name, port, sticky) in &self.others {
            let other = ListenerToml {
                sticky: sticky.clone(),
                ..listener.clone()
            };
            text.push_str(&other.text(name, *port));
        }
        text
    }

    /// Starts the listeners, `web` on a free port.
    pub fn start(self) -> Site {
        let port = free_port();
        let text = self.config_text(port);
        let parts = self.parts();
        Site::serve(self, &text, loopback(port), parts)
    }
}

/// Adds each line of `lines` (none if it is empty) to `to`.
fn push_lines(to: &mut Vec<String>, lines: &str) {
    to.extend(lines.lines().map(str::to_owned));
}

/// Writes `issued`'s chain and key as `file`.pem and `file`.key (mode 0600) in `dir`.
pub fn write_issued(dir: &LabDir, file: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    lb::lab::l7::write_issued(dir, file, issued).expect("writing a certificate and its key")
}

/// A backend's TLS configuration for `issued`, offering `h2` and `http/1.1` by ALPN.
pub fn backend_tls(issued: &Issued) -> Arc<ServerConfig> {
    issued.http_server_config().expect("server config")
}
