//! The daemon's side of the control API: a Unix socket that only root and the daemon's own
//! user may use to change the daemon, and a configured read-only group to look at it, one
//! request per connection, each handed to the daemon's controller through a channel.
//!
//! The socket is created with mode 0600 from the start (a restrictive umask around `bind`, so
//! there is no moment when others may connect), then opened to the read-only group (0660) if
//! there is one, in a directory that only its owner may write (created 0700, or 0750 for the
//! group, or checked: anyone who may write there could put their own socket in its place).
//! Each connection's peer is checked again by its credentials ([`super::peer`]): root or the
//! daemon's user may ask anything, the read-only group only what changes nothing, anyone else
//! is refused. A request must arrive whole within [`READ_TIMEOUT`] and [`MAX_REQUEST`] bytes.

use std::{
    fs::Permissions,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{
    Request, Response,
    peer::{Access, Peer},
};

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
        "control socket {path}: directory {dir} {why}: anyone who may write there could put their own socket (or directory) in its place; make it owned by root and writable by its owner only (chmod go-w), or put the socket elsewhere"
    )]
    UnsafeDirectory {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error("[control] read_only_group: {0}")]
    Group(#[from] super::peer::GroupError),
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

/// Refuses a control socket whose directory may be written by others than root and this
/// process's user (/tmp too: anyone may make a socket there before the daemon does), or sits
/// under a directory they may: whoever may write an ancestor may rename the directory away and
/// put their own in its place, unless the ancestor is sticky (as /tmp is: only an entry's owner
/// may rename it). A directory that does not exist yet is checked through the nearest one that
/// does, which [`bind`] creates it in (0700).
pub fn check_directory(path: &Path) -> Result<(), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The nearest directory that exists, resolved: the directories checked are the real ones
    // (a symbolic link's target and its own ancestors), whatever the path says.
    let existing = dir
        .ancestors()
        .filter(|d| !d.as_os_str().is_empty())
        .find(|d| d.exists())
        .unwrap_or(Path::new("."));
    let real = std::fs::canonicalize(existing).map_err(io)?;
    let me = euid();
    for (index, ancestor) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(ancestor).map_err(io)?;
        let unsafe_because = |why: String| ServerError::UnsafeDirectory {
            path: path.to_owned(),
            dir: ancestor.to_owned(),
            why,
        };
        if meta.uid() != 0 && meta.uid() != me {
            return Err(unsafe_because(format!("is owned by uid {}", meta.uid())));
        }
        let mode = meta.mode();
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (index == 0 || !sticky) {
            return Err(unsafe_because(format!(
                "may be written by its group or others (mode {:o})",
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// Opens the control socket at `path`: mode 0600, or 0660 and owned by `read_only_gid` if
/// there is a read-only group; a directory it creates is 0700 (0750 and the group's). With
/// `replace`, it takes the place of the socket of a daemon that is handing over; the path
/// answers throughout (the new socket is made beside it, then renamed over it).
pub fn bind(
    path: &Path,
    replace: bool,
    read_only_gid: Option<u32>,
) -> Result<(UnixListener, SocketFile), ServerError> {
    prepare(path, replace, read_only_gid)?.place()
}

/// The control socket made beside its path, with its final owner and mode, not yet in place:
/// [`Prepared::place`] renames it to its path (dropped unplaced, it is removed). The daemon
/// makes it while it still has the capabilities that may take (giving it to a group it is
/// not in), and places it last, once it is ready.
#[derive(Debug)]
pub struct Prepared {
    listener: Option<UnixListener>,
    fresh: PathBuf,
    path: PathBuf,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.listener.is_some() {
            drop(std::fs::remove_file(&self.fresh));
        }
    }
}

impl Prepared {
    /// Renames the socket to its path; the listener and the file's guard.
    pub fn place(mut self) -> Result<(UnixListener, SocketFile), ServerError> {
        let io = |source| ServerError::Io {
            path: self.path.clone(),
            source,
        };
        std::fs::rename(&self.fresh, &self.path).map_err(io)?;
        let inode = std::fs::symlink_metadata(&self.path).map_err(io)?.ino();
        let listener = self.listener.take().ok_or_else(|| {
            io(std::io::Error::other(
                "the control socket was placed already",
            ))
        })?;
        Ok((
            listener,
            SocketFile {
                path: self.path.clone(),
                inode,
            },
        ))
    }
}

/// Makes the control socket for `path` beside it ([`Prepared`]); see [`bind`].
pub fn prepare(
    path: &Path,
    replace: bool,
    read_only_gid: Option<u32>,
) -> Result<Prepared, ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    check_directory(path)?;
    if !replace {
        ensure_free(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        make_directory(dir, read_only_gid).map_err(io)?;
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
    let prepared = Prepared {
        listener: Some(bound.map_err(io)?),
        fresh,
        path: path.to_owned(),
    };
    if let Some(gid) = read_only_gid {
        // Made 0600, then opened to the group: never more open than meant.
        std::os::unix::fs::chown(&prepared.fresh, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(&prepared.fresh, Permissions::from_mode(0o660)))
            .map_err(io)?;
    }
    Ok(prepared)
}

/// Creates the socket's directory if it is missing: 0700, or 0750 and owned by the read-only
/// group. One that exists is left as it is (and was checked); if the group cannot reach the
/// socket through it, a warning says how to let it.
fn make_directory(dir: &Path, read_only_gid: Option<u32>) -> std::io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if let Some(gid) = read_only_gid {
                let mode = meta.mode();
                let reachable = mode & 0o001 != 0 || (meta.gid() == gid && mode & 0o010 != 0);
                if !reachable {
                    warn!(directory = %dir.display(), gid,
                        "the read-only group cannot reach the control socket through its \
                         directory: chgrp it to the group and chmod 750 it");
                }
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mode = if read_only_gid.is_some() {
                0o750
            } else {
                0o700
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
            if let Some(gid) = read_only_gid {
                std::os::unix::fs::chown(dir, None, Some(gid))?;
                // The umask may have taken the group's bits.
                std::fs::set_permissions(dir, Permissions::from_mode(mode))?;
            }
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Where the daemon takes connections that carry more than one answer: a successor's
/// handover, and packet captures.
#[derive(Clone, Debug)]
pub struct Streams {
    pub handovers: mpsc::Sender<UnixStream>,
    pub captures: mpsc::Sender<(crate::capture::Spec, UnixStream)>,
}

/// Accepts connections until the task is dropped, passing each request to `calls` (as
/// whatever event type the receiver takes calls in), and each handover's and capture's
/// connection to `streams`. Members of `read_only_gid` may ask what changes nothing.
pub async fn serve<E: From<Call> + Send + 'static>(
    listener: UnixListener,
    calls: mpsc::Sender<E>,
    streams: Streams,
    read_only_gid: Option<u32>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let calls = calls.clone();
                let streams = streams.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, calls, streams, read_only_gid).await {
                        debug!(%error, "control connection ended early");
                    }
                });
            }
            Err(error) => warn!(%error, "accepting a control connection failed"),
        }
    }
}

