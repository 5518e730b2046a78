//! HTTP/2 load with `h2load` (nghttp2): one thread on the generators' CPU, N connections of M
//! concurrent streams each, for a duration. Its report gives the requests per second, the
//! failures and each connection's rate (how evenly the server serves its connections); the
//! latency percentiles come from its per-request log, which it writes on request.

use std::{io::Read as _, path::Path, process::Stdio, time::Duration};

use super::process::{Child, pinned};
use crate::bench::BenchError;

/// A load's shape: connections, and streams each keeps in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    pub connections: usize,
    pub streams: usize,
}

/// The shapes measured: multiplexed, one stream a connection, many multiplexed connections,
/// and 1 000 concurrent connections.
pub const SHAPES: [Shape; 4] = [
    Shape {
        connections: 32,
        streams: 10,
    },
    Shape {
        connections: 32,
        streams: 1,
    },
    Shape {
        connections: 200,
        streams: 10,
    },
    Shape {
        connections: 1000,
        streams: 1,
    },
];

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {}", self.connections, self.streams)
    }
}

/// What one `h2load` run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct H2Run {
    /// Requests that succeeded.
    pub requests: u64,
    /// Seconds of the measurement (h2load's own clock).
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Latency percentiles of the requests, in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests that failed: errored, timed out, or answered 4xx or 5xx (h2load counts each
    /// of these as failed).
    pub errors: u64,
    /// The slowest and the fastest connection's requests per second.
    pub connection_min: f64,
    pub connection_max: f64,
}

/// Runs `h2load -t1 -cN -mM --npn-list=h2 --warm-up-time=W -D secs --log-file LOG URL` pinned
/// to `cpu` (HTTP/2 only: a server that would not take it fails the run, rather than give
/// HTTP/1.1 figures under an HTTP/2 name; the connections are made during the warm-up, which
/// is not measured), and reads its report and log (`log` is removed first: h2load appends to
/// it). `measuring` is called once the warm-up is over, to start the caller's own clocks.
pub fn run(
    url: &str,
    shape: Shape,
    (warmup, duration): (Duration, Duration),
    cpu: usize,
    log: &Path,
    measuring: impl FnOnce() -> Result<(), BenchError>,
) -> Result<H2Run, BenchError> {
    let warmup = Duration::from_secs(warmup.as_secs().max(1));
    match std::fs::remove_file(log) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(BenchError::Io {
                what: format!("removing h2load's last log {}", log.display()),
                source: error,
            });
        }
        _ => {}
    }
    let mut command = pinned(cpu, "h2load");
    command
        .arg("-t1")
        .arg(format!("-c{}", shape.connections))
        .arg(format!("-m{}", shape.streams))
        .arg("--npn-list=h2")
        .arg(format!("--warm-up-time={}", warmup.as_secs()))
        .arg("-D")
        .arg(duration.as_secs().max(1).to_string())
        .arg("--log-file")
        .arg(log)
        .arg(url)
        .stdout(Stdio::piped())
        // What it says of each client that failed is in the report's counts: its messages
        // could fill a pipe no one reads.
        .stderr(Stdio::null());
    let mut child = Child::spawn("h2load", &mut command)?;
    let mut stdout = child.take_stdout()?;
    std::thread::sleep(warmup);
    measuring()?;
    let mut text = String::new();
    stdout
        .read_to_string(&mut text)
        .map_err(|source| BenchError::Io {
            what: "reading h2load's report".to_owned(),
            source,
        })?;
    let status = child.wait()?;
    if !status.success() {
        return Err(BenchError::Unexpected(format!(
            "`{command:?}` failed ({status}):\n{text}"
        )));
    }
    if !text.contains("Application protocol: h2") {
        return Err(BenchError::Unexpected(format!(
            "`{command:?}` did not speak HTTP/2:\n{text}"
        )));
    }
    let mut run = parse(&text).ok_or_else(|| {
        BenchError::Unexpected(format!(
            "could not read h2load's report of `{command:?}`:\n{text}"
        ))
    })?;
    let latencies = std::fs::read_to_string(log).map_err(|source| BenchError::Io {
        what: format!("reading h2load's log {}", log.display()),
        source,
    })?;
    let (p50, p99) = percentiles(&latencies).ok_or_else(|| {
        BenchError::Unexpected(format!(
            "h2load's log {} of `{command:?}` holds no request",
            log.display()
        ))
    })?;
    (run.p50_ms, run.p99_ms) = (p50, p99);
    Ok(run)
}

