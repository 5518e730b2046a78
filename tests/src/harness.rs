//! The balancer loaded for `BPF_PROG_TEST_RUN`: maps programmed through the real reconciler,
//! frames run through the real program.

use lb::{
    datapath::{RingGeometry, maps::AyaDatapath},
    loader::{Balancer, BalancerSpec},
    reconcile::Reconciler,
    state::Listener,
};
use lb_common::{
    abi::{CONFIG_F_STATIC_NEXT_HOP, DatapathConfig, Mac},
    counters::Counter,
};

use crate::packet::NEXT_HOP_MAC;

/// The XDP actions, by value.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The outer IPv4 source prefix the fixtures configure: 198.18.255.0/24.
pub const ENCAP_V4_BASE: u32 = 0xc612_ff00;
pub const ENCAP_V4_MASK: u32 = 0xff;
/// The outer IPv6 source prefix the fixtures configure: 2001:db8:ff::/112.
pub const ENCAP_V6_BASE: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
pub const ENCAP_V6_MASK: u32 = 0xffff;

/// A datapath configuration that asks the FIB for the next hop.
pub fn fib_config(ring_size: u32, hash_seed: u32, mtu: u32) -> DatapathConfig {
    DatapathConfig {
        next_hop_mac: Mac([0; 6]),
        flags: 0,
        ..static_config(ring_size, hash_seed, mtu)
    }
}

/// A datapath configuration with a static next hop, so that results do not depend on the
/// host's routes.
pub fn static_config(ring_size: u32, hash_seed: u32, mtu: u32) -> DatapathConfig {
    let v6 = ENCAP_V6_BASE;
    let word = |i: usize| u32::from_ne_bytes([v6[i], v6[i + 1], v6[i + 2], v6[i + 3]]);
    DatapathConfig {
        ring_size,
        hash_seed,
        encap_src_v4_base: ENCAP_V4_BASE,
        encap_src_v4_mask: ENCAP_V4_MASK,
        encap_src_v6_base_be: [word(0), word(4), word(8), word(12)],
        encap_src_v6_mask: ENCAP_V6_MASK,
        mtu,
        next_hop_mac: Mac(NEXT_HOP_MAC),
        flags: CONFIG_F_STATIC_NEXT_HOP,
        ..DatapathConfig::default()
    }
}

/// What the program did with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
}

/// A loaded balancer, unpinned (its maps go away with it).
pub struct Harness {
    pub balancer: Balancer,
    pub reconciler: Reconciler<AyaDatapath>,
}

impl Harness {
    pub fn new(config: DatapathConfig) -> Self {
        crate::require_root();
        let spec = BalancerSpec {
            geometry: RingGeometry {
                ring_size: config.ring_size,
                rings: 16,
            },
            conn_table_size: 1 << 16,
            pin_dir: None,
        };
        let (balancer, datapath) = Balancer::load(&spec).expect("loading the balancer");
        let reconciler = Reconciler::new(datapath, config).expect("configuring the datapath");
        Self {
            balancer,
            reconciler,
        }
    }

    pub fn apply(&mut self, listeners: &[Listener]) {
        self.reconciler
            .apply(listeners)
            .expect("applying listeners");
    }

    /// Runs one frame through the balancer.
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        self.run_on(frame, None)
    }

    /// Runs one frame through the balancer as if it arrived on interface `ingress` (of the
    /// calling thread's network namespace).
    pub fn run_on(&mut self, frame: &[u8], ingress: Option<u32>) -> Outcome {
        let program = self.balancer.program().expect("the balancer program");
        let run = lb::loader::run_frame(program, frame, ingress).expect("BPF_PROG_TEST_RUN");
        Outcome {
            action: run.action,
            frame: run.frame,
        }
    }

    /// Every counter, summed over CPUs, derived ones included.
    pub fn counters(&self) -> Vec<u64> {
        self.reconciler
            .snapshot()
            .expect("reading counters")
            .counters
    }

    /// One counter.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters()[counter.index() as usize]
    }
}

/// The decapsulation program loaded for `BPF_PROG_TEST_RUN`, accepting the given VIPs.
pub struct DecapHarness {
    pub decap: lb::loader::Decap,
}

impl DecapHarness {
    pub fn new(vips: &[std::net::IpAddr]) -> Self {
        crate::require_root();
        let mut decap = lb::loader::Decap::load(None).expect("loading the decapsulator");
        decap.set_vips(vips).expect("writing the VIPs");
        Self { decap }
    }

    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        let program = self.decap.program().expect("the decap program");
        let run = lb::loader::run_frame(program, frame, None).expect("BPF_PROG_TEST_RUN");
        Outcome {
            action: run.action,
            frame: run.frame,
        }
    }

    /// Every decapsulation counter, summed over CPUs, by index.
    pub fn counters(&self) -> Vec<u64> {
        let map = self
            .decap
            .ebpf
            .map(lb_common::maps::DECAP_COUNTERS)
            .expect("the decap counters");
        let counters: aya::maps::PerCpuArray<&aya::maps::MapData, u64> =
            aya::maps::PerCpuArray::try_from(map).expect("a per-CPU array");
        lb_common::counters::DecapCounter::ALL
            .iter()
            .map(|c| counters.get(&c.index(), 0).expect("a counter").iter().sum())
            .collect()
    }
}
