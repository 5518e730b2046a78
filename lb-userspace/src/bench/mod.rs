//! Benchmarks, printed with their baseline from the same run and the ratio (never timed
//! assertions in tests).
//!
//! - [`xdp`]: the balancer against a trivial `XDP_TX` program: nanoseconds per packet through
//!   `BPF_PROG_TEST_RUN`, and the forwarding rate with live frames out of a veth.
//! - [`l7`]: the L7 listeners (offload, offload with stickiness, bridging) against HAProxy doing
//!   the same on the same machine, and direct HTTP to the backend: keep-alive requests per
//!   second and latency, full TLS handshakes per second, CPU time per unit of work.
//! - [`scale`]: the control plane's costs as the work grows (Maglev build, health checks,
//!   `lb backend add` to live, memory with 1 M connection-table entries).

pub mod chart;
pub mod frames;
pub mod l7;
pub mod scale;
pub mod xdp;

use std::time::Duration;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    #[error(transparent)]
    Reconcile(#[from] crate::reconcile::ReconcileError),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error("BPF_PROG_TEST_RUN of {program}: {source}")]
    TestRun {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted; every process the benchmark started was stopped")]
    Interrupted,
    #[error("{0}")]
    Unexpected(String),
}

/// Median, minimum and maximum of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:6.1} [{:.1}-{:.1}]", self.median, self.min, self.max)
    }
}

/// Nanoseconds in `d`, as a float.
fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Pins the calling thread (and the threads it starts from now on) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= 8 * size_of::<libc::cpu_set_t>() {
        return Err(std::io::Error::other(format!("CPU {cpu} is out of range")));
    }
    // SAFETY: `cpu_set_t` is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is within `cpu_set_t`'s capacity (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid CPU set of the size passed; 0 means the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Resident memory of process `pid` (`VmRSS`), KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path)
        .map_err(|source| BenchError::Io {
            what: format!("reading {path}"),
            source,
        })?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Unexpected(format!("{path} has no VmRSS")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_samples() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
