//! Hitless restarts and upgrades of the L7 listeners: `lb run --take-over` starts a daemon
//! (the same build or another) that takes the listening sockets of the one running, so that
//! no connection is refused while one daemon replaces the other.
//!
//! The conversation, on one connection to the running daemon's control socket:
//!
//! 1. the successor (after reading its configuration and every file it names, so that a bad
//!    one stops it before anything changes) sends `{"request":"handover"}`;
//! 2. the running daemon pauses its controller (no health, reload or map change from now on)
//!    and unlocks the pin directory, then answers with an [`Answer::Offer`]: its process id and
//!    the address of each listening socket (every L7 address and the metrics endpoint), the
//!    sockets themselves attached (`SCM_RIGHTS`). It keeps accepting on them meanwhile;
//! 3. the successor starts as a daemon does (it adopts the pinned maps and links), accepting
//!    on the sockets it was given: both daemons now take connections from the same queues;
//!    then it puts its control socket in place of the old one (a rename: the path always
//!    answers), and sends `drain`;
//! 4. the old daemon answers `draining`, stops accepting (its copies of the sockets close; the
//!    successor's stay open) and drains its connections: HTTP/2 gets GOAWAY, HTTP/1.1 closes
//!    after its next response, within `shutdown_timeout`; then it exits.
//!
//! If the successor fails or goes away before step 4 (its connection closes, or
//! [`DRAIN_WAIT`] passes), the old daemon locks the pin directory again, resumes its
//! controller and carries on as before.

use std::{
    io::{self, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::announce::InheritedDevice;
use crate::{control::Request, l7::Inherited};

/// The most sockets one daemon hands over (the kernel takes at most 253 descriptors in one
/// message).
pub const MAX_SOCKETS: usize = 200;
/// How long the successor waits for the offer (the old daemon only pauses its controller).
const OFFER_WAIT: Duration = Duration::from_secs(30);
/// How long the old daemon waits, after its offer, for the successor to start and ask it to
/// drain (loading and verifying the programs and adopting large maps takes seconds).
pub const DRAIN_WAIT: Duration = Duration::from_secs(120);
/// How long the successor waits for the old daemon to confirm that it drains.
const DRAINING_WAIT: Duration = Duration::from_secs(10);
/// The longest line either side sends.
const MAX_LINE: usize = 64 * 1024;

/// Why a handover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("talking to the running daemon at {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("the running daemon at {socket} refused the handover: {reason}")]
    Refused { socket: String, reason: String },
    #[error(
        "the running daemon at {socket} answered something this build does not understand: {detail}"
    )]
    Protocol { socket: String, detail: String },
    #[error(transparent)]
    Connect(#[from] crate::control::client::ClientError),
}

/// The old daemon's answer to a handover request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Answer {
    /// The listening sockets, in the order of the descriptors attached.
    Offer {
        pid: u32,
        sockets: Vec<SocketAddr>,
        /// The announcement device (`[announce]`), its descriptor attached after the
        /// sockets': the successor keeps the routes through it, so nothing is withdrawn.
        #[serde(default)]
        device: Option<DeviceOffer>,
    },
    Refused {
        reason: String,
    },
}

/// The announcement device offered: its name, how the routes through it are announced, and
/// whether the node is drained (the successor stays drained).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOffer {
    pub name: String,
    pub table: u32,
    pub protocol: u8,
    pub drained: bool,
}

/// The successor's side: the daemon it takes over from, until that one drains.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    socket: String,
    pub pid: u32,
    /// The announcement device it handed over.
    pub device: Option<InheritedDevice>,
}

