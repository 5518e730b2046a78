//! Blocking TLS clients for the lab's line protocol.
//!
//! [`TlsClientConn::connect`] opens a TCP connection (timeouts, Nagle off), runs the rustls
//! handshake against a trust store and keeps the stream for [`TlsClientConn::exchange`]: one
//! line out, one line back ([`TlsClientConn::send_and_read_line`] sends other bytes, such as an
//! HTTP request; [`TlsClientConn::handshake_kind`] says whether a session was resumed). [`tls_exchange`] is the one-shot form and returns an [`Exchange`]:
//! the reply, the client's source address, and the server certificate's subjectAltNames (read
//! by [`san_names`] with the crate's small DER reader, `l7::tls::der`). A failed handshake
//! surfaces the rustls reason as [`LabError::Handshake`], so tests can tell an unknown issuer
//! from a wrong name or an expired certificate.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, RootCertStore, StreamOwned,
};
use rustls_pki_types::ServerName;

use super::{LabError, client_config, io_error};
use crate::l7::tls::der::read_san;

/// Connect, read and write timeout of the blocking clients.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What one [`tls_exchange`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The reply line, without its newline: `"{identity} {line}"`.
    pub reply: String,
    /// The client's own address (its source port).
    pub local_addr: SocketAddr,
    /// DNS names and IP addresses in the server certificate's subjectAltName.
    pub peer_names: Vec<String>,
}

/// DNS names and IP addresses in a DER certificate's subjectAltName; empty if it has none
/// or cannot be read.
pub(super) fn san_names(cert: &[u8]) -> Vec<String> {
    read_san(cert)
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Connects to `addr` with SNI `server_name`, sends `line`, returns the reply and what the
/// handshake showed.
pub fn tls_exchange(
    server_name: &str,
    addr: SocketAddr,
    roots: &RootCertStore,
    line: &str,
) -> Result<Exchange, LabError> {
    let mut conn = TlsClientConn::connect(server_name, addr, roots)?;
    let reply = conn.exchange(line)?;
    Ok(Exchange {
        reply,
        local_addr: conn.local_addr(),
        peer_names: conn.peer_names(),
    })
}

/// A blocking TLS client connection that exchanges lines with a
/// [`TlsServer`](super::TlsServer).
#[derive(Debug)]
pub struct TlsClientConn {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl TlsClientConn {
    /// Connects and completes the handshake, verifying `server_name` against `roots`.
    pub fn connect(
        server_name: &str,
        addr: SocketAddr,
        roots: &RootCertStore,
    ) -> Result<Self, LabError> {
        Self::connect_with(client_config(roots)?, server_name, addr)
    }

    /// Like [`TlsClientConn::connect`], with a prepared configuration (see [`client_config`]).
    pub fn connect_with(
        config: Arc<ClientConfig>,
        server_name: &str,
        addr: SocketAddr,
    ) -> Result<Self, LabError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| LabError::ServerName(server_name.to_owned()))?;
        let mut socket = connect_tcp(addr)?;
        let local_addr = socket
            .local_addr()
            .map_err(io_error("read the local address to", addr))?;
        let mut conn = ClientConnection::new(config, name).map_err(LabError::TlsConfig)?;
        while conn.is_handshaking() {
            let moved = conn
                .complete_io(&mut socket)
                .map_err(|error| handshake_error(server_name, addr, error))?;
            if moved == (0, 0) {
                return Err(LabError::Closed { addr });
            }
        }
        Ok(Self {
            stream: BufReader::new(StreamOwned::new(conn, socket)),
            local_addr,
            peer_addr: addr,
        })
    }

    /// Sends `line` and returns the reply line, without its newline.
    pub fn exchange(&mut self, line: &str) -> Result<String, LabError> {
        if line.contains('\n') {
            return Err(LabError::Line(line.to_owned()));
        }
        self.send_and_read_line(format!("{line}\n").as_bytes())
    }

    /// Sends `bytes` as they are (an HTTP/1.1 request head, say) and returns the first line
    /// back (a status line), without its line end. A TLS 1.3 client has then read the session
    /// tickets the server sent after the handshake.
    pub fn send_and_read_line(&mut self, bytes: &[u8]) -> Result<String, LabError> {
        let addr = self.peer_addr;
        let io_error = io_error("exchange a line with", addr);
        let writer = self.stream.get_mut();
        writer.write_all(bytes).map_err(io_error)?;
        writer.flush().map_err(io_error)?;
        let mut reply = String::new();
        if self.stream.read_line(&mut reply).map_err(io_error)? == 0 {
            return Err(LabError::Closed { addr });
        }
        let trimmed = reply.trim_end_matches(['\n', '\r']).len();
        reply.truncate(trimmed);
        Ok(reply)
    }

    /// Asks for `size` bytes (`download N`) and reads them all; returns the reply line.
    pub fn download(&mut self, size: u64) -> Result<String, LabError> {
        let reply = self.exchange(&format!("download {size}"))?;
        let addr = self.peer_addr;
        let copied = io::copy(&mut (&mut self.stream).take(size), &mut io::sink())
            .map_err(io_error("download from", addr))?;
        if copied < size {
            return Err(LabError::Closed { addr });
        }
        Ok(reply)
    }

    /// Sends `size` bytes (`upload N`) and waits for the server's reply line.
    pub fn upload(&mut self, size: u64) -> Result<String, LabError> {
        let addr = self.peer_addr;
        let io_error = io_error("upload to", addr);
        let writer = self.stream.get_mut();
        writer
            .write_all(format!("upload {size}\n").as_bytes())
            .map_err(io_error)?;
        let chunk = vec![0x75u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            writer.write_all(&chunk[..n]).map_err(io_error)?;
            left -= n as u64;
        }
        writer.flush().map_err(io_error)?;
        let mut reply = String::new();
        if self.stream.read_line(&mut reply).map_err(io_error)? == 0 {
            return Err(LabError::Closed { addr });
        }
        let trimmed = reply.trim_end_matches(['\n', '\r']).len();
        reply.truncate(trimmed);
        Ok(reply)
    }

    /// Sets how long a read or write may block (the default is the lab's I/O timeout).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), LabError> {
        let addr = self.peer_addr;
        let socket = &self.stream.get_ref().sock;
        socket
            .set_read_timeout(Some(timeout))
            .and_then(|()| socket.set_write_timeout(Some(timeout)))
            .map_err(io_error("set the timeouts of", addr))
    }

    /// The client's own address (its source port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// DNS names and IP addresses in the server certificate's subjectAltName.
    pub fn peer_names(&self) -> Vec<String> {
        let conn = &self.stream.get_ref().conn;
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| san_names(leaf))
            .unwrap_or_default()
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.stream.get_ref().conn.protocol_version()
    }

    /// Whether the handshake was a full one or resumed a session.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.stream.get_ref().conn.handshake_kind()
    }
}