/// One connection: its peer's access, its request, and the answer.
async fn answer<E: From<Call>>(
    stream: UnixStream,
    calls: mpsc::Sender<E>,
    streams: Streams,
    read_only_gid: Option<u32>,
) -> std::io::Result<()> {
    let peer = Peer::of(&stream)?;
    let access = Access::of(&peer, euid(), read_only_gid);
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST + 1));
    // The request is read even from a peer that is refused: it is answered once it has said
    // everything (an answer before could meet its request half-sent and be lost).
    let request = read_request(&mut reader).await?;
    let request = match (access, request) {
        (Access::Refused, _) => return reply(write, &refused(&peer, read_only_gid)).await,
        (_, Err(response)) => return reply(write, &response).await,
        (access, Ok(request)) if !access.allows(&request) => {
            warn!(uid = peer.uid, pid = ?peer.pid, ?request,
                "a control request that changes the daemon, from the read-only group: refused");
            let reason = format!(
                "permission denied: uid {} may only look (list, stats, status, simulate); \
                 changes and captures need root or the daemon's user",
                peer.uid
            );
            return reply(write, &Response::Error(reason)).await;
        }
        (_, Ok(request)) => request,
    };
    if request == Request::Handover {
        // The successor sends nothing more until it is answered: nothing is buffered.
        let stream = reader
            .into_inner()
            .into_inner()
            .reunite(write)
            .map_err(std::io::Error::other)?;
        return hand_over(stream, &streams.handovers).await;
    }
    if let Request::Capture(spec) = request {
        // The CLI sends nothing more: nothing is buffered.
        let stream = reader
            .into_inner()
            .into_inner()
            .reunite(write)
            .map_err(std::io::Error::other)?;
        if let Err(refused) = streams.captures.send((spec, stream)).await {
            let (_, stream) = refused.0;
            let (_, write) = stream.into_split();
            let reason = "the daemon is shutting down".to_owned();
            return reply(write, &Response::Error(reason)).await;
        }
        return Ok(());
    }
    let (reply_to, answered) = oneshot::channel();
    let response = if calls.send(E::from((request, reply_to))).await.is_err() {
        Response::Error("the daemon is shutting down".to_owned())
    } else {
        answered
            .await
            .unwrap_or_else(|_| Response::Error("the daemon is shutting down".to_owned()))
    };
    reply(write, &response).await
}