/// Asks the daemon answering at `socket` for its listening sockets. `None` if no daemon
/// answers there (nothing to take over).
pub fn request(socket: &Path) -> Result<Option<(Predecessor, Inherited)>, HandoverError> {
    let name = socket.display().to_string();
    let io = |source| HandoverError::Io {
        socket: name.clone(),
        source,
    };
    // Sockets are taken only from a daemon whose credentials check out.
    let Some(stream) = crate::control::client::connect(socket)? else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(OFFER_WAIT)).map_err(io)?;
    let mut line = serde_json::to_string(&Request::Handover).map_err(|e| io(e.into()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let (line, fds) = read_line_with_fds(&stream).map_err(io)?;
    let protocol = |detail: String| HandoverError::Protocol {
        socket: name.clone(),
        detail,
    };
    // The control API's own error answer, from a daemon that cannot hand over.
    if let Ok(crate::control::Response::Error(reason)) = serde_json::from_str(&line) {
        return Err(HandoverError::Refused {
            socket: name,
            reason,
        });
    }
    match serde_json::from_str(&line).map_err(|e| protocol(e.to_string()))? {
        Answer::Offer {
            pid,
            sockets,
            device,
        } => {
            let (inherited, device) = split_offer(sockets, device, fds).map_err(protocol)?;
            Ok(Some((
                Predecessor {
                    stream,
                    socket: name,
                    pid,
                    device,
                },
                inherited,
            )))
        }
        Answer::Refused { reason } => Err(HandoverError::Refused {
            socket: name,
            reason,
        }),
    }
}

/// The descriptors of an offer, matched with what it names: the sockets in order, then the
/// announcement device if one is offered.
fn split_offer(
    sockets: Vec<SocketAddr>,
    device: Option<DeviceOffer>,
    mut fds: Vec<OwnedFd>,
) -> Result<(Inherited, Option<InheritedDevice>), String> {
    let expected = sockets.len() + usize::from(device.is_some());
    if expected != fds.len() {
        return Err(format!(
            "{expected} descriptors named, {} attached",
            fds.len()
        ));
    }
    let device = match device {
        Some(offer) => fds.pop().map(|fd| InheritedDevice {
            fd,
            name: offer.name,
            table: offer.table,
            protocol: offer.protocol,
            drained: offer.drained,
        }),
        None => None,
    };
    Ok((sockets.into_iter().zip(fds).collect(), device))
}

impl Predecessor {
    /// This daemon serves: tells the old one to stop accepting and drain, and waits for it
    /// to confirm.
    pub fn finish(self) -> Result<(), HandoverError> {
        let io = |source| HandoverError::Io {
            socket: self.socket.clone(),
            source,
        };
        self.stream
            .set_read_timeout(Some(DRAINING_WAIT))
            .map_err(io)?;
        (&self.stream).write_all(b"drain\n").map_err(io)?;
        let mut answer = String::new();
        (&self.stream)
            .take(64)
            .read_to_string(&mut answer)
            .map_err(io)?;
        if answer.trim_end() != "draining" {
            return Err(HandoverError::Protocol {
                socket: self.socket.clone(),
                detail: format!(
                    "expected `draining`, got {answer:?} (it may have given up waiting: it \
                     carries on, and two daemons now run)"
                ),
            });
        }
        Ok(())
    }
}

/// The old daemon's side: offers `sockets` on `stream` (blocking), then waits up to
/// [`DRAIN_WAIT`] for the successor's `drain` and confirms it. `Ok` means: stop accepting
/// and drain now.
pub fn offer(
    stream: &UnixStream,
    pid: u32,
    sockets: Vec<(SocketAddr, OwnedFd)>,
    device: Option<(DeviceOffer, OwnedFd)>,
) -> io::Result<()> {
    let (addresses, mut fds): (Vec<SocketAddr>, Vec<OwnedFd>) = sockets.into_iter().unzip();
    let device = device.map(|(offer, fd)| {
        fds.push(fd);
        offer
    });
    let mut line = serde_json::to_string(&Answer::Offer {
        pid,
        sockets: addresses,
        device,
    })?;
    line.push('\n');
    let raw: Vec<RawFd> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    send_with_fds(stream, line.as_bytes(), &raw)?;
    drop(fds);
    stream.set_read_timeout(Some(DRAIN_WAIT))?;
    let mut word = [0_u8; 6];
    stream_read_exact(stream, &mut word)?;
    if &word != b"drain\n" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the successor sent something other than `drain`",
        ));
    }
    (&*stream).write_all(b"draining\n")?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// Refuses a handover request on `stream` with `reason`.
pub fn refuse(stream: &UnixStream, reason: String) -> io::Result<()> {
    let mut line = serde_json::to_string(&Answer::Refused { reason })?;
    line.push('\n');
    (&*stream).write_all(line.as_bytes())
}

fn stream_read_exact(stream: &UnixStream, buf: &mut [u8]) -> io::Result<()> {
    let mut reader: &UnixStream = stream;
    reader.read_exact(buf).map_err(|error| {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the successor went away before it asked to drain",
            )
        } else {
            error
        }
    })
}