/// A TCP connection with timeouts and Nagle off.
fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, LabError> {
    let socket =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(io_error("connect to", addr))?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| socket.set_nodelay(true))
        .map_err(io_error("set socket options for", addr))?;
    Ok(socket)
}

/// The rustls reason inside a failed handshake's I/O error, if there is one.
fn handshake_error(server_name: &str, addr: SocketAddr, error: io::Error) -> LabError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(source) => LabError::Handshake {
            server_name: server_name.to_owned(),
            addr,
            source: source.clone(),
        },
        None => io_error("TLS handshake with", addr)(error),
    }
}

#[cfg(test)]
mod tests {
    use rustls::{CertificateError, Error as TlsError};

    use super::super::Pki;
    use super::super::test_support::{start, test_pki, wait_for};
    use super::{Exchange, LabError, tls_exchange};

    /// The certificate error a handshake failed with.
    fn cert_failure(result: Result<Exchange, LabError>) -> CertificateError {
        match result {
            Err(LabError::Handshake {
                source: TlsError::InvalidCertificate(error),
                ..
            }) => error,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn handshake_and_exchange() {
        let pki = test_pki();
        let issued = pki.issue(&["backend.lab", "127.0.0.1"]).expect("issue");
        let server = start("b1", &issued);
        let roots = pki.roots().expect("roots");

        let exchange = tls_exchange("backend.lab", server.local_addr(), &roots, "hello")
            .expect("exchange by DNS name");
        assert_eq!(exchange.reply, "b1 hello");
        assert_eq!(exchange.peer_names, ["backend.lab", "127.0.0.1"]);
        assert!(server.accepted().contains(&exchange.local_addr));

        let by_ip = tls_exchange("127.0.0.1", server.local_addr(), &roots, "again")
            .expect("exchange by IP address");
        assert_eq!(by_ip.reply, "b1 again");
        assert_eq!(server.handshakes_completed(), 2);
        assert_eq!(server.handshakes_failed(), 0);
        server.stop().expect("stop");
    }

    #[test]
    fn client_trusting_another_ca_fails() {
        let pki = test_pki();
        let other = Pki::new("other CA").expect("other CA");
        let server = start("b3", &pki.issue(&["backend.lab"]).expect("issue"));
        let roots = other.roots().expect("roots");
        let result = tls_exchange("backend.lab", server.local_addr(), &roots, "hi");
        assert_eq!(cert_failure(result), CertificateError::UnknownIssuer);
        wait_for("the failed handshake", || server.handshakes_failed() == 1);
    }

    #[test]
    fn name_mismatch_fails() {
        let pki = test_pki();
        let server = start("b4", &pki.issue(&["backend.lab"]).expect("issue"));
        let roots = pki.roots().expect("roots");
        let result = tls_exchange("other.lab", server.local_addr(), &roots, "hi");
        let error = cert_failure(result);
        assert!(
            matches!(
                error,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "expected a name mismatch, got {error:?}"
        );
    }

    #[test]
    fn expired_certificate_fails() {
        let pki = test_pki();
        let server = start("b5", &pki.issue_expired(&["backend.lab"]).expect("issue"));
        let roots = pki.roots().expect("roots");
        let result = tls_exchange("backend.lab", server.local_addr(), &roots, "hi");
        let error = cert_failure(result);
        assert!(
            matches!(
                error,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ),
            "expected an expired certificate, got {error:?}"
        );
    }
}
