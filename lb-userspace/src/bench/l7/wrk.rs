//! Keep-alive load with `wrk`: one thread on the generators' CPU, N connections kept alive for
//! the whole run, and its report parsed into requests per second and latency percentiles.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::Duration,
};

use super::process::{Child, pinned};
use crate::bench::BenchError;

/// What one `wrk` run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkRun {
    /// Requests completed.
    pub requests: u64,
    /// Seconds the requests were counted over (wrk's own clock).
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Latency percentiles, in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) and responses other than 2xx or 3xx.
    pub errors: u64,
}

/// A `wrk` load: where, how many connections, how long, and an extra header.
#[derive(Clone, Debug)]
pub struct Load<'a> {
    pub url: &'a str,
    pub connections: usize,
    pub duration: Duration,
    pub header: Option<&'a str>,
    pub cpu: usize,
}

/// Runs `wrk -t1 -cN -dD --latency URL` pinned to `load.cpu` and parses what it printed.
pub fn run(load: &Load<'_>) -> Result<WrkRun, BenchError> {
    let mut command = wrk_command(load);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Child::spawn("wrk", &mut command)?;
    let mut stdout = child.take_stdout()?;
    let status = child.wait()?;
    let mut text = String::new();
    stdout
        .read_to_string(&mut text)
        .map_err(|source| BenchError::Io {
            what: "reading wrk's report".to_owned(),
            source,
        })?;
    if !status.success() {
        return Err(BenchError::Unexpected(format!(
            "`{command:?}` failed ({status}):\n{text}"
        )));
    }
    parse(&text).ok_or_else(|| {
        BenchError::Unexpected(format!(
            "could not read wrk's report of `{command:?}`:\n{text}"
        ))
    })
}

fn wrk_command(load: &Load<'_>) -> Command {
    let mut command = pinned(load.cpu, "wrk");
    command
        .arg("-t1")
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--latency");
    if let Some(header) = load.header {
        command.arg("-H").arg(header);
    }
    command.arg(load.url);
    command
}

/// Reads wrk's report: `N requests in Ts`, the 50% and 99% lines of the latency
/// distribution, `Requests/sec:`, socket errors and non-2xx/3xx responses.
pub fn parse(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let (mut has_count, mut has_p50, mut has_p99, mut has_rate) = (false, false, false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => {
                run.p50_ms = millis(value)?;
                has_p50 = true;
            }
            ["99%", value] => {
                run.p99_ms = millis(value)?;
                has_p99 = true;
            }
            ["Requests/sec:", value] => {
                run.requests_per_second = value.parse().ok()?;
                has_rate = true;
            }
            [count, "requests", "in", seconds, ..] => {
                run.requests = count.parse().ok()?;
                run.seconds = millis(seconds.trim_end_matches(','))? / 1e3;
                has_count = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (has_count && has_p50 && has_p99 && has_rate).then_some(run)
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.50m`) in milliseconds.
fn millis(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 5s test @ https://127.0.0.1:40001/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21ms  300.12us   9.87ms   90.00%
    Req/Sec    26.51k     1.02k   28.00k    80.00%
  Latency Distribution
     50%  812.00us
     75%    1.30ms
     90%    1.60ms
     99%    2.05ms
  131920 requests in 5.00s, 16.23MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  26381.17
Transfer/sec:      3.25MB
";

    #[test]
    fn a_report_is_read_whole() {
        let run = parse(REPORT).unwrap();
        assert_eq!(run.requests, 131_920);
        assert!((run.seconds - 5.0).abs() < 1e-9);
        assert!((run.requests_per_second - 26_381.17).abs() < 1e-9);
        assert!((run.p50_ms - 0.812).abs() < 1e-9);
        assert!((run.p99_ms - 2.05).abs() < 1e-9);
        assert_eq!(run.errors, 7);
    }

    #[test]
    fn a_report_without_a_latency_distribution_is_refused() {
        let cut: String = REPORT
            .lines()
            .filter(|l| !l.contains('%') || l.contains("Stdev"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&cut), None);
        assert_eq!(millis("2.5s"), Some(2500.0));
        assert_eq!(millis("7parsecs"), None);
    }
}
