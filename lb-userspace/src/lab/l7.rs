//! An L7 lab on loopback, for the L7 listeners' tests and benchmarks: certificates and keys
//! written to a private directory (removed on drop), [`HttpBackend`]s on 127.0.0.1, the
//! listeners of a configuration served in-process by an [`L7`], and HTTPS clients (HTTP/1.1 or
//! HTTP/2) that trust the lab's CA.
//!
//! The pools' members are given to the listeners as the daemon would give them, from a
//! [`Runtime`] (all healthy); a test changes them with [`L7Lab::set_members`] to stand in for
//! health checks, drains and edits.
//!
//! [`ListenerToml`] and [`pool_toml`] (in `l7/config_text.rs`) write the configurations the
//! tests and the benchmarks serve.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::PathBuf, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

mod config_text;

pub use config_text::{ListenerToml, pool_toml, quoted_path};

use super::{ClientTls, Issued, LabError, Pki, http::HttpBackend};
use crate::{
    config::Config,
    daemon::runtime::Runtime,
    l7::{L7, PoolMembers, balance::Member},
};

/// A private directory, removed on drop.
#[derive(Debug)]
pub struct LabDir {
    pub path: PathBuf,
}

impl LabDir {
    pub fn new(prefix: &str) -> Result<Self, LabError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| LabError::File {
            what: "creating the lab directory",
            source,
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| LabError::File {
                what: "making the lab directory private",
                source,
            },
        )?;
        Ok(Self { path })
    }

    /// Writes `name` with `content`, readable by its owner only.
    pub fn write(&self, name: &str, content: &[u8]) -> Result<PathBuf, LabError> {
        let path = self.path.join(name);
        std::fs::write(&path, content).map_err(|source| LabError::File {
            what: "writing a lab file",
            source,
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| LabError::File {
                what: "making a lab file private",
                source,
            },
        )?;
        Ok(path)
    }

    /// Makes the directory and every file in it user `uid`'s and group `gid`'s (modes kept):
    /// for a daemon that runs as a user of its own and must own its keys.
    pub fn give_to(&self, uid: u32, gid: u32) -> Result<(), LabError> {
        let io = |source| LabError::File {
            what: "giving the lab directory to the daemon's user",
            source,
        };
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid)).map_err(io)?;
        for entry in std::fs::read_dir(&self.path).map_err(io)? {
            std::os::unix::fs::chown(entry.map_err(io)?.path(), Some(uid), Some(gid))
                .map_err(io)?;
        }
        Ok(())
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.path));
    }
}

/// L7 listeners on loopback and their backends.
#[derive(Debug)]
pub struct L7Lab {
    pub dir: LabDir,
    /// The CA of the listeners' certificates (clients trust it).
    pub pki: Pki,
    pub config: Config,
    pub l7: L7,
    pub backends: Vec<HttpBackend>,
}

impl L7Lab {
    /// Serves `config` (which the caller writes with the paths of [`L7Lab::dir`]) with
    /// `backends` already started.
    pub fn start(
        dir: LabDir,
        pki: Pki,
        config_text: &str,
        backends: Vec<HttpBackend>,
    ) -> Result<Self, LabError> {
        let config = Config::parse(config_text, "lab.toml")
            .map_err(|e| LabError::Daemon(format!("the lab configuration: {e}")))?;
        let l7 = L7::new(tokio::runtime::Handle::current());
        let prepared = l7
            .prepare(&config)
            .map_err(|e| LabError::Daemon(format!("starting the L7 listeners: {e}")))?;
        l7.commit(prepared, &all_healthy(&config));
        Ok(Self {
            dir,
            pki,
            config,
            l7,
            backends,
        })
    }

    /// Gives the listeners `pool`'s members with weights and stickiness from `f` (address,
    /// configured weight) -> (weight now, sessions stay).
    pub fn set_members(&self, pool: &str, f: impl Fn(&Member) -> (u32, bool)) {
        let mut members = all_healthy(&self.config);
        if let Some(list) = members.get_mut(pool) {
            for member in list.iter_mut() {
                (member.weight, member.sticky) = f(member);
            }
        }
        self.l7.update_pools(&members);
    }
}

/// Every pool's members as a daemon that has just started gives them: all healthy.
pub fn all_healthy(config: &Config) -> PoolMembers {
    let mut runtime = Runtime::default();
    let now = Instant::now();
    runtime.sync(config, now, false);
    runtime.members(config, now)
}

/// Writes the certificate chain and key of `names`, issued by `pki`, into `dir`; returns the
/// paths (certificate, key).
pub fn write_cert(
    dir: &LabDir,
    pki: &Pki,
    file: &str,
    names: &[&str],
) -> Result<(PathBuf, PathBuf), LabError> {
    write_issued(dir, file, &pki.issue(names)?)
}

/// Writes `issued`'s chain and key as `{file}.pem` and `{file}.key` (owner only) into `dir`;
/// returns the paths (certificate, key).
pub fn write_issued(
    dir: &LabDir,
    file: &str,
    issued: &Issued,
) -> Result<(PathBuf, PathBuf), LabError> {
    let cert = dir.write(&format!("{file}.pem"), issued.chain_pem().as_bytes())?;
    let key = dir.write(&format!("{file}.key"), issued.key_pem().as_bytes())?;
    Ok((cert, key))
}