/// The space for `MAX_SOCKETS` descriptors in one control message.
fn cmsg_space() -> usize {
    let bytes = u32::try_from(MAX_SOCKETS * size_of::<RawFd>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE only computes a size.
    usize::try_from(unsafe { libc::CMSG_SPACE(bytes) }).unwrap_or(usize::MAX)
}

/// Sends `data` with `fds` attached to its first byte.
fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_SOCKETS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} sockets: at most {MAX_SOCKETS} can be handed over",
                fds.len()
            ),
        ));
    }
    let fd_bytes = size_of_val(fds);
    let mut control = vec![0_u8; cmsg_space()];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: `msghdr` is plain old data; all-zero is valid and completed below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    if !fds.is_empty() {
        let len = u32::try_from(fd_bytes).unwrap_or(u32::MAX);
        message.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        message.msg_controllen = unsafe { libc::CMSG_SPACE(len) } as usize;
        // SAFETY: `message` points at `control`, which has room for one header and `fds`
        // (cmsg_space is for MAX_SOCKETS); CMSG_FIRSTHDR is then non-null.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&raw const message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(len) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                fd_bytes,
            );
        }
    }
    let mut sent = 0;
    while sent < data.len() {
        if sent > 0 {
            // The descriptors went with the first bytes; the rest is plain data.
            return (&*stream).write_all(&data[sent..]);
        }
        // SAFETY: `message` points at `iov` (over `data`) and `control`, all live for the call.
        let n =
            unsafe { libc::sendmsg(stream.as_raw_fd(), &raw const message, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        sent = usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// Reads one line (at most [`MAX_LINE`] bytes) and the descriptors sent with it.
fn read_line_with_fds(stream: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0_u8; 4096];
    let mut control = vec![0_u8; cmsg_space()];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `msghdr` is plain old data; all-zero is valid and completed below.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = control.len();
        // SAFETY: `message` points at `iov` (over `buf`) and `control`, live for the call;
        // received descriptors are close-on-exec.
        let n =
            unsafe { libc::recvmsg(stream.as_raw_fd(), &raw mut message, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        take_fds(&message, &mut fds);
        if message.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more sockets were sent than this build takes",
            ));
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before the answer ended",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            let text = String::from_utf8(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            return Ok((text, fds));
        }
        if line.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the answer is too long",
            ));
        }
    }
}

/// Takes ownership of the descriptors of `message`'s `SCM_RIGHTS` headers.
fn take_fds(message: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `message` was filled in by recvmsg; the CMSG_* macros walk its control buffer
    // within `msg_controllen`, and each SCM_RIGHTS header's data holds whole descriptors
    // that this process now owns (each is taken exactly once).
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let bytes = (*header).cmsg_len as usize - (data as usize - header as usize);
                let count = bytes / size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn sockets_cross_a_unix_socket_with_their_addresses() {
        let (old, new) = UnixStream::pair().unwrap();
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let sockets: Vec<(SocketAddr, OwnedFd)> = listeners
            .iter()
            .map(|l| {
                (
                    l.local_addr().unwrap(),
                    OwnedFd::from(l.try_clone().unwrap()),
                )
            })
            .collect();
        let line = serde_json::to_string(&Answer::Offer {
            pid: 7,
            sockets: sockets.iter().map(|(a, _)| *a).collect(),
            device: None,
        })
        .unwrap()
            + "\n";
        let raw: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        send_with_fds(&old, line.as_bytes(), &raw).unwrap();
        let (text, fds) = read_line_with_fds(&new).unwrap();
        assert_eq!(fds.len(), 3);
        let Answer::Offer {
            pid,
            sockets: named,
            device: None,
        } = serde_json::from_str(&text).unwrap()
        else {
            panic!("an offer: {text}");
        };
        assert_eq!(pid, 7);
        for (address, fd) in named.iter().zip(fds) {
            let listener = TcpListener::from(fd);
            assert_eq!(listener.local_addr().unwrap(), *address, "the same socket");
        }
    }

    /// The descriptors go with what the offer names: every socket, with a device or without
    /// (then the last descriptor is a socket's, never taken for a device).
    #[test]
    fn an_offer_matches_its_descriptors_with_or_without_a_device() {
        let listeners: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let fds = || -> Vec<OwnedFd> {
            listeners
                .iter()
                .map(|l| OwnedFd::from(l.try_clone().unwrap()))
                .collect()
        };
        let (inherited, device) = split_offer(addresses.clone(), None, fds()).unwrap();
        assert!(device.is_none());
        // Each address keeps its own socket, whatever the order of the map.
        assert_eq!(inherited.len(), addresses.len());
        for (address, fd) in &inherited {
            let socket = TcpListener::from(fd.try_clone().unwrap());
            assert_eq!(socket.local_addr().unwrap(), *address);
        }

        let offer = DeviceOffer {
            name: "lbvip0".to_owned(),
            table: 300,
            protocol: 201,
            drained: true,
        };
        let mut with_device = fds();
        with_device.push(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let (inherited, device) =
            split_offer(addresses.clone(), Some(offer.clone()), with_device).unwrap();
        assert_eq!(inherited.len(), 2);
        let device = device.unwrap();
        assert_eq!(
            (
                device.name.as_str(),
                device.table,
                device.protocol,
                device.drained
            ),
            ("lbvip0", 300, 201, true)
        );
        // A count that does not add up is refused.
        assert!(split_offer(addresses.clone(), Some(offer), fds()).is_err());
        assert!(split_offer(addresses, None, Vec::new()).is_err());
    }

    #[test]
    fn an_answer_without_its_end_is_an_error() {
        let (old, new) = UnixStream::pair().unwrap();
        (&old).write_all(b"{\"outcome\":").unwrap();
        drop(old);
        let error = read_line_with_fds(&new).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
