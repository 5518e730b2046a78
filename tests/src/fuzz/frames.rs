//! The fuzzer's frames: well-formed ones of every kind the programs handle (TCP, UDP and ICMP
//! to VIPs and elsewhere, VLAN tags, IPv4 options, IPv6 extension chains, fragments, ICMP
//! errors quoting VIP flows, IP-in-IP for the decapsulator), then mutated: bytes flipped,
//! header fields set to anything, cut at any offset, grown with garbage, tags added.

use std::net::IpAddr;

use rand::{Rng, RngCore, rngs::StdRng};

use crate::packet::{
    Ext, Flow, IcmpError, LB_MAC, Tcp, encapsulated, frame, icmp_error, ping, with_ipv4_fragment,
    with_ipv4_options, with_ipv6_ext, with_vlan_tags,
};

/// Addresses the fuzzer's frames use (the listeners' VIPs, other hosts).
pub struct Addresses {
    pub vips: Vec<IpAddr>,
    pub others: Vec<IpAddr>,
    pub clients: Vec<IpAddr>,
    /// Ports the VIPs listen on (TCP and UDP).
    pub ports: Vec<u16>,
}

/// Makes frames.
pub struct Generator {
    pub rng: StdRng,
    pub addresses: Addresses,
}

const TCP: u8 = 6;
const UDP: u8 = 17;

impl Generator {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn family_pair(&mut self, to_vip: bool) -> (IpAddr, IpAddr) {
        let v4 = self.rng.random_bool(0.5);
        let of = |list: &[IpAddr]| -> Vec<IpAddr> {
            list.iter().copied().filter(|a| a.is_ipv4() == v4).collect()
        };
        let clients = of(&self.addresses.clients);
        let targets = if to_vip {
            of(&self.addresses.vips)
        } else {
            of(&self.addresses.others)
        };
        (self.pick(&clients), self.pick(&targets))
    }

