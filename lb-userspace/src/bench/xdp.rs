//! `lb bench xdp`: the balancer against a trivial `XDP_TX` program, in the same run.
//!
//! 1. Per-packet cost through `BPF_PROG_TEST_RUN`: a TCP SYN to a VIP (new flows), a packet of
//!    an established flow (untagged and 802.1Q-tagged), an ICMP error about an established flow
//!    (sent to its backend), a client packet too big to encapsulate (answered with ICMP), and a
//!    packet for no VIP, through the balancer and through
//!    `lb_tx_baseline` (swap MACs, `XDP_TX`); and an established flow while a packet capture
//!    runs, recording every packet (a thread drains the ring) or matching none of them; and a
//!    SYN of a new flow when the connection table is full (the steady state of a busy
//!    balancer: every insert evicts an entry). The
//!    balancer rewrites the packet, and a repeated
//!    test run does not restore it, so each packet is one test run (`repeat = 1`) and both
//!    programs are timed that way; the kernel's own timer measures each run.
//! 2. Forwarding rate with live frames: the kernel generates frames on a veth, the program
//!    sends each back out (`XDP_TX`) to the peer, where `lb_sink` counts them. The sink gives
//!    every frame a new source port, so the balancer sees 65536 distinct flows.
//!
//! Rounds alternate the two programs (A B A B ...) and the report gives the median with the
//! minimum and maximum, beside the README's target where the case has one. Everything runs on
//! one pinned CPU, in namespaces of its own. `--frames 0` skips the live-frame measurement.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use aya::{
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use lb_common::abi::{
    CAPTURE_SNAPLEN_MAX, CONFIG_F_ICMP_TO_BACKENDS, CONFIG_F_STATIC_NEXT_HOP, CaptureFilter,
    DatapathConfig, Mac,
};

use super::{
    BenchError, Spread,
    frames::{NEXT_HOP_MAC, TCP_ACK, TCP_SYN, frag_needed_v4, tagged, tcp_v4, tcp_v4_with_payload},
    nanos,
};
use crate::{
    capture::control::CaptureMaps,
    datapath::{RingGeometry, maps::AyaDatapath},
    lab::{NetNs, veth},
    loader::{AttachMode, Aux, Balancer, BalancerSpec, attach, interface_index, run_frame, xdp_md},
    reconcile::Reconciler,
    state::{Listener, Protocol, Target, Vip},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const BACKENDS: u8 = 8;
const XDP_PASS: u32 = 2;
/// Entries of the connection table.
const CONN_TABLE_SIZE: u32 = 1 << 18;
/// The first client of the full-table case (198.19.0.0, then upward: four times the table and
/// the rounds' runs, about 1.5 M addresses).
const FLOOD_BASE: u32 = 0xc613_0000;
const XDP_TX: u32 = 3;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Rounds per measurement (alternating balancer and baseline).
    pub rounds: usize,
    /// Test runs per round in the per-packet measurement.
    pub calls: usize,
    /// Frames per round in the live-frame measurement.
    pub frames: u32,
    /// Distinct flows in the live-frame measurement (a power of two, at most 65536).
    pub flows: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 5,
            calls: 100_000,
            frames: 2_000_000,
            flows: 65_536,
        }
    }
}

/// One per-packet case: nanoseconds per packet for each program.
#[derive(Clone, Debug)]
pub struct CostRow {
    pub case: &'static str,
    pub balancer: Spread,
    pub baseline: Spread,
    /// Balancer minus baseline, paired by round (so that drift between rounds cancels).
    pub difference: Spread,
    /// The most the difference's median may be, where the case has a target.
    pub target: Option<f64>,
}

/// One forwarding-rate case, in million packets per second.
#[derive(Clone, Debug)]
pub struct RateRow {
    pub case: &'static str,
    pub mpps: Spread,
    /// Rate over the baseline's rate of the same round (none for the baseline itself).
    pub ratio: Option<Spread>,
    /// Frames the sink counted per frame generated.
    pub delivered: f64,
    /// The least the ratio's median may be, where the case has a target.
    pub target: Option<f64>,
}

