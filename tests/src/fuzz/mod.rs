//! The packet-path fuzzer: generated and mutated frames ([`frames`]) through both XDP programs
//! with `BPF_PROG_TEST_RUN`, against live maps with real listeners: the balancer with a static
//! next hop, the balancer asking the FIB of a namespace (routes, neighbours, a multipath
//! backend, an egress VLAN), and the decapsulator.
//!
//! The balancer with a static next hop runs with a packet capture recording every frame (the
//! one with the FIB without: both ways of the program are fuzzed).
//!
//! Passes when no frame was aborted (`XDP_ABORTED` or an unknown action), every frame's
//! outcome is well-formed ([`check`]), every captured frame's record is that outcome, every batch of frames moved the verdict counters by
//! exactly one verdict per frame, of the kind its action says (forwarded, passed, dropped),
//! and the kernel logged no warning.

pub mod check;
pub mod frames;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb::{
    datapath::Datapath as _,
    lab::{NetNs, veth},
    loader::interface_index,
    state::Protocol,
};
use lb_common::{
    abi::{
        CAPTURE_SNAPLEN_MAX, CONFIG_F_EGRESS_VLAN, CONFIG_F_ICMP_TO_BACKENDS, CaptureFilter,
        DatapathConfig,
    },
    counters::{Counter, CounterKind, DecapCounter},
};
use rand::SeedableRng as _;

use self::{
    check::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    frames::{Addresses, Generator},
};
use crate::{fixture::*, harness::*};

/// How much to fuzz.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Frames through each program (the balancer's split between its two set-ups).
    pub frames: u64,
    pub seed: u64,
}

/// Frames per batch between counter checks.
const BATCH: u64 = 2_000;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    pub elapsed: Duration,
    /// Actions by program.
    pub actions: BTreeMap<(&'static str, &'static str), u64>,
    /// Counters that moved (verdicts and events), by program and label.
    pub verdicts: BTreeMap<(&'static str, &'static str), u64>,
    /// Everything that went wrong (empty: passed).
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fuzz-xdp: {} frames through each program in {:.1} s ({:.0} frames/s)",
            self.frames,
            self.elapsed.as_secs_f64(),
            (2 * self.frames) as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        for ((program, action), n) in &self.actions {
            writeln!(f, "  {program:<9} {action:<13} {n}")?;
        }
        writeln!(f, "counters:")?;
        for ((program, label), n) in &self.verdicts {
            writeln!(f, "  {program:<9} {label:<26} {n}")?;
        }
        if self.failures.is_empty() {
            writeln!(
                f,
                "passed: no abort, one verdict per frame, every output well-formed and captured as it left, no kernel warning"
            )
        } else {
            writeln!(f, "FAILED ({}):", self.failures.len())?;
            for failure in self.failures.iter().take(20) {
                writeln!(f, "  {failure}")?;
            }
            Ok(())
        }
    }
}

fn action_name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        0 => "XDP_ABORTED",
        _ => "unknown",
    }
}

const BACKENDS: [&str; 4] = [
    "198.18.1.10",
    "198.18.1.20",
    "2001:db8:1::10",
    "2001:db8:1::20",
];
const PORTS: [u16; 2] = [443, 53];

fn fuzz_config(flags: u16) -> DatapathConfig {
    let mut config = static_config(4093, 0x5eed, MTU);
    config.flags |= flags | CONFIG_F_ICMP_TO_BACKENDS;
    config.icmp_too_big_per_sec = 1_000_000;
    config.udp_idle_timeout_s = 30;
    config.ingress_mtu = 9000;
    config
}

/// The listeners: TCP and UDP on both VIPs, over the four backends.
fn fuzz_listeners() -> Vec<lb::state::Listener> {
    let mut all = Vec::new();
    for (vip, backends) in [(VIP4, &BACKENDS[..2]), (VIP6, &BACKENDS[2..])] {
        for port in PORTS {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let name = format!("{vip}-{port}-{protocol:?}");
                all.push(listener(&name, vip, port, protocol, backends));
            }
        }
    }
    all
}

/// The balancer asking a namespace's FIB: the backends behind `out0` through a router (one
/// behind two, one of which the neighbour table does not know yet), `out0` in the redirect map
/// with an egress VLAN.
struct FibTarget {
    harness: Harness,
    ns: NetNs,
    _peer: NetNs,
    ingress: u32,
}

