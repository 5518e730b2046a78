//! A bounded SYN flood from a lab namespace, for the connection-table protection tests.
//!
//! [`SynFlood`] describes it: `count` TCP SYNs to `target`, flow `i` from source address
//! `sources[i % n]` and port `first_port + i / n`, so that every SYN is a new flow. Use
//! addresses of the lab's client segment that no host holds (e.g. 198.18.0.100-.249): the
//! backends' SYN-ACKs to them go nowhere, and no real flow shares a 5-tuple with the flood.
//!
//! [`SynFlood::send`] sends them from inside a namespace (the lab's client), from one thread
//! pinned to each of `cpus` CPUs, so that the balancer's per-CPU state on each of them sees the
//! flood: a packet sent from a CPU reaches the balancer's XDP program on the same CPU (veth and
//! bridge forward it in that CPU's softirq). Each thread sends through a raw IPv4 socket
//! (`IPPROTO_RAW`: each packet carries its own IPv4 header; both headers and the TCP checksum
//! are built with etherparse, and the kernel fills in the IP checksum again). It sends as fast
//! as the socket takes them, retrying a send the socket refuses for lack of buffer space, and
//! stops at the deadline whatever is left: the flood is bounded in count and in time.
//! [`FloodReport`] says how many SYNs went out and how long it took.
//!
//! Traffic stays in the lab: the target and every source must be in 198.18.0.0/15.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use lb::lab::NetNs;

/// The lab's address block (RFC 2544 benchmarking addresses): 198.18.0.0/15.
const LAB_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const LAB_PREFIX_LEN: u32 = 15;

/// A SYN flood: which SYNs, to where, and for how long at most.
#[derive(Clone, Debug)]
pub struct SynFlood {
    /// SYNs to send (each a distinct flow).
    pub count: usize,
    /// The VIP and port they go to.
    pub target: SocketAddrV4,
    /// Source addresses, used in turn.
    pub sources: Vec<Ipv4Addr>,
    /// The first source port of each address.
    pub first_port: u16,
    /// The flood stops here even if SYNs are left.
    pub deadline: Duration,
    /// Sending threads, each pinned to one of the first `cpus` CPUs this process may use
    /// (fewer if it may use fewer).
    pub cpus: usize,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodReport {
    /// SYNs the socket accepted.
    pub sent: usize,
    /// Sends the socket refused for lack of buffer space (each retried).
    pub retries: u64,
    /// From the first SYN to the last one (or the deadline).
    pub elapsed: Duration,
}

impl SynFlood {
    /// The source (address, port) of flow `i`.
    pub fn source(&self, i: usize) -> SocketAddrV4 {
        let n = self.sources.len();
        let port = usize::from(self.first_port) + i / n;
        SocketAddrV4::new(
            self.sources[i % n],
            u16::try_from(port).expect("checked by `check`: the ports fit"),
        )
    }

    /// Sends the flood from inside `ns`, flows shared among the threads, and waits for it to
    /// finish.
    pub fn send(&self, ns: &NetNs) -> FloodReport {
        self.check();
        let mut cpus = allowed_cpus();
        cpus.truncate(self.cpus);
        let start = Instant::now();
        let threads: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(share, &cpu)| {
                let (flood, shares) = (self.clone(), cpus.len());
                ns.spawn(&format!("syn-flood-{cpu}"), move || {
                    pin_to_cpu(cpu);
                    flood.send_share(share, shares, start)
                })
                .expect("starting a flood thread in the namespace")
            })
            .collect();
        let mut report = FloodReport {
            sent: 0,
            retries: 0,
            elapsed: Duration::ZERO,
        };
        for thread in threads {
            let share = thread
                .join()
                .expect("a flood thread panicked (see its message above)");
            report.sent += share.sent;
            report.retries += share.retries;
        }
        report.elapsed = start.elapsed();
        report
    }