/// Targets of the per-packet cost, in ns above the trivial program (see the README).
const COST_TARGETS: [(&str, f64); 3] = [
    (SYN_CASE, 150.0),
    (ESTABLISHED_CASE, 40.0),
    (FULL_TABLE_CASE, 400.0),
];

const SYN_CASE: &str = "TCP SYN to a VIP (new flow)";
const ESTABLISHED_CASE: &str = "established flow";
const FULL_TABLE_CASE: &str = "TCP SYN, connection table full";

/// The least live rate over the trivial program's for `flows` distinct flows: 0.75 up to
/// 1024 flows, 0.6 up to 65536 (see the README).
fn rate_target(flows: u32) -> Option<f64> {
    match flows {
        0..=1024 => Some(0.75),
        1025..=65_536 => Some(0.6),
        _ => None,
    }
}

/// How a figure fares against its target.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// Everything `lb bench xdp` measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub cpu: usize,
    pub flows: u32,
    pub costs: Vec<CostRow>,
    /// The trivial program's live rate; none when the live measurement was skipped.
    pub baseline_rate: Option<RateRow>,
    pub rates: Vec<RateRow>,
}

/// The programs under test. They live in two namespaces of their own: the generator's veth
/// end (`v0`, where frames "arrive") and the sink's (`v1`).
struct Bench {
    balancer: Balancer,
    reconciler: Reconciler<AyaDatapath>,
    aux: Aux,
    ingress: u32,
    capture: CaptureMaps,
    ring: Option<RingBuf<MapData>>,
}

/// What a per-packet case's capture does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// No capture runs.
    Off,
    /// A capture records every packet, with no rate limit.
    Every,
    /// A capture runs whose filter (another client) matches no packet.
    None,
}

/// Runs the benchmark and returns its figures.
pub fn run(options: Options) -> Result<Report, BenchError> {
    let cpu = pin_to_last_cpu();
    let (mut bench, namespaces) = Bench::build()?;
    let generator = &namespaces[0];
    let costs = generator.run_here(|| measure_costs(&mut bench, options))??;
    let (baseline_rate, rates) = if options.frames == 0 {
        (None, Vec::new())
    } else {
        let (baseline, rates) = generator.run_here(|| measure_rates(&mut bench, options))??;
        (Some(baseline), rates)
    };
    drop(bench);
    Ok(Report {
        cpu,
        flows: options.flows,
        costs,
        baseline_rate,
        rates,
    })
}

impl Bench {
    /// Builds the namespaces (generator first) and loads the programs.
    fn build() -> Result<(Self, [NetNs; 2]), BenchError> {
        let gen_ns = NetNs::new("lbbench")?;
        let sink_ns = NetNs::new("lbbench")?;
        veth(&gen_ns, "v0", &sink_ns, "v1")?;
        gen_ns.ip(&["addr", "add", "198.18.0.2/24", "dev", "v0"])?;
        gen_ns.sysctl("net.ipv4.ip_forward", "1")?;
        for i in 0..BACKENDS {
            let backend = Ipv4Addr::new(198, 18, 0, 10 + i).to_string();
            gen_ns.ip(&[
                "neigh",
                "add",
                &backend,
                "lladdr",
                "02:00:00:00:01:00",
                "dev",
                "v0",
                "nud",
                "permanent",
            ])?;
        }
        let mut aux = Aux::load()?;
        sink_ns.run_here(|| attach(&mut aux.ebpf, Aux::SINK, "v1", AttachMode::Driver))??;
        let ingress = gen_ns.run_here(|| interface_index("v0"))??;

        let spec = BalancerSpec {
            geometry: RingGeometry {
                ring_size: 65_537,
                rings: 2,
            },
            conn_table_size: CONN_TABLE_SIZE,
            pin_dir: None,
        };
        let (mut balancer, datapath) = Balancer::load(&spec)?;
        let (capture, ring) = balancer.take_capture()?;
        let mut reconciler = Reconciler::new(datapath, config(true))?;
        reconciler.apply(&[Listener {
            name: "bench".to_owned(),
            vip: Vip {
                address: VIP.into(),
                port: 443,
                protocol: Protocol::Tcp,
            },
            targets: (0..BACKENDS)
                .map(|i| Target::new(Ipv4Addr::new(198, 18, 0, 10 + i).into(), 1))
                .collect(),
        }])?;
        let bench = Self {
            balancer,
            reconciler,
            aux,
            ingress,
            capture,
            ring: Some(ring),
        };
        Ok((bench, [gen_ns, sink_ns]))
    }