fn fib_target() -> FibTarget {
    let ns = NetNs::new("lbfuzz").expect("a namespace");
    let peer = NetNs::new("lbfuzz").expect("a namespace");
    veth(&ns, "in0", &peer, "in0p").expect("a veth");
    veth(&ns, "out0", &peer, "out0p").expect("a veth");
    let run = |args: &[&str]| {
        ns.ip(args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    };
    run(&["addr", "add", "198.18.0.2/24", "dev", "in0"]);
    run(&["addr", "add", "198.18.9.2/24", "dev", "out0"]);
    run(&[
        "-6",
        "addr",
        "add",
        "2001:db8:9::2/64",
        "dev",
        "out0",
        "nodad",
    ]);
    for (gateway, mac) in [
        ("198.18.9.1", "02:00:00:00:09:01"),
        ("2001:db8:9::1", "02:00:00:00:09:01"),
    ] {
        run(&[
            "neigh",
            "add",
            gateway,
            "lladdr",
            mac,
            "dev",
            "out0",
            "nud",
            "permanent",
        ]);
    }
    run(&[
        "route",
        "add",
        "198.18.1.10/32",
        "via",
        "198.18.9.1",
        "dev",
        "out0",
    ]);
    run(&[
        "route",
        "add",
        "198.18.1.20/32",
        "nexthop",
        "via",
        "198.18.9.1",
        "dev",
        "out0",
        "nexthop",
        "via",
        "198.18.9.3",
        "dev",
        "out0",
    ]);
    run(&[
        "-6",
        "route",
        "add",
        "2001:db8:1::/64",
        "via",
        "2001:db8:9::1",
        "dev",
        "out0",
    ]);
    ns.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        .expect("forwarding");
    let mut config = fuzz_config(CONFIG_F_EGRESS_VLAN);
    config.flags &= !lb_common::abi::CONFIG_F_STATIC_NEXT_HOP;
    config.mtu = 0;
    let mut harness = Harness::new(config);
    harness.apply(&fuzz_listeners());
    let (ingress, out0) = ns
        .run_here(|| {
            (
                interface_index("in0").expect("in0"),
                interface_index("out0").expect("out0"),
            )
        })
        .expect("entering the namespace");
    let datapath = harness.reconciler.datapath_mut();
    datapath.add_tx_port(out0).expect("the redirect map");
    datapath
        .set_egress_vlan(out0, Some(300))
        .expect("the egress VLAN map");
    harness
        .reconciler
        .set_multipath([ip("198.18.1.20")].into_iter().collect())
        .expect("marking multipath");
    FibTarget {
        harness,
        ns,
        _peer: peer,
        ingress,
    }
}

/// Verdict counters summed by kind.
fn by_kind(counters: &[u64], kinds: impl Iterator<Item = (usize, CounterKind)>) -> [u64; 3] {
    let mut sums = [0u64; 3];
    for (index, kind) in kinds {
        let slot = match kind {
            CounterKind::Forward => 0,
            CounterKind::Pass => 1,
            CounterKind::Drop => 2,
            CounterKind::Event => continue,
        };
        sums[slot] += counters.get(index).copied().unwrap_or(0);
    }
    sums
}

fn balancer_kinds() -> impl Iterator<Item = (usize, CounterKind)> {
    Counter::ALL.iter().map(|c| (c.index() as usize, c.kind()))
}

fn decap_kinds() -> impl Iterator<Item = (usize, CounterKind)> {
    DecapCounter::ALL
        .iter()
        .map(|c| (c.index() as usize, c.kind()))
}

/// Actions of one batch by kind: forwarded (TX, REDIRECT), passed, dropped.
#[derive(Default)]
struct Tally([u64; 3]);

impl Tally {
    fn add(&mut self, action: u32) {
        match action {
            XDP_TX | XDP_REDIRECT => self.0[0] += 1,
            XDP_PASS => self.0[1] += 1,
            XDP_DROP => self.0[2] += 1,
            _ => {}
        }
    }
}

/// Moves the calling thread into the network namespace `file` refers to.
fn enter(file: &std::fs::File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `file` is an open namespace file; setns only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The kernel log's lines now.
fn kernel_log() -> Vec<String> {
    std::process::Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the fuzzer.
pub fn run(options: Options) -> Report {
    crate::require_root();
    let log_before = kernel_log();
    let mut report = Report {
        frames: options.frames,
        ..Report::default()
    };
    let backends: Vec<IpAddr> = BACKENDS.iter().map(|b| ip(b)).collect();
    let expect = check::Expect {
        backends: &backends,
        encap_v4_prefix: [198, 18, 255],
        encap_v6_prefix: [0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    let mut statics = Harness::new(fuzz_config(0));
    statics.apply(&fuzz_listeners());
    statics
        .reconciler
        .set_local_addresses([ip(VIP6)])
        .expect("marking a local VIP");
    // Every frame through the first balancer is captured, its record checked against what
    // left (a test run is synchronous: its record is in the ring when it returns).
    let (mut capture, mut ring) = statics.balancer.take_capture().expect("the capture maps");
    capture
        .prepare(&CaptureFilter {
            action_mask: 0x1f,
            snaplen: CAPTURE_SNAPLEN_MAX,
            per_cpu_rate: 0,
            ..CaptureFilter::default()
        })
        .expect("the capture filter");
    statics
        .reconciler
        .set_capture(true)
        .expect("turning the capture on");
    let mut fib = fib_target();
    let mut decap = DecapHarness::new(&[ip(VIP4), ip(VIP6)]);
    let mut generator = Generator {
        rng: rand::rngs::StdRng::seed_from_u64(options.seed),
        addresses: Addresses {
            vips: vec![ip(VIP4), ip(VIP6), ip(VIP4_EMPTY)],
            others: vec![ip("198.18.100.9"), ip("2001:db8:100::9"), ip("198.18.7.7")],
            clients: vec![
                ip(CLIENT4),
                ip(CLIENT6),
                ip("198.18.3.3"),
                ip("2001:db8:3::3"),
            ],
            ports: PORTS.to_vec(),
        },
    };

    // The whole run in the namespace, whose FIB the second balancer asks (the others do not
    // care where they run).
    let ns = fib.ns.path();
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("this thread's namespace");
    enter(&std::fs::File::open(&ns).expect("the fuzzer's namespace"));
    let started = Instant::now();
    let mut done = 0u64;
    while done < options.frames {
        let batch = BATCH.min(options.frames - done);
        let before = (statics.counters(), fib.harness.counters(), decap.counters());
        let mut tallies = (Tally::default(), Tally::default(), Tally::default());
        for i in 0..batch {
            let mut input = generator.balancer_frame();
            generator.mutate(&mut input);
            let on_fib = i % 2 == 1;
            let out = if on_fib {
                fib.harness.run_on(&input, Some(fib.ingress))
            } else {
                statics.run(&input)
            };
            let program = if on_fib { "balancer/fib" } else { "balancer" };
            *report
                .actions
                .entry((program, action_name(out.action)))
                .or_default() += 1;
            let checked = match out.action {
                XDP_TX | XDP_REDIRECT => check::forwarded(&input, &out.frame, &expect),
                XDP_PASS => check::passed(&input, &out.frame, &expect),
                XDP_DROP => Ok(()),
                other => Err(format!("action {other}")),
            };
            let checked = checked.and_then(|()| {
                if on_fib {
                    return Ok(());
                }
                let record = ring
                    .next()
                    .map(|item| lb::capture::RingRecord::parse(&item));
                check::captured(out.action, &out.frame, record)?;
                match ring.next() {
                    Some(_) => Err("a second capture record for one frame".to_owned()),
                    None => Ok(()),
                }
            });
            if let Err(failure) = checked {
                report
                    .failures
                    .push(format!("{program}: {failure}: input {input:02x?}"));
            }
            if on_fib {
                tallies.1.add(out.action);
            } else {
                tallies.0.add(out.action);
            }

            let mut input = generator.decap_frame(&backends);
            generator.mutate(&mut input);
            let out = decap.run(&input);
            *report
                .actions
                .entry(("decap", action_name(out.action)))
                .or_default() += 1;
            let checked = match out.action {
                XDP_PASS => check::decapsulated(&input, &out.frame),
                XDP_DROP => Ok(()),
                other => Err(format!("action {other}")),
            };
            if let Err(failure) = checked {
                report
                    .failures
                    .push(format!("decap: {failure}: input {input:02x?}"));
            }
            tallies.2.add(out.action);
        }
        let after = (statics.counters(), fib.harness.counters(), decap.counters());
        for (name, before, after, tally, kinds) in [
            ("balancer", &before.0, &after.0, &tallies.0, 0),
            ("balancer/fib", &before.1, &after.1, &tallies.1, 0),
            ("decap", &before.2, &after.2, &tallies.2, 1),
        ] {
            let delta: Vec<u64> = after
                .iter()
                .zip(before)
                .map(|(a, b)| a.wrapping_sub(*b))
                .collect();
            let sums = if kinds == 0 {
                by_kind(&delta, balancer_kinds())
            } else {
                // The decapsulator passes what it decapsulates ("forward" verdicts).
                let [forward, pass, drop] = by_kind(&delta, decap_kinds());
                [0, forward + pass, drop]
            };
            if sums != tally.0 {
                report.failures.push(format!(
                    "{name}: frames by action (forwarded, passed, dropped) {:?}, verdict counters {sums:?}",
                    tally.0
                ));
            }
            let labels: Vec<(&'static str, CounterKind)> = if kinds == 0 {
                Counter::ALL.iter().map(|c| (c.label(), c.kind())).collect()
            } else {
                DecapCounter::ALL
                    .iter()
                    .map(|c| (c.label(), c.kind()))
                    .collect()
            };
            for ((label, _), value) in labels.into_iter().zip(&delta) {
                if *value > 0 {
                    *report.verdicts.entry((name, label)).or_default() += value;
                }
            }
        }
        done += batch;
    }
    report.elapsed = started.elapsed();
    enter(&home);
    let log_after = kernel_log();
    let new_lines = log_after.iter().skip(log_before.len());
    for line in new_lines {
        if ["WARNING", "BUG", "Call Trace", "invalid XDP action", "bpf"]
            .iter()
            .any(|needle| line.contains(needle))
        {
            report.failures.push(format!("kernel log: {line}"));
        }
    }
    report
}
