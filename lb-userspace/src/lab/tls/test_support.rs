//! Helpers the TLS unit tests share: a test CA, a server on loopback, and polling for what a
//! server thread records asynchronously.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use super::{Issued, Pki, TlsServer};

/// A fresh CA named like every test CA.
pub(super) fn test_pki() -> Pki {
    Pki::new("lab test CA").expect("CA")
}

/// Loopback with a port picked by the kernel.
fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

/// A server on [`loopback`] presenting `issued`, outside any namespace.
pub(super) fn start(identity: &str, issued: &Issued) -> TlsServer {
    TlsServer::start(None, loopback(), identity, issued).expect("start TLS server")
}

/// Polls `condition` every 10 ms; panics naming `what` after 5 s.
pub(super) fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