    /// Flows the connection table has given up so far (`conn_evicted`).
    fn evictions(&self) -> Result<u64, BenchError> {
        use crate::datapath::Datapath as _;
        let counters = self.reconciler.datapath().counters()?;
        Ok(crate::datapath::counter_value(
            &counters,
            lb_common::counters::Counter::ConnEvicted,
        ))
    }

    fn set_static_next_hop(&mut self, on: bool) -> Result<(), BenchError> {
        self.reconciler.set_config(config(on))?;
        Ok(())
    }

    /// Starts or stops a capture; a running one's ring is drained by a thread of its own,
    /// which [`Drainer::stop`] ends.
    fn set_capture(&mut self, capture: Capture) -> Result<Option<Drainer>, BenchError> {
        if capture == Capture::Off {
            self.reconciler.set_capture(false)?;
            return Ok(None);
        }
        let mut filter = CaptureFilter {
            action_mask: 0x1f,
            snaplen: CAPTURE_SNAPLEN_MAX,
            // No limit: each packet pays the whole recording.
            per_cpu_rate: 0,
            ..CaptureFilter::default()
        };
        if capture == Capture::None {
            filter.client_family = lb_common::abi::FAMILY_V4;
            filter.client_be = [u32::from_ne_bytes([203, 0, 113, 0]), 0, 0, 0];
            filter.client_mask_be = [u32::MAX, 0, 0, 0];
        }
        self.capture.prepare(&filter)?;
        self.reconciler.set_capture(true)?;
        let ring = self
            .ring
            .take()
            .ok_or_else(|| BenchError::Unexpected("the capture ring is taken".to_owned()))?;
        Ok(Some(Drainer::start(ring)))
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One per-packet case: its frames, the action they must end in, how the next hop is found
/// and whether a capture runs.
struct CostCase<'a> {
    case: &'static str,
    frames: &'a [Vec<u8>],
    /// Runs this many of the first frames once before the measurement, which then takes the
    /// frames after them (to fill the connection table with flows it never sees again).
    prefill: usize,
    action: u32,
    static_next_hop: bool,
    capture: Capture,
}

/// A thread that empties the capture ring as fast as records arrive.
struct Drainer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(RingBuf<MapData>, u64)>>,
}

impl Drainer {
    fn start(mut ring: RingBuf<MapData>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut records = 0u64;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                while ring.next().is_some() {
                    records += 1;
                }
                std::thread::yield_now();
            }
            (ring, records)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; the ring and the records it read. (Dropped instead, on an error,
    /// the thread is told to stop and the ring goes with it.)
    fn stop(mut self) -> Result<(RingBuf<MapData>, u64), BenchError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let panicked = || BenchError::Unexpected("the ring's reader panicked".to_owned());
        self.thread
            .take()
            .ok_or_else(panicked)?
            .join()
            .map_err(|_| panicked())
    }
}

