//! Shared helpers of the privileged tests: frames to feed the XDP programs, a harness that
//! loads the balancer and runs frames through it with `BPF_PROG_TEST_RUN`, and the fixtures'
//! cases and checks ([`fixture`]); for the end-to-end
//! tests of the daemon, a lab with a running `lb` daemon ([`daemon_lab`]), TLS clients and the
//! checks on what they saw ([`clients`], [`long_lived`]), the daemon's pinned tables read
//! back ([`pinned`]), and a bounded SYN flood from the lab's client ([`flood`]); for the tests
//! of health checks, drains, reloads and metrics, edits of the lab's configuration
//! ([`pool_config`]), backend states awaited with a deadline ([`backend_state`]), a switchable
//! HTTP health endpoint ([`health_endpoint`]), checks on long-lived connections' histories
//! ([`histories`]) and a scrape of the metrics endpoint ([`metrics_scrape`]); for the L7
//! listeners beside the passthrough ones, a daemon serving both on one VIP and async HTTPS
//! clients run from the client namespace ([`side_by_side`]); for several balancer nodes behind
//! an ECMP router that learns the VIPs by BGP, a daemon on every node and what each says about
//! a flow ([`scale_out`]), and HTTPS requests from chosen source ports ([`l7_visit`]).
//!
//! These tests need root (CAP_BPF, CAP_NET_ADMIN); `cargo xtask test` runs them.

#![expect(
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_debug_implementations,
    reason = "test support: it panics with a message on a broken fixture, builds small frames, \
              and its types are never printed"
)]

pub mod backend_state;
pub mod clients;
pub mod daemon_lab;
pub mod fixture;
pub mod flood;
pub mod fuzz;
pub mod harness;
pub mod health_endpoint;
pub mod histories;
pub mod l7_visit;
pub mod long_lived;
pub mod metrics_scrape;
pub mod packet;
pub mod pinned;
pub mod pool_config;
pub mod raw;
pub mod routed;
pub mod scale_out;
pub mod side_by_side;

/// Panics with a clear message unless the process runs as root.
pub fn require_root() {
    // SAFETY: `geteuid` has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged tests need root (BPF and network namespaces); run `sudo cargo xtask test`"
    );
}
