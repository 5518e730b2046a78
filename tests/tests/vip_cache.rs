//! The per-CPU VIP cache under change. Each CPU caches VIP lookups under the VIP epoch it read;
//! userspace writes the VIP map, then moves the epoch. A CPU that read the epoch twice (once to
//! compare, once to store) could store an old answer under the new epoch and keep it forever.
//!
//! Frames run through the balancer on every CPU while userspace flips VIP entries (listeners
//! added and removed) and their tables; after every flip, every cache entry stored under the
//! current epoch must agree with the VIP map (a stale one would stay until the next change).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb::{
    datapath::{Datapath as _, maps::AyaDatapath},
    reconcile::Reconciler,
    state::Protocol,
};
use lb_common::abi::{VipKey, VipValue};
use lb_tests::{fixture::*, harness::*, packet::*};

/// How long userspace flips while the CPUs run frames.
const FLIPPING: Duration = Duration::from_secs(3);

#[test]
fn no_cpu_keeps_a_stale_vip_while_vips_and_tables_flip() {
    let harness = Harness::new(static_config(251, 0x5eed, MTU));
    let Harness {
        mut balancer,
        mut reconciler,
    } = harness;
    // Two states: ports 1-8 to one backend; ports 1-4 and 9-12 to two others.
    let set_a: Vec<_> = (1..=8)
        .map(|port| {
            listener(
                &format!("p{port}"),
                VIP4,
                port,
                Protocol::Tcp,
                &["198.18.1.10"],
            )
        })
        .collect();
    let set_b: Vec<_> = (1..=4)
        .chain(9..=12)
        .map(|port| {
            listener(
                &format!("p{port}"),
                VIP4,
                port,
                Protocol::Tcp,
                &["198.18.1.11", "198.18.1.12"],
            )
        })
        .collect();
    reconciler.apply(&set_a).unwrap();
    let frames: Vec<Vec<u8>> = (1..=16)
        .map(|port| frame(&flow(CLIENT4, VIP4, 40_000, port, TCP), Tcp::Ack, b"x"))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let program = &*balancer.program().unwrap();
    let stop = AtomicBool::new(false);
    let (flips, runs) = std::thread::scope(|scope| {
        let runners: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (frames, stop) = (&frames, &stop);
                scope.spawn(move || {
                    lb::bench::pin_current_thread(cpu).unwrap();
                    let mut runs = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for frame in frames {
                            lb::loader::run_frame(program, frame, None).unwrap();
                            runs += 1;
                        }
                    }
                    runs
                })
            })
            .collect();
        let started = Instant::now();
        let mut flips = 0u64;
        let mut checked = 0;
        let mut disagreeing = Vec::new();
        while started.elapsed() < FLIPPING {
            let next = if flips.is_multiple_of(2) {
                &set_b
            } else {
                &set_a
            };
            reconciler.apply(next).unwrap();
            flips += 1;
            let (current, stale) = check_caches(&reconciler);
            checked += current;
            disagreeing.extend(stale.into_iter().map(|s| (flips, s)));
        }
        stop.store(true, Ordering::Relaxed);
        let runs: u64 = runners.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(checked > 0, "no entry of a current epoch to check");
        assert!(
            disagreeing.is_empty(),
            "{} cache entries disagreed with the VIP map of their epoch, e.g. (flip, (cpu, key, cached, map)) {:?}",
            disagreeing.len(),
            disagreeing.first()
        );
        (flips, runs)
    });
    assert!(flips > 100, "only {flips} flips");
    assert!(runs > 10_000, "only {runs} frames");
}

/// A stale cache entry: the CPU, the key, what it caches and what the map holds.
type Stale = (usize, VipKey, Option<VipValue>, Option<VipValue>);

/// The entries of every CPU's cache stored under the current epoch, and those of them that
/// disagree with the VIP map.
///
/// The caches are read twice and only entries that read the same both times are judged: a
/// CPU may be rewriting a slot while userspace copies it (two keys that share a slot take
/// turns), and such a torn copy mixes two entries. A stale entry stays put, so it reads the
/// same twice and is still caught.
fn check_caches(reconciler: &Reconciler<AyaDatapath>) -> (usize, Vec<Stale>) {
    let datapath = reconciler.datapath();
    let epoch = datapath.vip_epoch();
    let vips: BTreeMap<VipKey, VipValue> = datapath.read_vips().unwrap().into_iter().collect();
    let first = datapath.vip_cache().unwrap();
    let second = datapath.vip_cache().unwrap();
    let mut current = 0;
    let mut disagreeing = Vec::new();
    for (cpu, (a, b)) in first.iter().zip(&second).enumerate() {
        let steady = a.iter().zip(b).filter(|(a, b)| a == b).map(|(a, _)| a);
        for entry in steady.filter(|e| e.epoch == epoch) {
            current += 1;
            let truth = vips.get(&entry.key);
            let cached = (entry.found != 0).then_some(&entry.value);
            if truth != cached {
                disagreeing.push((cpu, entry.key, cached.copied(), truth.copied()));
            }
        }
    }
    (current, disagreeing)
}
