//! Generic receive offload (GRO) on an interface, through the `SIOCETHTOOL` ioctl.
//!
//! In generic (SKB) mode, an XDP program runs after GRO: it sees coalesced packets up to 64 KB
//! that are larger than the MTU, which the balancer could neither encapsulate within the MTU
//! nor answer sensibly. The daemon turns GRO off on interfaces it runs on in generic mode.

use std::io;

/// `ETHTOOL_GGRO` and `ETHTOOL_SGRO`: get and set GRO.
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Runs one `ethtool_value` command on `interface`; returns the value the kernel left.
fn ethtool_value(interface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {interface:?} is too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    let mut value = EthtoolValue { cmd, data };
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: plain socket creation; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket; `request` points to `value`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut request) };
    let error = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error);
    }
    Ok(value.data)
}

/// Whether GRO is on for `interface`.
pub fn gro_enabled(interface: &str) -> io::Result<bool> {
    ethtool_value(interface, ETHTOOL_GGRO, 0).map(|on| on != 0)
}

/// Turns GRO off on `interface`; returns whether it was on.
pub fn disable_gro(interface: &str) -> io::Result<bool> {
    let was_on = gro_enabled(interface)?;
    if was_on {
        ethtool_value(interface, ETHTOOL_SGRO, 0)?;
    }
    Ok(was_on)
}
