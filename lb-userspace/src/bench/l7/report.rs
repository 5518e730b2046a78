//! The L7 benchmark's figures: samples per round in, medians with minimum and maximum out,
//! ratios paired by round (lb over HAProxy, sticky over plain offload, lb over the direct
//! floor), and the conditions of the run (CPUs, load, versions), printed as text tables.

use std::fmt::{self, Display};

use super::{
    Keepalive, Offload, Options,
    h2load::{H2Run, Shape},
    handshake::HandshakeRun,
    idle::{IdleRow, Server},
    wrk::WrkRun,
};
use crate::bench::Spread;

/// One keep-alive run.
#[derive(Clone, Debug)]
pub struct KeepaliveSample {
    pub run: WrkRun,
    /// CPU-µs the proxy used per request (none for direct requests).
    pub proxy_cpu_us: Option<f64>,
    /// CPU-µs the backend used per request.
    pub backend_cpu_us: f64,
    /// wrk's CPU time over the run's time (1.0: its CPU saturated).
    pub generator_busy: f64,
}

/// One handshake run.
#[derive(Clone, Debug)]
pub struct HandshakeSample {
    pub run: HandshakeRun,
    /// CPU-µs the server used per handshake.
    pub cpu_us: f64,
    /// The server's CPU time over the run's wall time (1.0: one CPU saturated).
    pub busy: f64,
    /// The generator's likewise.
    pub generator_busy: f64,
}

/// One h2load run.
#[derive(Clone, Debug)]
pub struct H2Sample {
    pub run: H2Run,
    /// CPU-µs the server used per request.
    pub proxy_cpu_us: f64,
    /// h2load's CPU time over the run's time.
    pub generator_busy: f64,
}

/// One system's figures under one HTTP/2 load.
#[derive(Clone, Debug, serde::Serialize)]
pub struct H2Row {
    pub shape: Shape,
    pub system: Offload,
    pub requests_per_second: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub proxy_cpu_us: Spread,
    /// The slowest and the fastest connection's requests per second.
    pub connection_min: Spread,
    pub connection_max: Spread,
    pub generator_busy: Spread,
    /// Over all rounds.
    pub errors: u64,
}

/// One system's keep-alive figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeepaliveRow {
    pub system: Keepalive,
    pub requests_per_second: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub proxy_cpu_us: Option<Spread>,
    pub backend_cpu_us: Spread,
    pub generator_busy: Spread,
    /// Over all rounds.
    pub errors: u64,
}

/// One system's handshake figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HandshakeRow {
    pub system: Offload,
    pub per_second: Spread,
    pub cpu_us: Spread,
    pub busy: Spread,
    pub generator_busy: Spread,
    /// Over all rounds.
    pub failures: u64,
    pub negotiated: String,
}

/// A ratio of two systems' figures, paired by round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ratio {
    pub what: String,
    pub ratio: Spread,
}

/// How the figures were obtained.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Conditions {
    pub options: Options,
    pub generator_cpu: usize,
    pub server_cpu: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub lb: String,
    pub haproxy: String,
    pub openssl: String,
    pub wrk: String,
}

impl Conditions {
    /// Reads the machine's and the tools' descriptions (each "unknown" if it cannot be read).
    pub fn read(options: Options, generator_cpu: usize, server_cpu: usize) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok();
        let haproxy_vv = output("haproxy", &["-vv"]);
        let haproxy = haproxy_vv
            .as_deref()
            .and_then(|t| t.lines().next())
            .map(str::to_owned);
        let openssl = haproxy_vv.as_deref().and_then(|t| {
            t.lines()
                .find_map(|l| l.trim().strip_prefix("Running on OpenSSL version :"))
                .map(|v| format!("OpenSSL {}", v.trim().trim_start_matches("OpenSSL ")))
        });
        let wrk = output("wrk", &["-v"]).and_then(|t| t.lines().next().map(str::to_owned));
        let unknown =
            |v: Option<String>| v.map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned());
        Self {
            options,
            generator_cpu,
            server_cpu,
            cpu_model: unknown(cpu_model),
            kernel: unknown(kernel),
            lb: format!(
                "lb {} (rustls 0.23 with ring, hyper 1, tokio)",
                env!("CARGO_PKG_VERSION")
            ),
            haproxy: unknown(haproxy),
            openssl: unknown(openssl),
            wrk: unknown(wrk),
        }
    }
}