/// The datapath configuration: a static next hop, or the FIB; ICMP errors to the backends,
/// too-big answers without a practical limit.
fn config(static_next_hop: bool) -> DatapathConfig {
    DatapathConfig {
        ring_size: 65_537,
        hash_seed: 1,
        encap_src_v4_base: 0xc612_ff00,
        encap_src_v4_mask: 0xff,
        mtu: 1500,
        next_hop_mac: Mac(NEXT_HOP_MAC),
        flags: CONFIG_F_ICMP_TO_BACKENDS
            | if static_next_hop {
                CONFIG_F_STATIC_NEXT_HOP
            } else {
                0
            },
        icmp_too_big_per_sec: u32::MAX,
        ingress_mtu: 1500,
        ..DatapathConfig::default()
    }
}

fn frames(flags: u8, dst: Ipv4Addr, flows: u16) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|i| tcp_v4(CLIENT, 10_000 + i, dst, 443, flags))
        .collect()
}

fn measure_costs(bench: &mut Bench, options: Options) -> Result<Vec<CostRow>, BenchError> {
    let syn = frames(TCP_SYN, VIP, 4096);
    let established = frames(TCP_ACK, VIP, 1024);
    let tagged_established: Vec<Vec<u8>> = established.iter().map(|f| tagged(f, 100)).collect();
    let other = frames(TCP_ACK, Ipv4Addr::new(198, 18, 100, 9), 1024);
    let router = Ipv4Addr::new(198, 18, 0, 254);
    let icmp: Vec<Vec<u8>> = (0..1024)
        .map(|i| frag_needed_v4(router, (VIP, 443), (CLIENT, 10_000 + i), 1400))
        .collect();
    // One byte over what the 1500-byte MTU carries once encapsulated.
    let too_big: Vec<Vec<u8>> = (0..1024)
        .map(|i| tcp_v4_with_payload(CLIENT, 10_000 + i, VIP, 443, TCP_ACK, 1441))
        .collect();
    // New flows when the connection table is full: four times as many distinct clients as the
    // table holds fill it (twice would leave 1% of the buckets with room: a bucket's share is
    // Poisson), then each SYN measured is of a client never seen, which evicts another.
    let fill = 4 * CONN_TABLE_SIZE as usize;
    let fresh = options.rounds * options.calls;
    let clients = u32::try_from(fill + fresh).map_err(|_| {
        BenchError::Unexpected(format!("{} full-table frames are too many", fill + fresh))
    })?;
    let full_table_syn: Vec<Vec<u8>> = (FLOOD_BASE..)
        .take(clients as usize)
        .map(|client| tcp_v4(Ipv4Addr::from(client), 40_000, VIP, 443, TCP_SYN))
        .collect();
    // Put the established flows in the connection table.
    let balancer = bench.balancer.program()?;
    time_runs(balancer, &established, 0, established.len(), None, XDP_TX)?;
    let case = |case, frames, action, static_next_hop, capture| CostCase {
        case,
        prefill: 0,
        frames,
        action,
        static_next_hop,
        capture,
    };
    let cases = [
        case(SYN_CASE, &syn, XDP_TX, true, Capture::Off),
        case(ESTABLISHED_CASE, &established, XDP_TX, true, Capture::Off),
        case(
            "established flow, 802.1Q-tagged",
            &tagged_established,
            XDP_TX,
            true,
            Capture::Off,
        ),
        case(
            "established flow, FIB next hop",
            &established,
            XDP_TX,
            false,
            Capture::Off,
        ),
        case(
            "ICMP too big, to the flow backend",
            &icmp,
            XDP_TX,
            true,
            Capture::Off,
        ),
        case(
            "client packet too big: ICMP answer",
            &too_big,
            XDP_TX,
            true,
            Capture::Off,
        ),
        case("packet for no VIP", &other, XDP_PASS, true, Capture::Off),
        case(
            "established, capture recording each",
            &established,
            XDP_TX,
            true,
            Capture::Every,
        ),
        case(
            "established, capture matching none",
            &established,
            XDP_TX,
            true,
            Capture::None,
        ),
        // Last: filling the table evicts the other cases' flows.
        CostCase {
            prefill: fill,
            ..case(FULL_TABLE_CASE, &full_table_syn, XDP_TX, true, Capture::Off)
        },
    ];
    let mut rows = Vec::new();
    for CostCase {
        case,
        frames,
        prefill,
        action,
        static_next_hop,
        capture,
    } in cases
    {
        bench.set_static_next_hop(static_next_hop)?;
        let drainer = bench.set_capture(capture)?;
        let ingress = Some(bench.ingress);
        let evicted_before = if prefill > 0 {
            let program = bench.balancer.program()?;
            time_runs(program, frames, 0, prefill, ingress, action)?;
            Some(bench.evictions()?)
        } else {
            None
        };
        // Each round goes on where the last stopped, so a frame comes back only after all
        // the others.
        let mut next = prefill;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..options.rounds {
            for first in [round % 2 == 0, round % 2 == 1] {
                if first {
                    let program = bench.balancer.program()?;
                    ours.push(time_runs(
                        program,
                        frames,
                        next,
                        options.calls,
                        ingress,
                        action,
                    )?);
                } else {
                    let program = bench.aux.program(Aux::TX_BASELINE)?;
                    let ns = time_runs(program, frames, next, options.calls, ingress, XDP_TX)?;
                    theirs.push(ns);
                }
            }
            next += options.calls;
        }
        if let Some(before) = evicted_before {
            let (evicted, runs) = (bench.evictions()? - before, options.rounds * options.calls);
            if evicted != runs as u64 {
                return Err(BenchError::Unexpected(format!(
                    "{case}: {evicted} of the {runs} SYNs measured evicted a flow: the table \
                     was not full, and the case measured something else"
                )));
            }
        }
        bench.set_capture(Capture::Off)?;
        if let Some(drainer) = drainer {
            let (ring, records) = drainer.stop()?;
            bench.ring = Some(ring);
            let summary = bench.capture.summary()?;
            let expected = if capture == Capture::Every {
                (options.rounds * options.calls) as u64
            } else {
                0
            };
            if summary.matched != expected {
                return Err(BenchError::Unexpected(format!(
                    "{case}: the capture matched {} packets, not {expected}",
                    summary.matched
                )));
            }
            tracing::debug!(case, records, lost = summary.ring_full, "capture case");
        }
        let differences: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a - b).collect();
        rows.push(CostRow {
            case,
            balancer: Spread::of(&ours),
            baseline: Spread::of(&theirs),
            difference: Spread::of(&differences),
            target: COST_TARGETS
                .iter()
                .find(|(name, _)| *name == case)
                .map(|(_, target)| *target),
        });
    }
    bench.set_static_next_hop(true)?;
    Ok(rows)
}

