//! Who is at the other end of a control connection, and what they may ask.
//!
//! [`Access::of`] reads the peer's credentials as the kernel recorded them when it connected
//! (`SO_PEERCRED` for its user and group, `SO_PEERGROUPS` for its supplementary groups): root
//! and the daemon's own user may ask anything; members of the configured read-only group
//! (`[control] read_only_group`, [`resolve_group`]) may ask what changes nothing
//! ([`Request::is_read_only`]); anyone else is refused.

use std::os::fd::AsRawFd as _;

use super::Request;

/// What a peer may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Root or the daemon's user: anything.
    Full,
    /// A member of the read-only group: requests that change nothing.
    ReadOnly,
    /// Anyone else.
    Refused,
}

/// A peer as the kernel saw it connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

impl Access {
    /// The access of `peer` to a daemon running as `daemon_uid` whose read-only group, if
    /// any, is `read_only_gid`.
    pub fn of(peer: &Peer, daemon_uid: u32, read_only_gid: Option<u32>) -> Self {
        if peer.uid == 0 || peer.uid == daemon_uid {
            return Self::Full;
        }
        match read_only_gid {
            Some(gid) if peer.gid == gid || peer.groups.contains(&gid) => Self::ReadOnly,
            _ => Self::Refused,
        }
    }

    /// Whether a peer with this access may ask `request`.
    pub fn allows(self, request: &Request) -> bool {
        match self {
            Self::Full => true,
            Self::ReadOnly => request.is_read_only(),
            Self::Refused => false,
        }
    }
}

impl Peer {
    /// The credentials of the peer of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: peer_groups(stream.as_raw_fd())?,
        })
    }
}

/// The supplementary groups of the peer of the connected Unix socket `fd` (`SO_PEERGROUPS`).
fn peer_groups(fd: std::os::fd::RawFd) -> std::io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small, grow to what the kernel says it needs.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let capacity = groups.len() * size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` is writable for `len` bytes, and `len` is a valid socklen_t the
        // kernel updates; `fd` is a socket this process owns for the call's duration.
        let done = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let needed = usize::try_from(len).unwrap_or(usize::MAX) / size_of::<libc::gid_t>();
        if done == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ENOPROTOOPT) {
            // Before Linux 4.13: only the primary group counts.
            return Ok(Vec::new());
        }
        if error.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(error);
        }
        groups.resize(needed, 0);
    }
}

/// Why a group name cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(
        "group {0:?} does not exist: `getent group` lists the groups; make it with \
         `groupadd --system {0}`, or name an existing one"
    )]
    Unknown(String),
    #[error("looking up group {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The id of the group `name` (a name from the system's group database, or a number).
pub fn resolve_group(name: &str) -> Result<u32, GroupError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let lookup = |source| GroupError::Lookup {
        name: name.to_owned(),
        source,
    };
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| lookup(std::io::Error::other("a NUL byte in the name")))?;
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: an all-zero `group` is a valid value of the plain C struct.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `buffer` is
        // writable for its length, `group` and `found` are this frame's.
        let status = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &raw mut group,
                buffer.as_mut_ptr(),
                buffer.len(),
                &raw mut found,
            )
        };
        match status {
            0 if found.is_null() => return Err(GroupError::Unknown(name.to_owned())),
            0 => return Ok(group.gr_gid),
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            code => return Err(lookup(std::io::Error::from_raw_os_error(code))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_the_daemons_user_may_ask_anything_and_the_group_may_look() {
        let daemon = 990;
        assert_eq!(Access::of(&peer(0, 0, &[]), daemon, None), Access::Full);
        assert_eq!(
            Access::of(&peer(990, 5, &[]), daemon, Some(7)),
            Access::Full
        );
        assert_eq!(
            Access::of(&peer(1000, 7, &[]), daemon, Some(7)),
            Access::ReadOnly
        );
        assert_eq!(
            Access::of(&peer(1000, 100, &[4, 7]), daemon, Some(7)),
            Access::ReadOnly
        );
        assert_eq!(
            Access::of(&peer(1000, 100, &[4]), daemon, Some(7)),
            Access::Refused
        );
        assert_eq!(
            Access::of(&peer(1000, 7, &[7]), daemon, None),
            Access::Refused
        );
    }

    #[test]
    fn the_read_only_group_may_ask_what_changes_nothing() {
        let looks = [
            Request::ListListeners,
            Request::ListBackends { pool: None },
            Request::Stats,
            Request::Status,
        ];
        let changes = [Request::Reload, Request::ReloadFiles, Request::Handover];
        for request in &looks {
            assert!(Access::ReadOnly.allows(request), "{request:?}");
        }
        for request in &changes {
            assert!(!Access::ReadOnly.allows(request), "{request:?}");
            assert!(Access::Full.allows(request), "{request:?}");
        }
        assert!(!Access::Refused.allows(&Request::Status));
    }

    #[test]
    fn groups_resolve_by_number_or_name_and_unknown_ones_are_named() {
        assert_eq!(resolve_group("4242").unwrap(), 4242);
        assert_eq!(resolve_group("root").unwrap(), 0);
        let error = resolve_group("no-such-group-lb").unwrap_err().to_string();
        assert!(
            error.contains("\"no-such-group-lb\" does not exist"),
            "{error}"
        );
        assert!(resolve_group("a\0b").is_err());
    }
}
