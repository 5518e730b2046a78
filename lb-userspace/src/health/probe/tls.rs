//! The TLS part of an HTTPS probe: which name to verify, the client configuration, the
//! handshake, and a short reason when it fails.
//!
//! [`choose_server_name`] picks the name sent as SNI and verified in the certificate: the
//! probe's `server_name`, else its `host` without a port, else the target's IP address (which
//! the certificate must hold as an IP subjectAltName). [`handshake`] builds a fresh rustls
//! client configuration per check (ring provider, TLS 1.3 and 1.2, the probe's roots, no
//! client certificate), so a check never resumes a session and always verifies the
//! certificate the backend presents now. Failures read like "TLS: certificate expired ...".

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The name to verify: `server_name`, else `host` without its port, else the target's IP.
pub(super) fn choose_server_name(
    server_name: Option<&str>,
    host: Option<&str>,
    target: SocketAddr,
) -> Result<ServerName<'static>, String> {
    let Some(name) = server_name.or_else(|| host.map(strip_port)) else {
        return Ok(ServerName::from(target.ip()));
    };
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("TLS: {name:?} is neither a DNS name nor an IP address"))
}

/// `host` of a `Host` header `host[:port]`, without the brackets of an IPv6 address.
fn strip_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split_once(']').map_or(bracketed, |(ip, _)| ip);
    }
    match host.split_once(':') {
        // More than one colon: a bare IPv6 address, no port.
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// Completes a TLS handshake over `stream`, verifying the certificate for `name`.
pub(super) async fn handshake(
    stream: TcpStream,
    name: ServerName<'static>,
    roots: &Arc<RootCertStore>,
) -> Result<TlsStream<TcpStream>, String> {
    let connector = TlsConnector::from(client_config(roots)?);
    connector
        .connect(name, stream)
        .await
        .map_err(|error| describe_tls_error(&error))
}

/// A client configuration trusting `roots`: ring, TLS 1.3 and 1.2, no client certificate.
fn client_config(roots: &Arc<RootCertStore>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| format!("TLS: cannot configure the client: {error}"))?
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A short reason for a failed handshake, naming the certificate's fault when there is one.
fn describe_tls_error(error: &io::Error) -> String {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidCertificate(fault)) => describe_certificate_error(fault),
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("TLS: the backend refused the handshake (alert {alert:?})")
        }
        Some(other) => format!("TLS: {other}"),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "TLS: the connection closed during the handshake".to_owned()
        }
        None => format!("TLS: handshake failed: {error}"),
    }
}

/// "TLS: certificate ...", in the words of the fault.
fn describe_certificate_error(fault: &CertificateError) -> String {
    match fault {
        CertificateError::UnknownIssuer => {
            "TLS: certificate not trusted (its issuer is not among the probe's roots)".to_owned()
        }
        CertificateError::Expired => "TLS: certificate expired".to_owned(),
        CertificateError::ExpiredContext { time, not_after } => {
            let ago = time.as_secs().saturating_sub(not_after.as_secs());
            format!("TLS: certificate expired {} ago", describe_seconds(ago))
        }
        CertificateError::NotValidForName => "TLS: certificate not valid for the name".to_owned(),
        // rustls says the rest well: "certificate not valid for name ...; certificate is only
        // valid for ...", "certificate not valid yet: ...", and so on.
        other => format!("TLS: {other}"),
    }
}

/// "90 s", "3 h", "12 days": a duration in its largest whole unit.
fn describe_seconds(seconds: u64) -> String {
    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s >= 2 * DAY => format!("{} days", s / DAY),
        s if s >= 2 * HOUR => format!("{} h", s / HOUR),
        s => format!("{s} s"),
    }
}