/// Mean nanoseconds per run of `calls` single test runs over `frames` in turn, from frame
/// `first` on, checking that each run ends in `action`.
fn time_runs(
    program: &Xdp,
    frames: &[Vec<u8>],
    first: usize,
    calls: usize,
    ingress: Option<u32>,
    action: u32,
) -> Result<f64, BenchError> {
    let mut total = Duration::ZERO;
    for i in 0..calls {
        let frame = &frames[(first + i) % frames.len()];
        let result = run_frame(program, frame, ingress).map_err(|source| BenchError::TestRun {
            program: "per-packet run",
            source,
        })?;
        if result.action != action {
            return Err(BenchError::Unexpected(format!(
                "a benchmark frame ended in XDP action {} instead of {action}",
                result.action
            )));
        }
        total += result.duration;
    }
    Ok(nanos(total) / calls as f64)
}

fn measure_rates(
    bench: &mut Bench,
    options: Options,
) -> Result<(RateRow, Vec<RateRow>), BenchError> {
    let frame = tcp_v4(CLIENT, 10_000, VIP, 443, TCP_ACK);
    set_sink_flows(&mut bench.aux, options.flows)?;
    let cases: [(&'static str, Option<bool>); 3] = [
        ("trivial XDP_TX (MAC swap)", None),
        ("balancer, static next hop", Some(true)),
        ("balancer, FIB next hop", Some(false)),
    ];
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); cases.len()];
    for round in 0..options.rounds {
        // Alternate: baseline first in even rounds, last in odd ones.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (_, static_next_hop) = cases[i];
            if let Some(on) = static_next_hop {
                bench.set_static_next_hop(on)?;
            }
            let (mpps, delivered) =
                live_rate(bench, static_next_hop.is_some(), &frame, options.frames)?;
            samples[i].0.push(mpps);
            samples[i].1.push(delivered);
        }
    }
    bench.set_static_next_hop(true)?;
    let baseline_mpps = samples[0].0.clone();
    let mut rows: Vec<RateRow> = cases
        .iter()
        .zip(samples)
        .enumerate()
        .map(|(i, ((case, _), (mpps, delivered)))| {
            let ratios: Vec<f64> = mpps
                .iter()
                .zip(&baseline_mpps)
                .map(|(a, b)| a / b)
                .collect();
            RateRow {
                case,
                mpps: Spread::of(&mpps),
                ratio: (i > 0).then(|| Spread::of(&ratios)),
                delivered: Spread::of(&delivered).min,
                target: (i > 0).then(|| rate_target(options.flows)).flatten(),
            }
        })
        .collect();
    let baseline = rows.remove(0);
    Ok((baseline, rows))
}

