//! The CLI's side of the control API: connect, send one request, read one response.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Body, Request, Response};

/// Why the daemon gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the lb daemon is not running (nothing listens on {socket}); start it with `lb run --config FILE`"
    )]
    NotRunning { socket: String },
    #[error("talking to the lb daemon at {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the lb daemon sent an answer this CLI does not understand: {0}")]
    Protocol(String),
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Refused(String),
}

/// How long the CLI waits for an answer (a table rewrite takes milliseconds).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` to the daemon at `socket` and returns its answer.
pub fn call(socket: &Path, request: &Request) -> Result<Body, ClientError> {
    let name = socket.display().to_string();
    let io = |source| ClientError::Io {
        socket: name.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                socket: name.clone(),
            }
        }
        _ => io(source),
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))? {
        Response::Ok(body) => Ok(body),
        Response::Error(message) => Err(ClientError::Refused(message)),
    }
}
