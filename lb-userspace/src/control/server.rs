//! The daemon's side of the control API: a Unix socket that only root may use, one request per
//! connection, each handed to the daemon's controller through a channel.

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
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

/// Why the socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another lb daemon is running (it answers on {0}); stop it first")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fails if a daemon already answers at `path`; removes a socket a dead daemon left there.
pub fn ensure_free(path: &Path) -> Result<(), ServerError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|source| ServerError::Io {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
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

/// Opens the control socket at `path` (mode 0600; its directory is created 0700). With
/// `replace`, it takes the place of the socket of a daemon that is handing over; the path
/// answers throughout (the new socket is made beside it, then renamed over it).
pub fn bind(path: &Path, replace: bool) -> Result<(UnixListener, SocketFile), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
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
    let listener = UnixListener::bind(&fresh).map_err(io)?;
    let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&fresh, path));
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
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Handover) => {
            // The successor sends nothing more until it is answered: nothing is buffered.
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
                    let reason = Response::Error(
                        "a handover is already under way, or the daemon is stopping".to_owned(),
                    );
                    let mut text = serde_json::to_string(&reason).map_err(std::io::Error::other)?;
                    text.push('\n');
                    let (_, mut write) = stream.into_split();
                    write.write_all(text.as_bytes()).await
                }
            };
        }
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            if calls.send(E::from((request, reply))).await.is_err() {
                Response::Error("the daemon is shutting down".to_owned())
            } else {
                answer
                    .await
                    .unwrap_or_else(|_| Response::Error("the daemon is shutting down".to_owned()))
            }
        }
        Err(error) => Response::Error(format!("malformed request: {error}")),
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|error| {
        format!("{{\"outcome\":\"error\",\"body\":\"encoding the answer failed: {error}\"}}")
    });
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}
