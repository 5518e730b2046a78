//! `lb bench l7-backend` (hidden): the lab's [`HttpBackend`] as a process of its own, so that
//! the benchmark can pin it to a CPU and read its CPU time. One thread (a current-thread
//! runtime); plain HTTP, or TLS with the given certificate chain and key. It prints
//! `listening ADDRESS` on stdout once it accepts connections, then serves until it is killed.

use std::{io::Write as _, net::SocketAddr, path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use crate::{bench::BenchError, lab::http::HttpBackend};

/// The name the backend gives in its answers.
pub const NAME: &str = "bench-backend";

/// Serves on `listen` until killed; over TLS if `tls` names a certificate chain and key.
pub fn serve(listen: SocketAddr, tls: Option<(&Path, &Path)>) -> Result<(), BenchError> {
    let config = tls
        .map(|(cert, key)| server_config(cert, key))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "starting the backend's runtime".to_owned(),
            source,
        })?;
    runtime.block_on(async {
        let backend = HttpBackend::start(listen, NAME, config)
            .await
            .map_err(|source| BenchError::Io {
                what: format!("listening on {listen}"),
                source,
            })?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening {}", backend.address)
            .and_then(|()| stdout.flush())
            .map_err(|source| BenchError::Io {
                what: "writing to stdout".to_owned(),
                source,
            })?;
        std::future::pending::<()>().await;
        drop(backend);
        Ok(())
    })
}

/// A rustls server configuration (ring, TLS 1.3 and 1.2) presenting `cert` with `key`.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, BenchError> {
    let pem_error = |path: &Path, e: rustls_pki_types::pem::Error| {
        BenchError::Unexpected(format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| pem_error(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
    .map_err(|e| BenchError::Unexpected(format!("the backend's TLS configuration: {e}")))?;
    Ok(Arc::new(config))
}