/// One live-frame round: million frames per second the sink received, and the fraction of
/// generated frames it received.
fn live_rate(
    bench: &mut Bench,
    balancer: bool,
    frame: &[u8],
    frames: u32,
) -> Result<(f64, f64), BenchError> {
    let before = sink_packets(&bench.aux)?;
    let ctx = xdp_md(bench.ingress, frame.len());
    let program = if balancer {
        bench.balancer.program()?
    } else {
        bench.aux.program(Aux::TX_BASELINE)?
    };
    let start = Instant::now();
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .map_err(|source| BenchError::TestRun {
            program: "live frames",
            source,
        })?;
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(20));
    let received = sink_packets(&bench.aux)? - before;
    Ok((
        received as f64 / elapsed.as_secs_f64() / 1e6,
        received as f64 / f64::from(frames),
    ))
}

/// Makes the sink hand out `flows` source ports in turn (rounded up to a power of two).
fn set_sink_flows(aux: &mut Aux, flows: u32) -> Result<(), BenchError> {
    let map_error = |source| crate::datapath::DatapathError::Map {
        map: "lb_sink_cnt",
        source,
    };
    let map = aux
        .ebpf
        .map_mut("lb_sink_cnt")
        .ok_or_else(|| BenchError::Unexpected("the sink's counter map is missing".to_owned()))?;
    let mut counters = PerCpuArray::<_, u64>::try_from(map).map_err(map_error)?;
    let mask = u64::from(flows.clamp(1, 65_536).next_power_of_two() - 1);
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| BenchError::Unexpected(e.to_string()))?;
    let values = aya::maps::PerCpuValues::try_from(vec![mask; cpus])
        .map_err(|e| BenchError::Unexpected(e.to_string()))?;
    counters.set(3, values, 0).map_err(map_error)?;
    Ok(())
}

fn sink_packets(aux: &Aux) -> Result<u64, BenchError> {
    let map = aux
        .ebpf
        .map("lb_sink_cnt")
        .ok_or_else(|| BenchError::Unexpected("the sink's counter map is missing".to_owned()))?;
    let counters = PerCpuArray::<_, u64>::try_from(map).map_err(|source| {
        crate::datapath::DatapathError::Map {
            map: "lb_sink_cnt",
            source,
        }
    })?;
    let packets = counters
        .get(&0, 0)
        .map_err(|source| crate::datapath::DatapathError::Map {
            map: "lb_sink_cnt",
            source,
        })?;
    Ok(packets.iter().sum())
}

