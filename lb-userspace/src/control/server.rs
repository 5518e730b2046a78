//! The daemon's side of the control API: a Unix socket that only root may use, one request per
//! connection, each handed to the daemon's controller through a channel.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
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

/// Opens the control socket at `path` (mode 0600; its directory is created 0700).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    ensure_free(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Accepts connections until the task is dropped, passing each request to `calls` (as
/// whatever event type the receiver takes calls in).
pub async fn serve<E: From<Call> + Send + 'static>(listener: UnixListener, calls: mpsc::Sender<E>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let calls = calls.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, calls).await {
                        debug!(%error, "control connection ended early");
                    }
                });
            }
            Err(error) => warn!(%error, "accepting a control connection failed"),
        }
    }
}

async fn answer<E: From<Call>>(stream: UnixStream, calls: mpsc::Sender<E>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
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
