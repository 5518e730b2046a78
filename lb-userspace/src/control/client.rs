//! The CLI's side of the control API: connect, check who answers, send one request, read one
//! response.
//!
//! Whoever answers on the socket must be root, this user, or the owner of the socket's
//! directory ([`connect`]): only they can have made a socket there if the directory is the
//! daemon's (the daemon refuses one others may write). In a directory anyone may write (a
//! socket path mistyped into /tmp, say) a socket of another user is refused before anything is
//! sent to it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
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
    #[error(
        "the process answering on {socket} runs as uid {uid}: neither root, you, nor the owner \
         of the socket's directory (uid {owner}), so not an lb daemon of yours; nothing was sent \
         to it (remove the socket, or name the daemon's with --socket)"
    )]
    Impostor {
        socket: String,
        uid: u32,
        owner: u32,
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
    let stream = connect(socket)?.ok_or_else(|| ClientError::NotRunning {
        socket: name.clone(),
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

/// A connection to the daemon at `socket`, once its credentials check out (see the module's
/// doc); `None` if nothing listens there.
pub fn connect(socket: &Path) -> Result<Option<UnixStream>, ClientError> {
    let name = || socket.display().to_string();
    let io = |source| ClientError::Io {
        socket: name(),
        source,
    };
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(io(error)),
    };
    let uid = peer_uid(&stream).map_err(io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid == 0 || uid == me {
        return Ok(Some(stream));
    }
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let owner = std::fs::metadata(dir).map_err(io)?.uid();
    if uid == owner {
        return Ok(Some(stream));
    }
    Err(ClientError::Impostor {
        socket: name(),
        uid,
        owner,
    })
}

/// The user of the process that listens at the other end of `stream` (`SO_PEERCRED`).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len =
        libc::socklen_t::try_from(size_of::<libc::ucred>()).map_err(std::io::Error::other)?;
    // SAFETY: `cred` is writable for `len` bytes and `len` is the kernel's to update; the
    // socket is this function's for the call.
    let done = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}