/// Reads h2load's report: `finished in Ts, R req/s`, the `requests:` line, and the
/// per-connection `req/s` line (min, max, ...).
pub fn parse(text: &str) -> Option<H2Run> {
    let mut run = H2Run::default();
    let (mut has_rate, mut has_requests, mut has_connections) = (false, false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            ["finished", "in", seconds, rate, "req/s", ..] => {
                run.seconds = seconds.strip_suffix('s')?.parse().ok()?;
                run.requests_per_second = rate.parse().ok()?;
                has_rate = true;
            }
            ["requests:", rest @ ..] => {
                let count = |what: &str| -> Option<u64> {
                    let at = rest.iter().position(|w| *w == what)?;
                    rest.get(at.checked_sub(1)?)?.parse().ok()
                };
                run.requests = count("succeeded")?;
                run.errors = count("failed")?;
                has_requests = true;
            }
            ["req/s", ":", min, max, ..] => {
                run.connection_min = min.parse().ok()?;
                run.connection_max = max.parse().ok()?;
                has_connections = true;
            }
            _ => {}
        }
    }
    (has_rate && has_requests && has_connections).then_some(run)
}

/// The 50th and 99th percentiles, in milliseconds, of the durations of the 2xx answers in
/// h2load's log (a line a request: start time, status, duration in microseconds,
/// tab-separated; a failed stream's status is -1).
pub fn percentiles(log: &str) -> Option<(f64, f64)> {
    let mut micros: Vec<u64> = log
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let status: i32 = fields.nth(1)?.trim().parse().ok()?;
            let micros = fields.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(micros)
        })
        .collect();
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    // The nearest rank: the smallest value with at least `percent`% of them at or below it.
    let at = |percent: usize| {
        let rank = (micros.len() * percent).div_ceil(100);
        micros[rank.clamp(1, micros.len()) - 1] as f64 / 1e3
    };
    Some((at(50), at(99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
starting benchmark...
spawning thread #0: 32 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 26139.20 req/s, 2.52MB/s
requests: 130696 total, 131016 started, 130696 done, 130690 succeeded, 6 failed, 1 errored, 1 timeout
status codes: 130690 2xx, 0 3xx, 2 4xx, 3 5xx
traffic: 12.59MB (13200626) total, 1.02MB (1070542) headers (space savings 93.10%), 9.97MB (10454880) data
                     min         max         mean         sd        +/- sd
time for request:      227us      7.71ms      1.21ms       424us    71.49%
time for connect:     1.30ms      4.82ms      3.20ms      1.00ms    62.50%
time to 1st byte:     4.93ms      6.20ms      5.57ms       388us    56.25%
req/s           :     805.51      828.21      816.85        5.51    68.75%
";

    #[test]
    fn a_report_is_read_whole() {
        let run = parse(REPORT).unwrap();
        assert!((run.seconds - 5.0).abs() < 1e-9);
        assert!((run.requests_per_second - 26_139.2).abs() < 1e-9);
        assert_eq!(run.requests, 130_690);
        // 2 4xx, 3 5xx and 1 stream that errored (timed out): 6 failed.
        assert_eq!(run.errors, 6);
        assert!((run.connection_min - 805.51).abs() < 1e-9);
        assert!((run.connection_max - 828.21).abs() < 1e-9);
    }

    #[test]
    fn a_report_without_its_per_connection_rates_is_refused() {
        let cut: String = REPORT
            .lines()
            .filter(|l| !l.starts_with("req/s"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&cut), None);
    }

    #[test]
    fn percentiles_are_read_from_the_log() {
        let log: String = (1..=100)
            .map(|i| format!("1700000000{i:06}\t200\t{}\n", i * 10))
            .collect();
        assert_eq!(percentiles(&log), Some((0.5, 0.99)));
        let failed = format!("{log}1700000000999999\t-1\t900000\n1700000000999999\t503\t900000\n");
        assert_eq!(
            percentiles(&failed),
            Some((0.5, 0.99)),
            "failures are not latencies"
        );
        assert_eq!(percentiles("not\ta log\n"), None);
    }
}