    /// A TCP or UDP flow, to a VIP port most of the time.
    fn flow(&mut self) -> Flow {
        let to_vip = self.rng.random_bool(0.8);
        let (src, dst) = self.family_pair(to_vip);
        let ports = self.addresses.ports.clone();
        Flow {
            src,
            dst,
            src_port: self.rng.random(),
            dst_port: if self.rng.random_bool(0.8) {
                self.pick(&ports)
            } else {
                self.rng.random()
            },
            proto: if self.rng.random_bool(0.7) { TCP } else { UDP },
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = match self.rng.random_range(0..100) {
            0..70 => self.rng.random_range(0..200),
            70..95 => self.rng.random_range(200..1600),
            _ => self.rng.random_range(1600..9000),
        };
        let mut payload = vec![0u8; len];
        self.rng.fill_bytes(&mut payload);
        payload
    }

    fn flags(&mut self) -> Tcp {
        if self.rng.random_bool(0.3) {
            Tcp::Syn
        } else {
            Tcp::Ack
        }
    }

    /// A well-formed frame for the balancer.
    pub fn balancer_frame(&mut self) -> Vec<u8> {
        let flow = self.flow();
        let mut out = match self.rng.random_range(0..100) {
            0..55 => {
                let (flags, payload) = (self.flags(), self.payload());
                frame(&flow, flags, &payload)
            }
            55..62 => {
                let f = frame(&flow, Tcp::Ack, &self.payload());
                if flow.src.is_ipv4() {
                    let words = self.rng.random_range(1..=10);
                    let options: Vec<u8> = (0..words * 4).map(|_| self.rng.random()).collect();
                    with_ipv4_options(&f, &options)
                } else {
                    let exts = self.ext_chain();
                    with_ipv6_ext(&f, &exts)
                }
            }
            62..70 => {
                let f = frame(&flow, Tcp::Ack, &self.payload());
                if flow.src.is_ipv4() {
                    let field = self.rng.random::<u16>() & 0x3fff;
                    with_ipv4_fragment(&f, field)
                } else {
                    let offset_flags = self.rng.random::<u16>() & 0xfff9;
                    with_ipv6_ext(&f, &[Ext::fragment(offset_flags)])
                }
            }
            70..85 => self.icmp_error(&flow),
            85..90 => ping(flow.src, flow.dst),
            _ => self.garbage(),
        };
        if self.rng.random_bool(0.15) {
            out = self.tagged(&out);
        }
        out
    }

    /// IPv6 extension headers, at times more than the parser walks.
    fn ext_chain(&mut self) -> Vec<Ext> {
        let count = self.rng.random_range(1..=6);
        (0..count)
            .map(|_| match self.rng.random_range(0..5) {
                0 => Ext::options(0, self.rng.random_range(0..3)),
                1 => Ext::options(60, self.rng.random_range(0..3)),
                2 => Ext::options(43, self.rng.random_range(0..3)),
                3 => Ext::auth(self.rng.random_range(1..4)),
                _ => Ext::fragment(0),
            })
            .collect()
    }

    /// An ICMP error from a router about a backend's reply to `flow`'s client.
    fn icmp_error(&mut self, flow: &Flow) -> Vec<u8> {
        let reply = Flow {
            src: flow.dst,
            dst: flow.src,
            src_port: flow.dst_port,
            dst_port: flow.src_port,
            proto: flow.proto,
        };
        let quoted = frame(&reply, Tcp::Ack, &vec![0x5a; 1400]);
        let max_quote = quoted.len() - 14;
        // At least the quoted IP header, whose source the error goes to; shorter quotes come
        // from the mutations.
        let header = if flow.src.is_ipv4() { 20 } else { 40 };
        let quote = self.rng.random_range(header..=max_quote.min(1232));
        let error = if self.rng.random_bool(0.7) {
            IcmpError::TooBig(self.rng.random_range(500..1500))
        } else {
            IcmpError::PortUnreachable
        };
        let router = self.pick(&self.addresses.others.clone());
        let router = if router.is_ipv4() == flow.src.is_ipv4() {
            router
        } else {
            flow.src
        };
        icmp_error(&quoted, router, error, quote)
    }

    /// Anything after an Ethernet header with an IP EtherType, or any EtherType.
    fn garbage(&mut self) -> Vec<u8> {
        let len = self.rng.random_range(14..200);
        let mut out = vec![0u8; len];
        self.rng.fill_bytes(&mut out);
        out[..6].copy_from_slice(&LB_MAC);
        if self.rng.random_bool(0.7) {
            let ether_type: u16 = self.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8]);
            out[12..14].copy_from_slice(&ether_type.to_be_bytes());
        }
        out
    }

    /// `frame` with one to three tags of random TPIDs and ids.
    fn tagged(&mut self, frame: &[u8]) -> Vec<u8> {
        let count = match self.rng.random_range(0..10) {
            0..6 => 1,
            6..9 => 2,
            _ => 3,
        };
        let tags: Vec<(u16, u16)> = (0..count)
            .map(|_| {
                let tpid = self.pick(&[0x8100, 0x88a8, 0x8100, 0x9100]);
                (tpid, self.rng.random())
            })
            .collect();
        with_vlan_tags(frame, &tags)
    }

    /// A well-formed frame for the decapsulator: IP-in-IP from the balancer (to a VIP or not,
    /// any ECN) most of the time.
    pub fn decap_frame(&mut self, backends: &[IpAddr]) -> Vec<u8> {
        if self.rng.random_bool(0.2) {
            return self.balancer_frame();
        }
        let flow = self.flow();
        let mut inner = frame(&flow, self.flags(), &self.payload());
        let tos: u8 = self.rng.random();
        if flow.src.is_ipv4() {
            inner[15] = tos;
            crate::packet::fix_ipv4_checksum(&mut inner);
        } else {
            inner[14] = 0x60 | (tos >> 4);
            inner[15] = (inner[15] & 0x0f) | (tos << 4);
        }
        let backend: Vec<IpAddr> = backends
            .iter()
            .copied()
            .filter(|b| b.is_ipv4() == flow.src.is_ipv4())
            .collect();
        let backend = self.pick(&backend);
        let outer_src = self.pick(&self.addresses.others.clone());
        let outer_src = if outer_src.is_ipv4() == backend.is_ipv4() {
            outer_src
        } else {
            backend
        };
        let mut out = encapsulated(&inner, outer_src, backend, [2, 0, 0, 0, 0, 9], LB_MAC);
        // Outer ECN (and, for IPv4, the checksum again).
        let ecn: u8 = self.rng.random_range(0..4);
        if backend.is_ipv4() {
            out[15] = (out[15] & !3) | ecn;
            crate::packet::fix_ipv4_checksum(&mut out);
            if self.rng.random_bool(0.05) {
                out = with_ipv4_fragment(&out, self.rng.random::<u16>() & 0x3fff);
            }
        } else {
            out[15] = (out[15] & 0xcf) | (ecn << 4);
        }
        if self.rng.random_bool(0.1) {
            out = self.tagged(&out);
        }
        out
    }

    /// Mutates `frame` in one to four ways (or not at all, a third of the time).
    pub fn mutate(&mut self, frame: &mut Vec<u8>) {
        if self.rng.random_bool(0.33) {
            return;
        }
        for _ in 0..self.rng.random_range(1..=4) {
            match self.rng.random_range(0..100) {
                // A byte anywhere in the headers.
                0..35 => {
                    let end = frame.len().min(100);
                    if end > 0 {
                        let at = self.rng.random_range(0..end);
                        frame[at] = self.rng.random();
                    }
                }
                // A bit anywhere.
                35..50 => {
                    if !frame.is_empty() {
                        let at = self.rng.random_range(0..frame.len());
                        frame[at] ^= 1 << self.rng.random_range(0..8);
                    }
                }
                // A 16-bit field at an even header offset (lengths, ports, EtherTypes).
                50..65 => {
                    let end = frame.len().min(96);
                    if end >= 2 {
                        let at = self.rng.random_range(0..end / 2) * 2;
                        let random = self.rng.random();
                        let value: u16 = self.pick(&[0, 1, 0xffff, 0x8000, random]);
                        frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
                    }
                }
                // Cut at any offset (at least an Ethernet header: BPF_PROG_TEST_RUN refuses
                // shorter frames, as no NIC delivers them).
                65..80 => {
                    if frame.len() > 14 {
                        let len = self.rng.random_range(14..frame.len());
                        frame.truncate(len);
                    }
                }
                // Grow with garbage.
                80..88 => {
                    let extra = self.rng.random_range(1..64);
                    frame.extend((0..extra).map(|_| self.rng.random::<u8>()));
                }
                // A tag in front.
                _ => *frame = self.tagged(frame),
            }
        }
        if frame.len() < 14 {
            frame.resize(14, 0);
        }
    }
}
