//! The frames the benchmarks feed the programs: minimal Ethernet + IPv4 + TCP frames, padded
//! to the 60-byte Ethernet minimum (or with a payload), 802.1Q-tagged ones, and a router's
//! ICMP "fragmentation needed" about a backend's reply.

use std::net::Ipv4Addr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment without payload from `src:src_port` to `dst:dst_port` with `flags`.
pub fn tcp_v4(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, flags: u8) -> Vec<u8> {
    tcp_v4_with_payload(src, src_port, dst, dst_port, flags, 0)
}

/// [`tcp_v4`] with `payload` bytes of payload (don't fragment set).
pub fn tcp_v4_with_payload(
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    flags: u8,
    payload: u16,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60 + usize::from(payload));
    frame.extend_from_slice(&LB_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = frame.len();
    let total = (40 + payload).to_be_bytes();
    frame.extend_from_slice(&[0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    let checksum = ipv4_checksum(&frame[ip_start..ip_start + 20]);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes()); // sequence
    frame.extend_from_slice(&1u32.to_be_bytes()); // acknowledgement
    frame.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    frame.resize(frame.len() + usize::from(payload), 0x61);
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

/// `frame` with an 802.1Q tag of VLAN `vid` after its MAC addresses.
pub fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&0x8100u16.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// The ICMP "fragmentation needed" (next-hop MTU `mtu`) that `router` sends to `vip` about
/// its reply from port `vip_port` to `client:client_port`, quoting the reply's headers.
pub fn frag_needed_v4(
    router: Ipv4Addr,
    (vip, vip_port): (Ipv4Addr, u16),
    (client, client_port): (Ipv4Addr, u16),
    mtu: u16,
) -> Vec<u8> {
    let reply = tcp_v4(vip, vip_port, client, client_port, TCP_ACK);
    let quote = &reply[14..54];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quote);
    let checksum = ipv4_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + 20 + icmp.len());
    frame.extend_from_slice(&LB_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = u16::try_from(20 + icmp.len())
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    frame.extend_from_slice(&[0x45, 0xc0, total[0], total[1], 0, 0, 0, 0, 64, 1, 0, 0]);
    frame.extend_from_slice(&router.octets());
    frame.extend_from_slice(&vip.octets());
    let checksum = ipv4_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&icmp);
    frame
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        let frame = tcp_v4(
            Ipv4Addr::new(198, 18, 0, 1),
            40_000,
            Ipv4Addr::new(198, 18, 100, 1),
            443,
            TCP_SYN,
        );
        assert_eq!(frame.len(), 60);
        assert_eq!(
            ipv4_checksum(&frame[14..34]),
            0,
            "a valid header sums to zero"
        );
        assert_eq!(&frame[34..36], &40_000u16.to_be_bytes());
        assert_eq!(frame[47], TCP_SYN);
    }
}