/// Writes a cookie key file of `keys` (64 hex digits each).
pub fn write_sticky_keys(dir: &LabDir, file: &str, keys: &[[u8; 32]]) -> Result<PathBuf, LabError> {
    let text: String = keys
        .iter()
        .map(|key| key.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    dir.write(file, text.as_bytes())
}

/// Why [`HttpsConn::send_or_return`] got no response.
#[derive(Debug)]
pub enum SendError {
    /// The request never left: the connection had closed or refused new requests.
    NotSent(LabError),
    /// The request was sent (or partly): it failed.
    Failed(LabError),
}

/// An HTTPS client connection to a lab listener.
pub enum HttpsConn {
    H1(conn::http1::SendRequest<Full<Bytes>>),
    H2(conn::http2::SendRequest<Full<Bytes>>),
}

impl std::fmt::Debug for HttpsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::H1(_) => "HttpsConn::H1",
            Self::H2(_) => "HttpsConn::H2",
        })
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The backend that answered (`x-backend`), if one did.
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }

    /// The first `Set-Cookie` value's `name=value` part.
    pub fn set_cookie(&self) -> Option<String> {
        self.headers
            .get(hyper::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
    }
}

impl HttpsConn {
    /// Connects to `address` with SNI `name` (none if `None`), offering `h2` or HTTP/1.1.
    pub async fn connect(
        address: SocketAddr,
        name: Option<&str>,
        roots: &rustls::RootCertStore,
        h2: bool,
    ) -> Result<Self, LabError> {
        let io_error = |what: &'static str| move |source| LabError::File { what, source };
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let config = ClientTls::trusting(roots)
            .alpn(&[alpn])
            .sni(name.is_some())
            .config()?;
        let server_name = match name {
            Some(name) => {
                ServerName::try_from(name.to_owned()).map_err(|_| LabError::InvalidName {
                    name: name.to_owned(),
                    reason: "not a DNS name",
                })?
            }
            None => ServerName::IpAddress(address.ip().into()),
        };
        let tcp = TcpStream::connect(address)
            .await
            .map_err(io_error("connecting to a lab listener"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(io_error("TLS handshake with a lab listener"))?;
        let io = TokioIo::new(tls);
        let http = |e: hyper::Error| LabError::Daemon(format!("HTTP handshake: {e}"));
        if h2 {
            let (send, conn) = conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            Ok(Self::H2(send))
        } else {
            let (send, conn) = conn::http1::handshake(io).await.map_err(http)?;
            tokio::spawn(conn.with_upgrades());
            Ok(Self::H1(send))
        }
    }

    /// Sends `request` (an absolute URI, as [`get`] makes) and reads the whole response.
    /// HTTP/1.1 sends it as a browser does: the path, and the authority as `Host`.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, LabError> {
        self.send_or_return(request)
            .await
            .map_err(|error| match error {
                SendError::NotSent(error) | SendError::Failed(error) => error,
            })
    }

    /// [`HttpsConn::send`], telling apart a request the connection never sent (it had closed,
    /// or the server had said it would take no more: a client sends it again on a new
    /// connection) from one that failed.
    pub async fn send_or_return(
        &mut self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Answer, SendError> {
        let http = |e: hyper::Error| LabError::Daemon(format!("HTTP: {e}"));
        let unsent = |e: hyper::Error| SendError::NotSent(http(e));
        let sent = |mut e: conn::TrySendError<Request<Full<Bytes>>>| {
            let error = format!("HTTP: {}", e.error());
            if e.take_message().is_some() {
                SendError::NotSent(LabError::Daemon(error))
            } else {
                SendError::Failed(LabError::Daemon(error))
            }
        };
        let response: Response<hyper::body::Incoming> = match self {
            Self::H1(send) => {
                if let Some(authority) = request.uri().authority().cloned() {
                    if !request.headers().contains_key(hyper::header::HOST)
                        && let Ok(host) = hyper::header::HeaderValue::from_str(authority.as_str())
                    {
                        request.headers_mut().insert(hyper::header::HOST, host);
                    }
                    let path = request
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned();
                    if let Ok(uri) = path.parse() {
                        *request.uri_mut() = uri;
                    }
                }
                send.ready().await.map_err(unsent)?;
                send.try_send_request(request).await.map_err(sent)?
            }
            Self::H2(send) => {
                send.ready().await.map_err(unsent)?;
                send.try_send_request(request).await.map_err(sent)?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| SendError::Failed(http(e)))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A GET of `path` for host `host`, with `cookie` if given.
pub fn get(host: &str, path: &str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(format!("https://{host}{path}"));
    if let Some(cookie) = cookie {
        builder = builder.header(hyper::header::COOKIE, cookie);
    }
    // The parts are valid: a lab host, a path and a cookie the lab built.
    builder.body(Full::new(Bytes::new())).unwrap_or_default()
}
