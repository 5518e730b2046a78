//! `lb bench`: the benchmarks' command line (the `lab` feature; the Debian package has none).
//! `main.rs` hands the parsed options to [`crate::bench`].

use std::{net::SocketAddr, path::PathBuf};

use clap::Subcommand;

/// `lb bench`: what to measure, and how long.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The XDP balancer against a trivial XDP_TX program (needs root).
    Xdp {
        /// Rounds per measurement, alternating balancer and baseline.
        #[arg(long, default_value_t = 5, value_parser = rounds)]
        rounds: usize,
        /// Single test runs per round for the per-packet cost.
        #[arg(long, default_value_t = 100_000)]
        calls: usize,
        /// Frames per round for the forwarding rate (0: measure the per-packet cost only).
        #[arg(long, default_value_t = 2_000_000)]
        frames: u32,
        /// Distinct flows for the forwarding rate (a power of two up to 65536).
        #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=65_536))]
        flows: u32,
        /// Also draw the results as SVG charts in DIR (xdp-cost.svg, xdp-rate.svg).
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
    },
    /// lb's L7 listeners (offload, offload with stickiness, bridging) against HAProxy doing the
    /// same, and direct HTTP to the backend: keep-alive requests per second and latency, full
    /// TLS handshakes per second, CPU time per request and handshake (needs root, two CPUs,
    /// haproxy and wrk).
    L7 {
        /// Rounds; each measures every system once, the order reversed every other round.
        #[arg(long, default_value_t = 5, value_parser = rounds)]
        rounds: usize,
        /// Load per system and round ("5s"; at least 1 s).
        #[arg(long, default_value = "5s", value_parser = load_duration)]
        duration: std::time::Duration,
        /// Load per system before the first round, not reported ("0s": none).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: std::time::Duration,
        /// Connections wrk keeps alive, and concurrent handshakes.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        connections: u32,
        /// Idle TLS connections per server and protocol for the memory measurement (0: skip
        /// it).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        idle: u32,
        /// Skip the HTTP/2 clients (h2load: 32 connections of 10 streams, 32 of 1, 200 of 10,
        /// 1 000 of 1, against lb's and HAProxy's offload listeners).
        #[arg(long)]
        no_http2: bool,
        /// Another build of lb, measured beside this one (offload and bridging) in every round,
        /// with the ratios of this build over it.
        #[arg(long, value_name = "PATH")]
        base: Option<PathBuf>,
        /// Also draw the results as SVG charts in DIR (l7-requests.svg, l7-p99.svg).
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
    },
    /// Costs as the work grows: the Maglev build for 10 to 10 000 backends; a daemon with 64
    /// listeners and 100, then 1 000 health-checked backends: health-check CPU, `lb backend
    /// add` to the new table live, memory with 1 M connection-table entries; L7 requests per
    /// second through pools of 10, 100 and 1 000 backends, lb beside HAProxy (needs root,
    /// wrk and HAProxy).
    Scale {
        /// Maglev builds per size, backend adds per daemon, and rounds of the L7 step.
        #[arg(long, default_value_t = 5, value_parser = rounds)]
        rounds: usize,
        /// How long each daemon's health-check CPU time is counted ("10s"; at least 1 s).
        #[arg(long, default_value = "10s", value_parser = load_duration)]
        window: std::time::Duration,
    },
    /// The L7 benchmark's backend process: serves the lab's HTTP backend until killed.
    #[command(hide = true)]
    L7Backend {
        #[arg(long)]
        listen: SocketAddr,
        /// Serve TLS with this certificate chain (PEM) ...
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// ... and this key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
}

/// A benchmark's rounds: 1 to 1000 (a median needs one sample at least).
fn rounds(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=1000) => Ok(n),
        _ => Err(format!("{text:?} is not a number of rounds from 1 to 1000")),
    }
}

/// How long a benchmark loads a system each round: 1 s to 1 h (`wrk` counts whole seconds).
fn load_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if duration < std::time::Duration::from_secs(1)
        || duration > std::time::Duration::from_secs(3600)
    {
        return Err(format!("{text:?} is not from 1 s to 1 h"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::Cli;

    fn bench(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["lb", "bench"].iter().chain(args))
    }

    #[test]
    fn benchmark_rounds_and_durations_are_bounded() {
        for bad in [
            &["xdp", "--rounds", "0"][..],
            &["l7", "--rounds", "0"],
            &["l7", "--rounds", "1001"],
            &["l7", "--duration", "0s"],
            &["l7", "--duration", "999ms"],
            &["l7", "--duration", "2h"],
            &["l7", "--connections", "0"],
        ] {
            assert!(bench(bad).is_err(), "lb bench {bad:?} was accepted");
        }
        for good in [
            &["xdp", "--rounds", "1"][..],
            &[
                "l7",
                "--rounds",
                "1000",
                "--duration",
                "1s",
                "--warmup",
                "0s",
            ],
        ] {
            assert!(bench(good).is_ok(), "lb bench {good:?} was refused");
        }
    }
}
