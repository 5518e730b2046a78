//! A tun device that lives exactly as long as its file descriptor: not persistent, so when the
//! last descriptor closes (the daemon stops, dies, or hands it to a successor that then stops)
//! the kernel deletes the device and every route through it.
//!
//! No packet is ever read or written: the device exists only so that routes can point at it.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// An open tun device.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

impl Tun {
    /// Creates the device `name` (`IFF_TUN_EXCL`: never an existing one, which might be
    /// persistent and outlive the daemon). Fails with `EBUSY` if a device of that name exists,
    /// `EPERM` without `CAP_NET_ADMIN`.
    pub fn create(name: &str) -> io::Result<Self> {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
        if c_name.as_bytes().len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an interface name is at most 15 bytes",
            ));
        }
        // SAFETY: a NUL-terminated path; the returned descriptor is checked and owned below.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor this function just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `ifreq` is plain data; zeroed is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(c_name.as_bytes()) {
            *slot = libc::c_char::from_ne_bytes([*byte]);
        }
        // 0x9001: the C `short` field holds it as a negative number.
        let flags =
            u16::try_from(libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL).unwrap_or_default();
        request.ifr_ifru.ifru_flags = libc::c_short::from_ne_bytes(flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// Wraps a descriptor of a tun device opened by another process (a predecessor daemon
    /// handing it over).
    pub fn adopt(fd: OwnedFd, name: &str) -> Self {
        Self {
            fd,
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second descriptor of the device, to hand over.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}
