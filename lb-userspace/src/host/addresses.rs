//! The addresses assigned to this host's interfaces (`getifaddrs`), in the calling thread's
//! network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: IpAddr,
}

/// Every address of every interface.
pub fn interface_addresses() -> std::io::Result<Vec<InterfaceAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = head;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list `getifaddrs` returned, not yet freed.
        let ifa = unsafe { &*entry };
        if let Some(address) = socket_address(ifa.ifa_addr) {
            // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            found.push(InterfaceAddress {
                interface: name.to_string_lossy().into_owned(),
                address,
            });
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: `head` came from `getifaddrs` and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The IP address in a `sockaddr`, if it is one.
fn socket_address(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: a non-null `ifa_addr` points to a sockaddr whose family says its real type.
    match i32::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET => {
            // SAFETY: an AF_INET sockaddr is a `sockaddr_in`.
            let sin = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 sockaddr is a `sockaddr_in6`.
            let sin6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The addresses on `lo` besides the loopback ones: the VIPs a backend serves. An IPv4
/// address with a label (`ip addr add VIP/32 dev lo label lo:vip`) comes back under its label.
pub fn loopback_vips() -> std::io::Result<Vec<IpAddr>> {
    let on_lo = |name: &str| name == "lo" || name.starts_with("lo:");
    let mut vips: Vec<IpAddr> = interface_addresses()?
        .into_iter()
        .filter(|a| on_lo(&a.interface) && !a.address.is_loopback())
        .map(|a| a.address)
        .collect();
    vips.sort();
    vips.dedup();
    Ok(vips)
}

/// Whether `address` is assigned to one of this host's interfaces.
pub fn is_local(address: IpAddr, addresses: &[InterfaceAddress]) -> bool {
    addresses.iter().any(|a| a.address == address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_address_is_listed_and_is_no_vip() {
        let all = interface_addresses().unwrap();
        assert!(
            all.iter()
                .any(|a| a.interface == "lo" && a.address == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{all:?}"
        );
        assert!(is_local(IpAddr::V4(Ipv4Addr::LOCALHOST), &all));
        assert!(!loopback_vips().unwrap().iter().any(IpAddr::is_loopback));
    }
}
