//! Raw Ethernet frames on an interface (`AF_PACKET`): send hand-made frames (VLAN tags the
//! kernel here has no devices for) and capture what crosses a link. A captured frame whose
//! outermost VLAN tag the kernel keeps beside the data (VLAN offload) gets it back in place,
//! from the socket's auxiliary data, as libpcap does.

use std::{io, time::Duration};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_AUXDATA: i32 = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// `struct tpacket_auxdata`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AuxData {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    net: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
}

/// A packet socket bound to one interface of the calling thread's namespace, closed on drop.
#[derive(Debug)]
pub struct RawSocket {
    fd: i32,
}

impl RawSocket {
    /// Opens a socket on `ifindex` that sees every frame sent or received there.
    pub fn bind(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket creation; the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Self { fd };
        // SAFETY: `sockaddr_ll` is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
        // SAFETY: `addr` is a valid `sockaddr_ll` of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let on: i32 = 1;
        // SAFETY: a valid option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&raw const on).cast(),
                size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    /// Sends one whole frame (from the destination MAC on).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length during the call.
        let sent = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The frames seen within `timeout` that `keep` accepts, the first `want` of them.
    pub fn capture(
        &self,
        timeout: Duration,
        want: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Vec<Vec<u8>>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut buffer = vec![0u8; 65_536];
        while frames.len() < want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut poll = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one valid `pollfd`.
            let ready = unsafe { libc::poll(&raw mut poll, 1, millis) };
            if ready < 0 {
                return Err(io::Error::last_os_error());
            }
            if ready == 0 {
                continue;
            }
            let frame = self.receive(&mut buffer)?;
            if keep(&frame) {
                frames.push(frame);
            }
        }
        Ok(frames)
    }
}

impl RawSocket {
    /// One frame, its offloaded VLAN tag put back after the MAC addresses.
    fn receive(&self, buffer: &mut [u8]) -> io::Result<Vec<u8>> {
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        // SAFETY: `msghdr` is plain old data; all-zero is a valid value.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = size_of_val(&control);
        // SAFETY: `message` points to buffers that outlive the call.
        let n = unsafe { libc::recvmsg(self.fd, &raw mut message, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut frame = buffer[..usize::try_from(n).unwrap_or(0)].to_vec();
        // SAFETY: walking the control messages the kernel wrote into `control`.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const message) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` points into `control`, at a header the kernel wrote.
            let header = unsafe { &*cmsg };

            if header.cmsg_level == libc::SOL_PACKET && header.cmsg_type == PACKET_AUXDATA {
                // SAFETY: a PACKET_AUXDATA message carries a `tpacket_auxdata`.
                let aux = unsafe { libc::CMSG_DATA(cmsg).cast::<AuxData>().read_unaligned() };
                if aux.status & TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                    let tpid = if aux.status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.vlan_tpid
                    } else {
                        0x8100
                    };
                    let mut tag = tpid.to_be_bytes().to_vec();
                    tag.extend_from_slice(&aux.vlan_tci.to_be_bytes());
                    frame.splice(12..12, tag);
                }
            }
            // SAFETY: as above; the next header or null.
            cmsg = unsafe { libc::CMSG_NXTHDR(&raw const message, cmsg) };
        }
        Ok(frame)
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}
