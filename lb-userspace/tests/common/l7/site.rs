//! [`Site`]: a started [`Setup`](super::Setup), listener `web` and its backends, and what a test
//! asks of it: its clients ([`Site::client`], [`Site::https`], a bare TLS stream), its proxy and
//! counters, its backends, their weights, and a second balancer instance of the same
//! configuration ([`Site::twin`]). The raw HTTP/1.1 and HTTP/2 clients are in `http.rs`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use lb::{
    l7::proxy::{Counters, Proxy},
    lab::{
        ClientTls, Issued, Pki,
        http::HttpBackend,
        l7::{HttpsConn, L7Lab, LabDir, ListenerToml},
    },
};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    HOST, LISTENER, Mode, Settings, Setup,
    client::{Client, Tls},
    free_port, loopback, write_issued,
};

/// Started L7 listeners (`web`, and any others) and their backends.
#[derive(Debug)]
pub struct Site {
    pub lab: L7Lab,
    /// Listener `web`'s address.
    pub address: SocketAddr,
    /// Trusts the listeners' CA.
    pub roots: RootCertStore,
    /// The pool's ports, in its order: the lab backends', then the others.
    pub ports: Vec<u16>,
    pub backend_pki: Pki,
    pub backend_ca: PathBuf,
    /// `[pools.app]` and listener `web` as served, for [`Site::twin`].
    pub(super) pool: String,
    pub(super) listener: ListenerToml,
}

impl Site {
    /// Serves pool `app` = `backends` then `other_ports` (all on 127.0.0.1) behind offload
    /// listener `web` with `settings`.
    pub fn start(
        prefix: &str,
        backends: Vec<HttpBackend>,
        other_ports: &[u16],
        settings: Settings<'_>,
    ) -> Self {
        let mut setup = Setup::new(prefix, Mode::Offload);
        for backend in backends {
            setup.started_backend(backend);
        }
        for port in other_ports {
            setup.other_port(*port);
        }
        setup
            .listener(settings.listener)
            .http(settings.http)
            .backend_setting(settings.backend);
        setup.start()
    }

    /// Serves `config_text` (of `setup`'s files), `web` at `address`.
    pub(super) fn serve(
        setup: Setup,
        config_text: &str,
        address: SocketAddr,
        (pool, listener): (String, ListenerToml),
    ) -> Self {
        let ports = setup
            .backends
            .iter()
            .map(|(backend, _)| backend.address.port())
            .chain(setup.other_ports.iter().copied())
            .collect();
        let backends = setup.backends.into_iter().map(|(b, _)| b).collect();
        let lab = L7Lab::start(setup.dir, setup.pki, config_text, backends)
            .unwrap_or_else(|e| panic!("starting the lab: {e}\n{config_text}"));
        let roots = lab.pki.roots().expect("roots");
        Self {
            lab,
            address,
            roots,
            ports,
            backend_pki: setup.backend_pki,
            backend_ca: setup.backend_ca,
            pool,
            listener,
        }
    }

    /// Another balancer instance in front of the same backends (which this site keeps):
    /// listener `web` as served here but on a free port and changed by `edit`, its files in a
    /// directory of its own.
    pub fn twin(&self, prefix: &str, edit: impl FnOnce(&mut ListenerToml)) -> Self {
        let mut listener = self.listener.clone();
        edit(&mut listener);
        let port = free_port();
        let text = format!("{}{}", self.pool, listener.text(LISTENER, port));
        let dir = LabDir::new(prefix).expect("lab directory");
        // The twin serves this site's certificate; its own CAs sign nothing.
        let lab = L7Lab::start(dir, Pki::new("unused CA").expect("a CA"), &text, Vec::new())
            .unwrap_or_else(|e| panic!("starting the twin: {e}\n{text}"));
        Self {
            lab,
            address: loopback(port),
            roots: self.roots.clone(),
            ports: self.ports.clone(),
            backend_pki: Pki::new("unused backend CA").expect("a CA"),
            backend_ca: self.backend_ca.clone(),
            pool: self.pool.clone(),
            listener,
        }
    }

    /// The request path of listener `web` (for its counters).
    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy_of(LISTENER)
    }

    /// The request path of listener `name`.
    pub fn proxy_of(&self, name: &str) -> Arc<Proxy> {
        self.lab
            .l7
            .proxies()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no L7 listener {name:?}"))
    }

    /// One of listener `web`'s counters now.
    pub fn counter(&self, which: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        which(&self.proxy().counters).load(Ordering::Relaxed)
    }

    /// The lab backend `i`.
    pub fn backend(&self, i: usize) -> &HttpBackend {
        &self.lab.backends[i]
    }

    /// Requests each lab backend has received.
    pub fn requests(&self) -> Vec<u64> {
        self.lab
            .backends
            .iter()
            .map(HttpBackend::requests)
            .collect()
    }

    /// Gives the backends whose port `takes` accepts their full weight, the others weight 0
    /// (out of the pool for new requests and sessions), as health checks would.
    pub fn set_taking(&self, takes: impl Fn(u16) -> bool) {
        self.lab.set_members(super::POOL, |member| {
            if member.backend.port.is_some_and(&takes) {
                (member.weight.max(1), true)
            } else {
                (0, false)
            }
        });
    }

    /// A client for [`HOST`] (SNI and verification), HTTP/2 if `h2`.
    pub async fn client(&self, h2: bool) -> Client {
        Client::connect(self.address, &Tls::to(HOST, &self.roots).h2(h2))
            .await
            .unwrap_or_else(|e| panic!("connecting to the listener (h2 {h2}): {e}"))
    }

    /// The lab's client (hyper, HTTP/1.1 or HTTP/2) for [`HOST`] on `port` of 127.0.0.1.
    pub async fn https_to(&self, port: u16, h2: bool) -> HttpsConn {
        HttpsConn::connect(loopback(port), Some(HOST), &self.roots, h2)
            .await
            .unwrap_or_else(|e| panic!("connecting to the listener on {port}: {e}"))
    }

    /// The lab's client for listener `web`.
    pub async fn https(&self, h2: bool) -> HttpsConn {
        self.https_to(self.address.port(), h2).await
    }

    /// A TLS connection to the listener offering `alpn`.
    pub async fn tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.address)
            .await
            .expect("connecting to the listener");
        self.handshake(tcp, alpn)
            .await
            .expect("TLS handshake with the listener")
    }

    /// A TLS handshake on `tcp`, offering `alpn`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = ClientTls::trusting(&self.roots)
            .alpn(&[alpn])
            .config()
            .expect("a client config");
        let name = ServerName::try_from(HOST).expect("a DNS name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    /// Rewrites the listener certificate files `file`.pem and `file`.key with `issued` (for
    /// `lb cert reload`); returns their paths.
    pub fn rewrite_cert(&self, file: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        write_issued(&self.lab.dir, file, issued)
    }
}
