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

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::process::is_interrupted;
use crate::bench::BenchError;

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BenchError::Unexpected(format!("the generator's TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate and handshake signature (see the module's documentation).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