/// A tool's stdout and stderr, whatever its exit status (`wrk -v` exits 1).
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text)
}

/// Everything `lb bench l7` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub conditions: Conditions,
    pub keepalive: Vec<KeepaliveRow>,
    pub handshakes: Vec<HandshakeRow>,
    /// By shape, then system (empty without the HTTP/2 measurement).
    pub http2: Vec<H2Row>,
    pub ratios: Vec<Ratio>,
    /// Memory per idle connection (empty with `--idle 0`).
    pub idle: Vec<IdleRow>,
}

/// The most resident memory an idle lb connection may hold, bytes (see the README).
const IDLE_TARGET_BYTES: f64 = 10_000.0;

impl Report {
    /// The report as two charts in `dir`: `l7-requests.svg` (requests per second) and
    /// `l7-p99.svg` (99th percentile latency), lb beside HAProxy, offload and bridging.
    pub fn write_charts(
        &self,
        dir: &std::path::Path,
    ) -> Result<Vec<std::path::PathBuf>, super::super::BenchError> {
        use super::super::chart::{Bars, Group};
        std::fs::create_dir_all(dir).map_err(|source| super::super::BenchError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let row = |system: Keepalive| self.keepalive.iter().find(|r| r.system == system);
        let pairs = [
            ("offload", Keepalive::LbOffload, Keepalive::HaproxyOffload),
            (
                "bridging",
                Keepalive::LbBridging,
                Keepalive::HaproxyBridging,
            ),
        ];
        let mut written = Vec::new();
        for (file, title, unit, figure) in [
            (
                "l7-requests.svg",
                "Keep-alive HTTPS: requests per second",
                "requests per second",
                (|r: &KeepaliveRow| r.requests_per_second) as fn(&KeepaliveRow) -> Spread,
            ),
            (
                "l7-p99.svg",
                "Keep-alive HTTPS: 99th percentile latency",
                "ms",
                |r: &KeepaliveRow| r.p99_ms,
            ),
        ] {
            let path = dir.join(file);
            Bars {
                title,
                unit,
                series: &["lb", "HAProxy"],
                groups: pairs
                    .iter()
                    .map(|(label, lb, haproxy)| Group {
                        label,
                        bars: vec![row(*lb).map(figure), row(*haproxy).map(figure)],
                    })
                    .collect(),
            }
            .write(&path)?;
            written.push(path);
        }
        Ok(written)
    }

    /// Aggregates the samples: `keepalive[i]` are `measured[i]`'s, one per round;
    /// `handshakes[i]` are [`Offload::ALL`]`[i]`'s; `http2[s][i]` are
    /// [`Offload::ALL`]`[i]`'s under `shapes[s]`.
    pub fn new(
        conditions: Conditions,
        measured: &[Keepalive],
        keepalive: &[Vec<KeepaliveSample>],
        handshakes: &[Vec<HandshakeSample>],
        shapes: &[Shape],
        http2: &[Vec<Vec<H2Sample>>],
        idle: Vec<IdleRow>,
    ) -> Self {
        let keepalive_rows = measured
            .iter()
            .zip(keepalive)
            .map(|(&system, samples)| keepalive_row(system, samples))
            .collect();
        let handshake_rows = Offload::ALL
            .iter()
            .zip(handshakes)
            .map(|(&system, samples)| handshake_row(system, samples))
            .collect();
        let mut h2_rows = Vec::new();
        let mut ratios = ratios(measured, keepalive, handshakes);
        for (&shape, systems) in shapes.iter().zip(http2) {
            for (&system, samples) in Offload::ALL.iter().zip(systems) {
                h2_rows.push(h2_row(shape, system, samples));
            }
            if let [lb, ha] = systems.as_slice() {
                ratios.push(Ratio {
                    what: format!("lb/HAProxy HTTP/2 {shape} req/s"),
                    ratio: paired(lb, ha, |s| s.run.requests_per_second),
                });
                ratios.push(Ratio {
                    what: format!("lb/HAProxy HTTP/2 {shape} p99"),
                    ratio: paired(lb, ha, |s| s.run.p99_ms),
                });
            }
        }
        Self {
            conditions,
            keepalive: keepalive_rows,
            handshakes: handshake_rows,
            http2: h2_rows,
            ratios,
            idle,
        }
    }
}

fn spread_of<T>(samples: &[T], f: impl Fn(&T) -> f64) -> Spread {
    Spread::of(&samples.iter().map(f).collect::<Vec<_>>())
}

fn keepalive_row(system: Keepalive, samples: &[KeepaliveSample]) -> KeepaliveRow {
    let proxy: Vec<f64> = samples.iter().filter_map(|s| s.proxy_cpu_us).collect();
    KeepaliveRow {
        system,
        requests_per_second: spread_of(samples, |s| s.run.requests_per_second),
        p50_ms: spread_of(samples, |s| s.run.p50_ms),
        p99_ms: spread_of(samples, |s| s.run.p99_ms),
        proxy_cpu_us: (!proxy.is_empty()).then(|| Spread::of(&proxy)),
        backend_cpu_us: spread_of(samples, |s| s.backend_cpu_us),
        generator_busy: spread_of(samples, |s| s.generator_busy),
        errors: samples.iter().map(|s| s.run.errors).sum(),
    }
}

fn h2_row(shape: Shape, system: Offload, samples: &[H2Sample]) -> H2Row {
    H2Row {
        shape,
        system,
        requests_per_second: spread_of(samples, |s| s.run.requests_per_second),
        p50_ms: spread_of(samples, |s| s.run.p50_ms),
        p99_ms: spread_of(samples, |s| s.run.p99_ms),
        proxy_cpu_us: spread_of(samples, |s| s.proxy_cpu_us),
        connection_min: spread_of(samples, |s| s.run.connection_min),
        connection_max: spread_of(samples, |s| s.run.connection_max),
        generator_busy: spread_of(samples, |s| s.generator_busy),
        errors: samples.iter().map(|s| s.run.errors).sum(),
    }
}

fn handshake_row(system: Offload, samples: &[HandshakeSample]) -> HandshakeRow {
    HandshakeRow {
        system,
        per_second: spread_of(samples, |s| s.run.per_second()),
        cpu_us: spread_of(samples, |s| s.cpu_us),
        busy: spread_of(samples, |s| s.busy),
        generator_busy: spread_of(samples, |s| s.generator_busy),
        failures: samples.iter().map(|s| s.run.failures).sum(),
        negotiated: samples
            .iter()
            .find_map(|s| s.run.negotiated.clone())
            .unwrap_or_else(|| "none".to_owned()),
    }
}

/// `a[r] / b[r]` for every round `r`, as a spread.
fn paired<T>(a: &[T], b: &[T], f: impl Fn(&T) -> f64) -> Spread {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
    Spread::of(&ratios)
}

fn ratios(
    measured: &[Keepalive],
    keepalive: &[Vec<KeepaliveSample>],
    handshakes: &[Vec<HandshakeSample>],
) -> Vec<Ratio> {
    let k = |system: Keepalive| {
        measured
            .iter()
            .position(|&s| s == system)
            .and_then(|i| keepalive.get(i))
            .map_or(&[][..], Vec::as_slice)
    };
    let rps = |s: &KeepaliveSample| s.run.requests_per_second;
    let p99 = |s: &KeepaliveSample| s.run.p99_ms;
    let cpu = |s: &KeepaliveSample| s.proxy_cpu_us.unwrap_or(f64::NAN);
    let (lb, ha) = (k(Keepalive::LbOffload), k(Keepalive::HaproxyOffload));
    let (lbb, hab) = (k(Keepalive::LbBridging), k(Keepalive::HaproxyBridging));
    let mut ratios = vec![
        Ratio {
            what: "lb/HAProxy offload req/s".to_owned(),
            ratio: paired(lb, ha, rps),
        },
        Ratio {
            what: "lb/HAProxy bridging req/s".to_owned(),
            ratio: paired(lbb, hab, rps),
        },
        Ratio {
            what: "lb/HAProxy offload p99".to_owned(),
            ratio: paired(lb, ha, p99),
        },
        Ratio {
            what: "lb/HAProxy bridging p99".to_owned(),
            ratio: paired(lbb, hab, p99),
        },
        Ratio {
            what: "lb/HAProxy offload CPU-µs/req".to_owned(),
            ratio: paired(lb, ha, cpu),
        },
        Ratio {
            what: "lb/HAProxy bridging CPU-µs/req".to_owned(),
            ratio: paired(lbb, hab, cpu),
        },
        Ratio {
            what: "sticky/offload req/s (lb)".to_owned(),
            ratio: paired(k(Keepalive::LbSticky), lb, rps),
        },
        Ratio {
            what: "access log/offload req/s (lb)".to_owned(),
            ratio: paired(k(Keepalive::LbLogged), lb, rps),
        },
        Ratio {
            what: "lb offload/direct HTTP req/s".to_owned(),
            ratio: paired(lb, k(Keepalive::Direct), rps),
        },
    ];
    let (base, baseb) = (k(Keepalive::BaseOffload), k(Keepalive::BaseBridging));
    if !base.is_empty() {
        ratios.extend([
            Ratio {
                what: "lb/base build offload req/s".to_owned(),
                ratio: paired(lb, base, rps),
            },
            Ratio {
                what: "lb/base build bridging req/s".to_owned(),
                ratio: paired(lbb, baseb, rps),
            },
            Ratio {
                what: "lb/base build offload CPU-µs/req".to_owned(),
                ratio: paired(lb, base, cpu),
            },
            Ratio {
                what: "lb/base build bridging CPU-µs/req".to_owned(),
                ratio: paired(lbb, baseb, cpu),
            },
        ]);
    }
    if let [lb, ha] = handshakes {
        ratios.push(Ratio {
            what: "lb/HAProxy handshakes/s".to_owned(),
            ratio: paired(lb, ha, |s| s.run.per_second()),
        });
        ratios.push(Ratio {
            what: "lb/HAProxy CPU-µs/handshake".to_owned(),
            ratio: paired(lb, ha, |s| s.cpu_us),
        });
    }
    ratios
}

/// `median [min-max]` with `decimals` decimals.
fn fmt_spread(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.d$} [{:.d$}-{:.d$}]",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

impl Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.conditions;
        let o = &c.options;
        writeln!(
            f,
            "Keep-alive HTTPS (wrk -t1 -c{} -d{}s --latency on CPU {}; the system and its backend \
             on CPU {}); median [min-max] of {} rounds",
            o.connections,
            o.duration.as_secs(),
            c.generator_cpu,
            c.server_cpu,
            o.rounds
        )?;
        writeln!(
            f,
            "  {:28} {:>26} {:>20} {:>20} {:>20} {:>20} {:>18} {:>6}",
            "system",
            "req/s",
            "p50 ms",
            "p99 ms",
            "proxy CPU-µs/req",
            "backend CPU-µs/req",
            "wrk CPU busy",
            "errors"
        )?;
        for row in &self.keepalive {
            let proxy = row
                .proxy_cpu_us
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| fmt_spread(s, 1));
            writeln!(
                f,
                "  {:28} {:>26} {:>20} {:>20} {:>20} {:>20} {:>18} {:>6}",
                row.system.name(),
                fmt_spread(&row.requests_per_second, 0),
                fmt_spread(&row.p50_ms, 2),
                fmt_spread(&row.p99_ms, 2),
                proxy,
                fmt_spread(&row.backend_cpu_us, 1),
                fmt_spread(&row.generator_busy, 2),
                row.errors
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Full TLS 1.3 handshakes ({} concurrent, no resumption, a new TCP connection each, \
             generator on CPU {})",
            o.connections, c.generator_cpu
        )?;
        writeln!(
            f,
            "  {:28} {:>26} {:>24} {:>18} {:>18} {:>7}  negotiated",
            "system",
            "handshakes/s",
            "server CPU-µs/handshake",
            "server CPU busy",
            "client CPU busy",
            "failed"
        )?;
        for row in &self.handshakes {
            writeln!(
                f,
                "  {:28} {:>26} {:>24} {:>18} {:>18} {:>7}  {}",
                row.system.name(),
                fmt_spread(&row.per_second, 0),
                fmt_spread(&row.cpu_us, 1),
                fmt_spread(&row.busy, 2),
                fmt_spread(&row.generator_busy, 2),
                row.failures,
                row.negotiated
            )?;
        }
        if !self.http2.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "HTTP/2 (h2load -t1 -cN -mM -D{}s on CPU {}: N connections of M concurrent streams, \
                 to the offload listeners); median [min-max] of {} rounds",
                o.duration.as_secs(),
                c.generator_cpu,
                o.rounds
            )?;
            writeln!(
                f,
                "  {:12} {:18} {:>26} {:>20} {:>22} {:>20} {:>32} {:>6}",
                "N x M",
                "system",
                "req/s",
                "p50 ms",
                "p99 ms",
                "proxy CPU-µs/req",
                "a connection's req/s, min - max",
                "errors"
            )?;
            for row in &self.http2 {
                writeln!(
                    f,
                    "  {:12} {:18} {:>26} {:>20} {:>22} {:>20} {:>32} {:>6}",
                    row.shape.to_string(),
                    row.system.name(),
                    fmt_spread(&row.requests_per_second, 0),
                    fmt_spread(&row.p50_ms, 2),
                    fmt_spread(&row.p99_ms, 2),
                    fmt_spread(&row.proxy_cpu_us, 1),
                    format!(
                        "{:.0} - {:.0}",
                        row.connection_min.median, row.connection_max.median
                    ),
                    row.errors
                )?;
            }
        }
        if let Some(first) = self.idle.first() {
            writeln!(f)?;
            writeln!(
                f,
                "Idle TLS connections ({} opened to each offload listener, one request each, \
                 then left open; a fresh server per protocol): resident memory growth",
                first.connections
            )?;
            writeln!(
                f,
                "  {:28} {:>14} {:>14} {:>16}   target",
                "server", "before MiB", "after MiB", "kB a connection"
            )?;
            for row in &self.idle {
                let bytes = row.bytes_per_connection();
                let target = match row.server {
                    Server::Lb if bytes <= IDLE_TARGET_BYTES => "<= 10 kB met",
                    Server::Lb => "<= 10 kB not met",
                    Server::Haproxy => "",
                };
                writeln!(
                    f,
                    "  {:28} {:>14.1} {:>14.1} {:>16.1}   {target}",
                    row.name(),
                    row.rss_before_kib as f64 / 1024.0,
                    row.rss_after_kib as f64 / 1024.0,
                    bytes / 1000.0
                )?;
            }
        }
        writeln!(f)?;
        writeln!(f, "Ratios, paired by round (median [min-max])")?;
        for ratio in &self.ratios {
            writeln!(f, "  {:34} {}", ratio.what, fmt_spread(&ratio.ratio, 3))?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Conditions: {}, two vCPUs (generators on one, servers on the other); kernel {}; {}; \
             {} ({}); {}; {} s of warm-up per system before the first round",
            c.cpu_model,
            c.kernel,
            c.lb,
            c.haproxy,
            c.openssl,
            c.wrk,
            o.warmup.as_secs()
        )
    }
}
