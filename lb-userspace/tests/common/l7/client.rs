//! The HTTPS client of the L7 tests: [`Tls`] says how to shake hands (SNI, the name verified,
//! ALPN, TLS versions; never resuming a session, so that every handshake shows the certificate
//! served now), [`Client`] sends requests over HTTP/1.1 or HTTP/2 and keeps the leaf
//! certificate it was shown, and request bodies are sent whole ([`whole`]) or chunk by chunk
//! from a channel ([`streamed`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Version,
    body::{Frame, Incoming},
    client::conn::{http1, http2},
    header::{self, HeaderValue},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb::lab::{ClientTls, Versions};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::client::TlsStream;

use super::{HOST, within};

/// How a [`Client`] shakes hands.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The SNI sent; none if `None`.
    pub sni: Option<String>,
    /// The name the certificate must hold (whatever the SNI).
    pub verify_as: String,
    pub roots: RootCertStore,
    /// HTTP/2 (ALPN `h2`) or HTTP/1.1 (ALPN `http/1.1`).
    pub h2: bool,
    /// Offer no ALPN at all (then HTTP/1.1).
    pub no_alpn: bool,
    /// Offer only TLS 1.2.
    pub tls12_only: bool,
}

impl Tls {
    /// SNI and verification for `name`, HTTP/1.1.
    pub fn to(name: &str, roots: &RootCertStore) -> Self {
        Self {
            sni: Some(name.to_owned()),
            verify_as: name.to_owned(),
            roots: roots.clone(),
            h2: false,
            no_alpn: false,
            tls12_only: false,
        }
    }

    pub fn h2(mut self, h2: bool) -> Self {
        self.h2 = h2;
        self
    }

    /// Offers no ALPN protocol: HTTP/1.1.
    pub fn no_alpn(mut self) -> Self {
        (self.h2, self.no_alpn) = (false, true);
        self
    }

    /// Offers only TLS 1.2.
    pub fn tls12_only(mut self) -> Self {
        self.tls12_only = true;
        self
    }

    /// Sends `sni` (or none), still verifying the certificate for the name given to
    /// [`Tls::to`].
    pub fn sni(mut self, sni: Option<&str>) -> Self {
        self.sni = sni.map(str::to_owned);
        self
    }
}

/// A fresh TLS handshake with `address` (no session resumption: every handshake sees the
/// certificate the listener serves now).
pub async fn tls_connect(address: SocketAddr, tls: &Tls) -> std::io::Result<TlsStream<TcpStream>> {
    let alpn: &[&[u8]] = match (tls.no_alpn, tls.h2) {
        (true, _) => &[],
        (false, true) => &[b"h2"],
        (false, false) => &[b"http/1.1"],
    };
    let versions = if tls.tls12_only {
        Versions::Tls12Only
    } else {
        Versions::Both
    };
    let config = ClientTls::trusting(&tls.roots)
        .verify_as(&tls.verify_as)
        .expect("a DNS name to verify")
        .alpn(alpn)
        .versions(versions)
        .no_resumption()
        .sni(tls.sni.is_some())
        .config()
        .expect("a client configuration");
    let server_name = ServerName::try_from(tls.sni.as_ref().unwrap_or(&tls.verify_as).clone())
        .expect("a DNS name");
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
}

/// The rustls error inside a failed handshake's I/O error, if there is one.
pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}

/// A request body: whole, or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// An HTTPS client connection.
#[derive(Debug)]
pub struct Client {
    sender: Sender,
    /// The leaf certificate the listener presented.
    pub leaf: CertificateDer<'static>,
    /// The TLS version negotiated.
    pub version: Option<rustls::ProtocolVersion>,
}

#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub version: Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// The backend that answered (`x-backend`), if one did.
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// Connects and shakes hands (TLS, then HTTP/2 or HTTP/1.1 as `tls.h2` says).
    pub async fn connect(address: SocketAddr, tls: &Tls) -> std::io::Result<Self> {
        let stream = tls_connect(address, tls).await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .expect("a certificate")
            .clone()
            .into_owned();
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let version = stream.get_ref().1.protocol_version();
        let io = TokioIo::new(stream);
        let sender = if tls.h2 {
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "the listener chose h2");
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(conn.with_upgrades());
            Sender::H1(send)
        };
        Ok(Self {
            sender,
            leaf,
            version,
        })
    }

    /// Sends `request` (an absolute `https://HOST/...` URI, as [`request`] makes); an
    /// HTTP/1.1 request goes out in origin form with the authority as `Host`.
    pub async fn send(&mut self, mut request: Request<Body>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(send) => {
                if let Some(authority) = request.uri().authority().cloned() {
                    let host = HeaderValue::from_str(authority.as_str()).expect("a host");
                    request.headers_mut().entry(header::HOST).or_insert(host);
                    let path = request
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned();
                    *request.uri_mut() = path.parse().expect("a path");
                }
                send.ready().await?;
                send.send_request(request).await
            }
            Sender::H2(send) => {
                send.ready().await?;
                send.send_request(request).await
            }
        }
    }

    /// Sends `request` and reads the whole response, within [`TIMEOUT`].
    pub async fn fetch(&mut self, request: Request<Body>) -> hyper::Result<Fetched> {
        within("a request", async {
            let response = self.send(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Fetched {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        })
        .await
    }

    /// `GET path`, which must succeed at the HTTP level.
    pub async fn get(&mut self, path: &str) -> Fetched {
        self.fetch(request("GET", path, Bytes::new()))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// A request for `https://HOST{path}` with `body`.
pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("https://{HOST}{path}"))
        .body(whole(body))
        .expect("a request")
}

/// A body sent whole.
pub fn whole(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A body whose chunks are sent as they are given to the returned sender; it ends when the
/// sender is dropped.
pub fn streamed() -> (mpsc::Sender<Bytes>, Body) {
    let (send, receive) = mpsc::channel(4);
    (send, Streamed(receive).boxed())
}

struct Streamed(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// `n` bytes of a pattern that repeats every 251 bytes (so that a misplaced chunk shows).
pub fn pattern(n: usize) -> Bytes {
    (0..n)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect::<Vec<u8>>()
        .into()
}