/// Pins the calling thread to the last CPU; returns it.
fn pin_to_last_cpu() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cpu = cpus - 1;
    if let Err(error) = super::pin_current_thread(cpu) {
        tracing::warn!(%error, "could not pin the benchmark to CPU {cpu}; figures will be noisier");
    }
    cpu
}

impl Report {
    /// The report as two charts in `dir`: `xdp-cost.svg` (ns per packet, balancer and trivial
    /// program, per case) and `xdp-rate.svg` (Mpps of live frames, per case, beside the
    /// trivial program's).
    pub fn write_charts(
        &self,
        dir: &std::path::Path,
    ) -> Result<Vec<std::path::PathBuf>, BenchError> {
        use super::chart::{Bars, Group};
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let cost = dir.join("xdp-cost.svg");
        Bars {
            title: "Per-packet cost (BPF_PROG_TEST_RUN)",
            unit: "ns per packet",
            series: &["lb balancer", "trivial XDP_TX"],
            groups: self
                .costs
                .iter()
                .map(|row| Group {
                    label: row.case,
                    bars: vec![Some(row.balancer), Some(row.baseline)],
                })
                .collect(),
        }
        .write(&cost)?;
        let Some(baseline_rate) = &self.baseline_rate else {
            return Ok(vec![cost]);
        };
        let rate = dir.join("xdp-rate.svg");
        let title = format!("Forwarding rate, live frames, {} flows", self.flows);
        Bars {
            title: &title,
            unit: "million packets per second",
            series: &["lb balancer", "trivial program"],
            groups: self
                .rates
                .iter()
                .map(|row| Group {
                    label: row.case,
                    bars: vec![Some(row.mpps), Some(baseline_rate.mpps)],
                })
                .collect(),
        }
        .write(&rate)?;
        Ok(vec![cost, rate])
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Per-packet cost through BPF_PROG_TEST_RUN (ns per packet; median [min-max] of \
             rounds; CPU {})",
            self.cpu
        )?;
        writeln!(
            f,
            "  {:34} {:>20} {:>20} {:>22}   target",
            "case", "balancer", "trivial XDP_TX", "difference (paired)"
        )?;
        for row in &self.costs {
            let target = row
                .target
                .map(|target| {
                    let met = verdict(row.difference.median <= target);
                    format!("   <= +{target:.0} {met}")
                })
                .unwrap_or_default();
            writeln!(
                f,
                "  {:34} {:>20} {:>20} {:>22}{target}",
                row.case,
                row.balancer.to_string(),
                row.baseline.to_string(),
                row.difference.to_string(),
            )?;
        }
        writeln!(f)?;
        let Some(base) = &self.baseline_rate else {
            return writeln!(
                f,
                "Forwarding rate with live frames: not measured (--frames 0)"
            );
        };
        writeln!(
            f,
            "Forwarding rate, live frames out of a veth to a counting XDP sink, {} flows \
             (Mpps; median [min-max])",
            self.flows
        )?;
        writeln!(
            f,
            "  {:34} {:>20}   delivered {:.3}",
            base.case,
            base.mpps.to_string(),
            base.delivered
        )?;
        for row in &self.rates {
            let ratio = row.ratio.unwrap_or(Spread::of(&[f64::NAN]));
            let target = row
                .target
                .map(|target| {
                    let met = verdict(ratio.median >= target);
                    format!("   target >= {target:.2} {met}")
                })
                .unwrap_or_default();
            writeln!(
                f,
                "  {:34} {:>20}   delivered {:.3}   ratio {:.2} [{:.2}-{:.2}]{target}",
                row.case,
                row.mpps.to_string(),
                row.delivered,
                ratio.median,
                ratio.min,
                ratio.max
            )?;
        }
        Ok(())
    }
}
