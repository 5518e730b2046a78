//! Whether an interface can transmit frames an XDP program redirects to it: the XDP features
//! the kernel reports for it (`NETDEV_A_DEV_XDP_FEATURES` of the generic-netlink `netdev`
//! family, Linux 6.3 and later; `ynl --family netdev --do dev-get` shows them).
//!
//! A redirect to an interface without `NDO_XMIT` "succeeds" in the program and the kernel then
//! drops the frame, visible only to a tracepoint. The flag is live: many NIC drivers set it only
//! while an XDP program is attached to the interface, and a veth only while its peer has an XDP
//! program or GRO on (so that the peer's receive side runs NAPI).
//!
//! The messages are a few fixed fields and attributes, built and read here by hand (no crate
//! for the generic-netlink `netdev` family is in the dependency tree).

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// `NETDEV_XDP_ACT_NDO_XMIT`: the interface takes frames redirected to it.
pub const XDP_ACT_NDO_XMIT: u64 = 4;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// Netlink and generic-netlink headers.
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// How long an answer may take before the question fails (the daemon asks from its control
/// loop).
const ANSWER_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 1,
    tv_usec: 0,
};

/// A generic-netlink socket bound to the `netdev` family.
pub struct Netdev {
    socket: Socket,
    family: u16,
    sequence: u32,
    received: Vec<u8>,
}

impl std::fmt::Debug for Netdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netdev")
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl Netdev {
    /// Connects and looks the family up. Fails with `NotFound` on a kernel without it.
    pub fn connect() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let timeout = ANSWER_TIMEOUT;
        // SAFETY: a valid socket and option value of the size passed.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                u32::try_from(size_of::<libc::timeval>()).unwrap_or(u32::MAX),
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut netdev = Self {
            socket,
            family: GENL_ID_CTRL,
            sequence: 0,
            received: vec![0; 16 * 1024],
        };
        let answer = netdev.exchange(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            &attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
        )?;
        let id = find(&answer, CTRL_ATTR_FAMILY_ID)
            .and_then(|value| value.get(..2))
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| invalid("the family lookup answered without an id"))?;
        netdev.family = id;
        Ok(netdev)
    }

    /// The XDP features (`NETDEV_XDP_ACT_*` bits) of interface `ifindex`.
    pub fn xdp_features(&mut self, ifindex: u32) -> io::Result<u64> {
        let answer = self.exchange(
            self.family,
            NETDEV_CMD_DEV_GET,
            &attribute(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
        )?;
        find(&answer, NETDEV_A_DEV_XDP_FEATURES)
            .and_then(|value| value.get(..8))
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| invalid("the interface's answer has no XDP features"))
    }

    /// Whether interface `ifindex` takes frames redirected to it now.
    pub fn takes_redirects(&mut self, ifindex: u32) -> io::Result<bool> {
        Ok(self.xdp_features(ifindex)? & XDP_ACT_NDO_XMIT != 0)
    }

    /// Sends one request (`command` of `family`, with `attributes`) and returns the attributes
    /// of its answer; a kernel error comes back with its errno.
    fn exchange(&mut self, family: u16, command: u8, attributes: &[u8]) -> io::Result<Vec<u8>> {
        self.sequence = self.sequence.wrapping_add(1);
        let length = NLMSG_HDRLEN + GENL_HDRLEN + attributes.len();
        let mut message = Vec::with_capacity(length);
        message.extend_from_slice(
            &u32::try_from(length)
                .map_err(|_| invalid("too long"))?
                .to_ne_bytes(),
        );
        message.extend_from_slice(&family.to_ne_bytes());
        message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        message.extend_from_slice(&self.sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(&[command, 1, 0, 0]);
        message.extend_from_slice(attributes);
        self.socket.send(&message, 0)?;

        loop {
            // Fails with `WouldBlock` past the answer timeout.
            let size = self.socket.recv(&mut &mut self.received[..], 0)?;
            let mut rest = &self.received[..size];
            while rest.len() >= NLMSG_HDRLEN {
                let length = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if length < NLMSG_HDRLEN || length > rest.len() {
                    return Err(invalid("a truncated answer"));
                }
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let sequence = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                let body = &rest[NLMSG_HDRLEN..length];
                rest = &rest[align(length).min(rest.len())..];
                if sequence != self.sequence {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let code = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| invalid("a truncated error"))?;
                    return Err(match code.checked_neg() {
                        Some(errno) if errno > 0 => io::Error::from_raw_os_error(errno),
                        _ => invalid("an acknowledgement instead of an answer"),
                    });
                }
                return body
                    .get(GENL_HDRLEN..)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| invalid("an answer without its generic-netlink header"));
            }
        }
    }
}

/// One netlink attribute: length, type, the value padded to 4 bytes.
fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let length = 4 + value.len();
    let mut out = Vec::with_capacity(align(length));
    out.extend_from_slice(&u16::try_from(length).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align(length), 0);
    out
}

/// The value of the first attribute of type `kind` among `attributes`.
fn find(mut attributes: &[u8], kind: u16) -> Option<&[u8]> {
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        // The top bits are the nested and byte-order flags.
        let found = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        if length < 4 || length > attributes.len() {
            return None;
        }
        if found == kind {
            return Some(&attributes[4..length]);
        }
        attributes = &attributes[align(length).min(attributes.len())..];
    }
    None
}

/// Rounds a netlink length up to 4 bytes.
fn align(length: usize) -> usize {
    (length + 3) & !3
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("netdev netlink family: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_found_again() {
        let mut attributes = attribute(7, b"abcde");
        attributes.extend(attribute(NETDEV_A_DEV_XDP_FEATURES, &0x67u64.to_ne_bytes()));
        assert_eq!(attributes.len(), 12 + 12);
        assert_eq!(find(&attributes, 7), Some(&b"abcde"[..]));
        assert_eq!(
            find(&attributes, NETDEV_A_DEV_XDP_FEATURES),
            Some(&0x67u64.to_ne_bytes()[..])
        );
        assert_eq!(find(&attributes, 9), None);
    }

    #[test]
    fn a_truncated_attribute_ends_the_search() {
        let mut attributes = attribute(7, b"abcd");
        attributes[0] = 200;
        assert_eq!(find(&attributes, 7), None);
    }
}
