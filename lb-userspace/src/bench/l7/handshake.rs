//! Full TLS handshakes per second: N tasks on one thread of the generators' CPU, each in a loop
//! of TCP connect, a TLS 1.3 handshake with resumption disabled (so every handshake is a full
//! one: key exchange and the server's signature), close_notify, and the read of the server's
//! close. The same client for every system.
//!
//! The client does not verify the server's certificate nor its handshake signature: that work
//! is the client's, not the server's, and with it the single generator thread would be the
//! bottleneck (two ECDSA verifications cost more than the server's one signature). What is
//! measured is the server.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::process::is_interrupted;
use crate::{
    bench::BenchError,
    lab::{ClientTls, Versions},
};

/// How long a finished handshake waits for the server to close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What one run of the generator counted.
#[derive(Clone, Debug, Default)]
pub struct HandshakeRun {
    pub handshakes: u64,
    /// Connections refused or handshakes that failed.
    pub failures: u64,
    pub seconds: f64,
    /// The suite and key exchange the server chose (of the last handshake).
    pub negotiated: Option<String>,
}

impl HandshakeRun {
    pub fn per_second(&self) -> f64 {
        self.handshakes as f64 / self.seconds
    }
}

/// Runs `concurrency` handshake loops against `address` (SNI `server_name`) for `duration`.
pub async fn run(
    address: SocketAddr,
    server_name: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<HandshakeRun, BenchError> {
    let connector = TlsConnector::from(client_config()?);
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| BenchError::Unexpected(format!("server name {server_name:?}: {e}")))?;
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let connector = connector.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let mut run = HandshakeRun::default();
                while Instant::now() < deadline && !is_interrupted() {
                    match handshake(&connector, address, name.clone()).await {
                        Ok(negotiated) => {
                            run.handshakes += 1;
                            run.negotiated = Some(negotiated);
                        }
                        Err(_) => run.failures += 1,
                    }
                }
                run
            })
        })
        .collect();
    let mut total = HandshakeRun::default();
    for task in tasks {
        let run = task
            .await
            .map_err(|e| BenchError::Unexpected(format!("a handshake task failed: {e}")))?;
        total.handshakes += run.handshakes;
        total.failures += run.failures;
        total.negotiated = total.negotiated.or(run.negotiated);
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}

/// One connection: handshake, close_notify, and the server's close. Returns the suite and key
/// exchange group negotiated.
async fn handshake(
    connector: &TlsConnector,
    address: SocketAddr,
    name: ServerName<'static>,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    let connection = tls.get_ref().1;
    let negotiated = format!(
        "{:?} {:?}",
        connection
            .negotiated_cipher_suite()
            .map(|s| s.suite())
            .unwrap_or(rustls::CipherSuite::Unknown(0)),
        connection
            .negotiated_key_exchange_group()
            .map(|g| g.name())
            .unwrap_or(rustls::NamedGroup::Unknown(0)),
    );
    tls.shutdown().await?;
    // The handshake is done; the server's session tickets and close are read but not counted
    // (a reset or a close without close_notify still ends the connection).
    let mut sink = [0_u8; 4096];
    drop(
        tokio::time::timeout(CLOSE_WAIT, async {
            while tls.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await,
    );
    Ok(negotiated)
}

/// TLS 1.3 only, no resumption, ALPN `http/1.1`, the ring provider, no verification.
fn client_config() -> Result<Arc<rustls::ClientConfig>, BenchError> {
    Ok(ClientTls::unverified()
        .versions(Versions::Tls13Only)
        .no_resumption()
        .alpn(&[b"http/1.1"])
        .config()?)
}
