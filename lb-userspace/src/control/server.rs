//! The daemon's side of the control API: a Unix socket that only root (and the daemon's own
//! user) may use, one request per connection, each handed to the daemon's controller through
//! a channel.
//!
//! The socket is created with mode 0600 from the start (a restrictive umask around `bind`, so
//! there is no moment when others may connect), in a directory that only its owner may write
//! (created 0700, or checked: anyone who may write there could put their own socket in its
//! place). Each connection's peer is checked again by its credentials (`SO_PEERCRED`): root or
//! the daemon's user, else refused. A request must arrive whole within [`READ_TIMEOUT`] and
//! [`MAX_REQUEST`] bytes.

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{Request, Response};

/// A request and where to send its answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// The largest request accepted (a request is a few hundred bytes).
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a connection may take to send its request (the CLI sends it at once).
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another lb daemon is running (it answers on {0}); stop it first")]
    AlreadyRunning(PathBuf),
    #[error(
        "control socket {path}: its directory {dir} {why}: anyone who may write there could put their own socket in its place; make it owned by root and writable by its owner only (chmod go-w), or put the socket elsewhere"
    )]
    UnsafeDirectory {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fails if a daemon already answers at `path`; removes a socket a dead daemon left there.
pub fn ensure_free(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(
                "something other than a socket is there: not removed; correct [control] socket",
            ),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::AlreadyRunning(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ServerError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The control socket's file, as this daemon made it. Dropping it removes the file, unless a
/// successor's socket has taken its place.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if !ours {
            return;
        }
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(socket = %self.path.display(), %error, "could not remove the control socket");
        }
    }
}

/// Refuses a control socket whose directory exists and may be written by others than root and
/// this process's user (/tmp too: anyone may make a socket there before the daemon does). A
/// directory that does not exist yet passes: [`bind`] creates it 0700.
pub fn check_directory(path: &Path) -> Result<(), ServerError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let unsafe_because = |why: String| ServerError::UnsafeDirectory {
        path: path.to_owned(),
        dir: dir.to_owned(),
        why,
    };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(unsafe_because(format!("is owned by uid {}", meta.uid())));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 {
        return Err(unsafe_because(format!(
            "may be written by its group or others (mode {:o})",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Opens the control socket at `path` (mode 0600; its directory is created 0700). With
/// `replace`, it takes the place of the socket of a daemon that is handing over; the path
/// answers throughout (the new socket is made beside it, then renamed over it).
pub fn bind(path: &Path, replace: bool) -> Result<(UnixListener, SocketFile), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    check_directory(path)?;
    if !replace {
        ensure_free(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    let fresh = path.with_file_name(name);
    match std::fs::remove_file(&fresh) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(error)),
        _ => {}
    }
    // SAFETY: umask has no memory-safety preconditions. It is process-wide: a file another
    // thread creates meanwhile is made at most more private, and the old mask is put back.
    let umask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&fresh);
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    let listener = bound.map_err(io)?;
    let placed = std::fs::rename(&fresh, path);
    if let Err(error) = placed {
        drop(std::fs::remove_file(&fresh));
        return Err(io(error));
    }
    let inode = std::fs::symlink_metadata(path).map_err(io)?.ino();
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            inode,
        },
    ))
}

/// Accepts connections until the task is dropped, passing each request to `calls` (as
/// whatever event type the receiver takes calls in), and each handover request's connection
/// to `handovers`.
pub async fn serve<E: From<Call> + Send + 'static>(
    listener: UnixListener,
    calls: mpsc::Sender<E>,
    handovers: mpsc::Sender<UnixStream>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let calls = calls.clone();
                let handovers = handovers.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, calls, handovers).await {
                        debug!(%error, "control connection ended early");
                    }
                });
            }
            Err(error) => warn!(%error, "accepting a control connection failed"),
        }
    }
}

async fn answer<E: From<Call>>(
    stream: UnixStream,
    calls: mpsc::Sender<E>,
    handovers: mpsc::Sender<UnixStream>,
) -> std::io::Result<()> {
    let refused = refusal(&stream)?;
    let (read, write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    // The request is read even from a peer that is refused: it is answered once it has said
    // everything (an answer before could meet its request half-sent and be lost).
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    if let Some(refused) = refused {
        return reply(write, &refused).await;
    }
    let response = match read {
        Err(_) => Response::Error(format!(
            "no whole request within {READ_TIMEOUT:?}: the connection is closed"
        )),
        Ok(read) => {
            read?;
            match serde_json::from_str::<Request>(&line) {
                Ok(Request::Handover) => {
                    // The successor sends nothing more until it is answered: nothing is
                    // buffered.
                    let stream = reader
                        .into_inner()
                        .into_inner()
                        .reunite(write)
                        .map_err(std::io::Error::other)?;
                    return match handovers.try_send(stream) {
                        Ok(()) => Ok(()),
                        Err(refused) => {
                            let (mpsc::error::TrySendError::Full(stream)
                            | mpsc::error::TrySendError::Closed(stream)) = refused;
                            let (_, write) = stream.into_split();
                            let reason =
                                "a handover is already under way, or the daemon is stopping";
                            reply(write, &Response::Error(reason.to_owned())).await
                        }
                    };
                }
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if calls.send(E::from((request, reply))).await.is_err() {
                        Response::Error("the daemon is shutting down".to_owned())
                    } else {
                        answer.await.unwrap_or_else(|_| {
                            Response::Error("the daemon is shutting down".to_owned())
                        })
                    }
                }
                Err(error) => Response::Error(format!("malformed request: {error}")),
            }
        }
    };
    reply(write, &response).await
}

/// Why the peer of `stream` may not use the socket, if it may not: it is neither root nor the
/// daemon's user (by `SO_PEERCRED`). Logged.
fn refusal(stream: &UnixStream) -> std::io::Result<Option<Response>> {
    let peer = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if peer.uid() == 0 || peer.uid() == me {
        return Ok(None);
    }
    warn!(
        uid = peer.uid(), pid = ?peer.pid(),
        "a control connection from a user who is neither root nor the daemon's: refused"
    );
    Ok(Some(Response::Error(format!(
        "permission denied: the daemon answers root and uid {me} only, not uid {}",
        peer.uid()
    ))))
}

/// Writes `response` as one JSON line and ends the connection.
async fn reply(
    mut write: tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).unwrap_or_else(|error| {
        format!("{{\"outcome\":\"error\",\"body\":\"encoding the answer failed: {error}\"}}")
    });
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}