    /// Panics unless the flood is well-formed and stays in the lab.
    fn check(&self) {
        assert!(!self.sources.is_empty(), "a flood needs source addresses");
        assert!(self.cpus > 0, "a flood needs a sending thread");
        for address in self.sources.iter().chain([self.target.ip()]) {
            assert!(
                is_in_lab(*address),
                "{address} is outside the lab ({LAB_NET}/{LAB_PREFIX_LEN}): floods stay in it"
            );
        }
        let ports = self.count.div_ceil(self.sources.len());
        assert!(
            usize::from(self.first_port) + ports <= usize::from(u16::MAX) + 1,
            "{} SYNs from {} addresses need {ports} ports from {}: more addresses, please",
            self.count,
            self.sources.len(),
            self.first_port
        );
    }

    /// Sends flows `share`, `share + shares`, ... from the calling thread (inside the
    /// namespace), until `start + deadline`.
    fn send_share(&self, share: usize, shares: usize, start: Instant) -> FloodReport {
        let socket = raw_socket().expect("a raw IPv4 socket (needs CAP_NET_RAW)");
        let target = sockaddr(self.target);
        let mut report = FloodReport {
            sent: 0,
            retries: 0,
            elapsed: Duration::ZERO,
        };
        let mut packet = Vec::with_capacity(64);
        'flows: for i in (share..self.count).step_by(shares) {
            packet.clear();
            syn_packet(self.source(i), self.target, &mut packet);
            loop {
                if start.elapsed() > self.deadline {
                    break 'flows;
                }
                match send_to(&socket, &packet, &target) {
                    Ok(()) => break,
                    Err(e) if is_busy(&e) => {
                        report.retries += 1;
                        thread::yield_now();
                    }
                    Err(e) => panic!("sending SYN {i} to {}: {e}", self.target),
                }
            }
            report.sent += 1;
        }
        report.elapsed = start.elapsed();
        report
    }
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live `cpu_set_t` of the size passed.
    let got = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    assert_eq!(got, 0, "sched_getaffinity: {}", io::Error::last_os_error());
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    assert!(!cpus.is_empty(), "this thread may run on no CPU");
    cpus
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from `allowed_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live `cpu_set_t` of the size passed.
    let pinned =
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    assert_eq!(
        pinned,
        0,
        "pinning the flood thread to CPU {cpu}: {}",
        io::Error::last_os_error()
    );
}

/// Whether `address` is in the lab's 198.18.0.0/15.
fn is_in_lab(address: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - LAB_PREFIX_LEN);
    u32::from(address) & mask == u32::from(LAB_NET)
}

/// An IPv4 packet: a SYN from `source` to `target` with a fixed sequence number.
fn syn_packet(source: SocketAddrV4, target: SocketAddrV4, out: &mut Vec<u8>) {
    PacketBuilder::ipv4(source.ip().octets(), target.ip().octets(), 64)
        .tcp(source.port(), target.port(), 0x5eed_0000, 64_240)
        .syn()
        .write(out, &[])
        .expect("building a SYN");
}

/// `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`: sends IPv4 packets whose header the caller
/// wrote (`IP_HDRINCL` is implied).
fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: `socket` has no memory-safety preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor `socket` just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One non-blocking `sendto`.
fn send_to(socket: &OwnedFd, packet: &[u8], target: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: `packet` and `target` are live for the call and their lengths are passed with
    // them; the descriptor is open (owned by `socket`).
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
            std::ptr::from_ref(target).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(
        usize::try_from(sent).ok(),
        Some(packet.len()),
        "a raw socket sends whole packets"
    );
    Ok(())
}

/// The socket's buffer is full for now: retry.
fn is_busy(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock || error.raw_os_error() == Some(libc::ENOBUFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_distinct_and_in_the_lab() {
        let flood = SynFlood {
            count: 1000,
            target: SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 1), 443),
            sources: (100..=249).map(|h| Ipv4Addr::new(198, 18, 0, h)).collect(),
            first_port: 10_000,
            deadline: Duration::from_secs(1),
            cpus: 1,
        };
        flood.check();
        let flows: std::collections::HashSet<_> =
            (0..flood.count).map(|i| flood.source(i)).collect();
        assert_eq!(flows.len(), flood.count);
        assert!(is_in_lab(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_in_lab(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!is_in_lab(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