/// The request on a connection, or the error to answer: none whole within [`READ_TIMEOUT`],
/// over [`MAX_REQUEST`] bytes, or not a request.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Result<Request, Response>> {
    let mut line = String::new();
    let Ok(read) = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await else {
        return Ok(Err(Response::Error(format!(
            "no whole request within {READ_TIMEOUT:?}: the connection is closed"
        ))));
    };
    read?;
    if u64::try_from(line.len()).unwrap_or(u64::MAX) > MAX_REQUEST {
        return Ok(Err(Response::Error(format!(
            "a request over {} KiB: refused (a request is a line of JSON of a few hundred bytes)",
            MAX_REQUEST / 1024
        ))));
    }
    Ok(serde_json::from_str::<Request>(&line)
        .map_err(|error| Response::Error(format!("malformed request: {error}"))))
}

/// Passes a successor's connection to the daemon's handover, unless one is under way.
async fn hand_over(
    stream: UnixStream,
    handovers: &mpsc::Sender<UnixStream>,
) -> std::io::Result<()> {
    match handovers.try_send(stream) {
        Ok(()) => Ok(()),
        Err(refused) => {
            let (mpsc::error::TrySendError::Full(stream)
            | mpsc::error::TrySendError::Closed(stream)) = refused;
            let (_, write) = stream.into_split();
            let reason = "a handover is already under way, or the daemon is stopping";
            reply(write, &Response::Error(reason.to_owned())).await
        }
    }
}

/// The answer to a peer that may not use the socket at all. Logged.
fn refused(peer: &Peer, read_only_gid: Option<u32>) -> Response {
    warn!(
        uid = peer.uid, pid = ?peer.pid,
        "a control connection from a user who is neither root nor the daemon's, nor in its \
         read-only group: refused"
    );
    let group = read_only_gid.map_or_else(String::new, |gid| format!(" and group {gid} to look"));
    Response::Error(format!(
        "permission denied: the daemon answers root and uid {}{group}, not uid {}",
        euid(),
        peer.uid
    ))
}

/// This process's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A directory tree under the system's temporary one, removed when dropped.
    struct Tree(PathBuf);

    impl Drop for Tree {
        fn drop(&mut self) {
            drop(std::fs::remove_dir_all(&self.0));
        }
    }

    #[test]
    fn a_socket_under_a_directory_others_may_write_is_refused_unless_it_is_sticky() {
        let tree = Tree(std::env::temp_dir().join(format!("lb-ancestors-{}", std::process::id())));
        let run = tree.0.join("up").join("run");
        std::fs::create_dir_all(&run).unwrap();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
        };
        mode(&run, 0o700);
        let socket = run.join("lb.sock");
        mode(&tree.0.join("up"), 0o777);
        let error = check_directory(&socket).unwrap_err().to_string();
        assert!(
            error.contains("/up may be written by its group or others (mode 777)"),
            "{error}"
        );
        // Sticky, as /tmp: only an entry's owner may rename it.
        mode(&tree.0.join("up"), 0o1777);
        check_directory(&socket).unwrap();
        // The socket's own directory may not be open even if sticky.
        mode(&run, 0o1777);
        assert!(check_directory(&socket).is_err());
        // A directory yet to be made is judged by the nearest that exists.
        mode(&run, 0o700);
        check_directory(&run.join("new").join("lb.sock")).unwrap();
        mode(&run, 0o1777);
        assert!(check_directory(&run.join("new").join("lb.sock")).is_err());
        // Through a symbolic link, the real directories are checked.
        mode(&run, 0o700);
        mode(&tree.0.join("up"), 0o777);
        let link = tree.0.join("link");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        let error = check_directory(&link.join("lb.sock"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/up may be written"), "{error}");
    }
}
