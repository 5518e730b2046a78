//! One HTTPS request to an L7 listener from a source port of the test's choosing, so that a
//! test decides which node behind the ECMP router receives it: [`visit_from`] binds the port,
//! completes the handshake with the caller's rustls configuration (whose session store keeps
//! the tickets from one visit to the next), sends `GET /` with the sticky cookie if it has
//! one, reads the whole answer and returns a [`Visit`]: how the handshake went, the status,
//! the backend that answered and the cookie it was given.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use lb::lab::{NetNs, netns::run_async, passthrough::VIP_NAME};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned, pki_types::ServerName};
use tokio::net::TcpSocket;

/// Read and write timeout of a visit.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What one request saw.
#[derive(Clone, Debug)]
pub struct Visit {
    pub kind: Option<HandshakeKind>,
    /// The status line.
    pub status: String,
    /// The backend that answered (`x-backend`).
    pub backend: Option<String>,
    /// The `name=value` of the first `Set-Cookie`.
    pub set_cookie: Option<String>,
}

/// `GET /` to `vip` from `local` in namespace `ns`, with `config` and `cookie` (`name=value`)
/// if given. Panics on any failure, with what failed.
pub fn visit_from(
    ns: &NetNs,
    config: &Arc<ClientConfig>,
    local: SocketAddr,
    vip: SocketAddr,
    cookie: Option<&str>,
) -> Visit {
    let config = Arc::clone(config);
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET / HTTP/1.1\r\nHost: {VIP_NAME}\r\n{cookie}Connection: close\r\n\r\n");
    ns.spawn("visit", move || {
        let stream = connect_from(local, vip);
        let name = ServerName::try_from(VIP_NAME).expect("the VIP's name");
        let conn = ClientConnection::new(config, name).expect("a TLS client connection");
        let mut tls = StreamOwned::new(conn, stream);
        tls.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{local} -> {vip}: sending the request: {e}"));
        let mut answer = Vec::new();
        match tls.read_to_end(&mut answer) {
            Ok(_) => {}
            // A server that closes without close_notify after a complete answer.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !answer.is_empty() => {}
            Err(e) => panic!("{local} -> {vip}: reading the answer: {e}"),
        }
        parse_head(&String::from_utf8_lossy(&answer), tls.conn.handshake_kind())
    })
    .expect("starting a client thread")
    .join()
    .expect("a visit failed (its message is above)")
}

/// A TCP connection from `local` to `vip`, blocking, with the visit's timeouts.
fn connect_from(local: SocketAddr, vip: SocketAddr) -> TcpStream {
    let connected = run_async(async move {
        let socket = if local.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.bind(local)?;
        socket.connect(vip).await?.into_std()
    })
    .expect("a tokio runtime for the connection");
    let stream = connected.unwrap_or_else(|e| panic!("{local} -> {vip}: connecting: {e}"));
    stream.set_nonblocking(false).expect("a blocking socket");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("a read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("a write timeout");
    stream
}

/// The status line and the headers the tests look at, from an HTTP/1.1 answer.
fn parse_head(answer: &str, kind: Option<HandshakeKind>) -> Visit {
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.lines().next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    Visit {
        kind,
        status,
        backend: header("x-backend"),
        set_cookie: header("set-cookie").and_then(|c| c.split(';').next().map(str::to_owned)),
    }
}
