//! Interface offload features by name (`ethtool -k` / `-K`), through the `SIOCETHTOOL` ioctl:
//! the feature names (`ETHTOOL_GSTRINGS`), their state (`ETHTOOL_GFEATURES`) and changes
//! (`ETHTOOL_SFEATURES`).
//!
//! The daemon turns a NIC's receive VLAN offload off: with it on, the NIC strips the VLAN tag
//! into its descriptor, the XDP program never sees it, and a tagged VIP flow would leave
//! untagged.

use std::io;

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The receive VLAN offloads (C-tags, S-tags).
pub const RX_VLAN_OFFLOADS: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

/// Runs one ethtool command whose buffer is `words` (starting with the command).
fn ioctl(interface: &str, words: &mut [u32]) -> io::Result<()> {
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
    request.ifr_ifru.ifru_data = words.as_mut_ptr().cast();
    // SAFETY: plain socket creation; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket; `request` points to `words`, which outlives the call and is as
    // large as the command needs (the callers size it from the kernel's own counts).
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut request) };
    let error = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error);
    }
    Ok(())
}

/// The names of `interface`'s features, in bit order.
fn feature_names(interface: &str) -> io::Result<Vec<String>> {
    // cmd, reserved, sset_mask (u64), data[1]
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ioctl(interface, &mut info)?;
    let count = info[4] as usize;
    // cmd, string_set, len, then count * 32 bytes.
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_FEATURES;
    strings[2] = u32::try_from(count).map_err(io::Error::other)?;
    ioctl(interface, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|name| {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect())
}

/// Turns the features named in `off` off on `interface` where they are on and can change;
/// returns the names it turned off.
pub fn turn_off(interface: &str, off: &[&str]) -> io::Result<Vec<String>> {
    let names = feature_names(interface)?;
    let blocks = names.len().div_ceil(32);
    // cmd, size, then per block: available, requested, active, never_changed.
    let mut get = vec![0u32; 2 + blocks * 4];
    get[0] = ETHTOOL_GFEATURES;
    get[1] = u32::try_from(blocks).map_err(io::Error::other)?;
    ioctl(interface, &mut get)?;
    let word = |base: &[u32], bit: usize, field: usize| base[2 + (bit / 32) * 4 + field];
    // cmd, size, then per block: valid, requested.
    let mut set = vec![0u32; 2 + blocks * 2];
    set[0] = ETHTOOL_SFEATURES;
    set[1] = get[1];
    let mut changed = Vec::new();
    for (bit, name) in names.iter().enumerate() {
        let mask = 1u32 << (bit % 32);
        let (available, active) = (word(&get, bit, 0), word(&get, bit, 2));
        if off.contains(&name.as_str()) && available & mask != 0 && active & mask != 0 {
            set[2 + (bit / 32) * 2] |= mask;
            changed.push(name.clone());
        }
    }
    if !changed.is_empty() {
        ioctl(interface, &mut set)?;
    }
    Ok(changed)
}
