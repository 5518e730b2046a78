//! The daemon's async runtime. With one worker thread (`TOKIO_WORKER_THREADS=1`, or a host or
//! cgroup with one CPU), Tokio's current-thread scheduler: it runs woken tasks in the order they
//! were woken, so under load every client connection and HTTP/2 stream waits its turn once per
//! round. Tokio's multi-thread scheduler with one worker is not fair that way: a worker's local
//! queue holds 256 tasks, and when it overflows the older half moves to the global queue, where
//! a task waits while the local one refills, so with thousands of streams some wait many rounds
//! (`lb bench l7`'s HTTP/2 rows had a p99 two to four times HAProxy's). The price is locality:
//! the multi-thread scheduler runs a task woken by the running one next (its LIFO slot), the
//! current-thread one after every other (1 000 HTTP/2 connections took a fifth fewer requests).
//! With more workers, the multi-thread scheduler, a worker per CPU (or per
//! `TOKIO_WORKER_THREADS`).
//!
//! The current-thread runtime also runs the daemon's own future on its one thread. The work that
//! blocks for long runs on threads of its own: the controller's reloads and health checks,
//! BIRD's socket, handovers, and those of the daemon's own calls that take the L7 listeners'
//! lock (which a reload holds while it reads certificates) while the controller runs, or flush
//! the access log at the very end (up to 2 s): stopping the listeners, collecting their sockets
//! for a successor, the last flush. (Counting the connections left while draining takes the
//! lock inline: by then the controller's thread has been joined.)

use tokio::runtime::{Builder, Runtime};

/// Tokio's own variable for the number of worker threads.
pub const WORKERS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Which scheduler the daemon runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// One thread, tasks in the order they were woken.
    CurrentThread,
    /// This many workers (at least two).
    MultiThread(usize),
}

/// Why the runtime could not be chosen or started.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{WORKERS_ENV}={0:?} is not a number of threads (a whole number, at least 1)")]
    Workers(String),
    #[error("starting the async runtime: {0}")]
    Start(#[source] std::io::Error),
}

impl Scheduler {
    /// The scheduler for `workers` (the variable's value, if set) on a host with `cpus` CPUs.
    pub fn choose(workers: Option<&str>, cpus: usize) -> Result<Self, SchedulerError> {
        let count = match workers {
            None => cpus.max(1),
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(SchedulerError::Workers(text.to_owned())),
            },
        };
        Ok(if count == 1 {
            Self::CurrentThread
        } else {
            Self::MultiThread(count)
        })
    }

    /// The scheduler for this process's environment and CPUs.
    pub fn of_this_process() -> Result<Self, SchedulerError> {
        let workers = std::env::var_os(WORKERS_ENV).map(|v| v.to_string_lossy().into_owned());
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::choose(workers.as_deref(), cpus)
    }

    /// Starts the runtime.
    pub fn start(self) -> Result<Runtime, SchedulerError> {
        let mut builder = match self {
            Self::CurrentThread => Builder::new_current_thread(),
            Self::MultiThread(workers) => {
                let mut builder = Builder::new_multi_thread();
                builder.worker_threads(workers);
                builder
            }
        };
        builder.enable_all().build().map_err(SchedulerError::Start)
    }
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CurrentThread => write!(f, "one thread (current-thread scheduler)"),
            Self::MultiThread(workers) => write!(f, "{workers} worker threads"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_runs_the_current_thread_scheduler() {
        assert_eq!(
            Scheduler::choose(Some("1"), 8).unwrap(),
            Scheduler::CurrentThread
        );
        assert_eq!(
            Scheduler::choose(None, 1).unwrap(),
            Scheduler::CurrentThread
        );
        assert_eq!(
            Scheduler::choose(None, 0).unwrap(),
            Scheduler::CurrentThread
        );
    }

    #[test]
    fn more_workers_run_the_multi_thread_scheduler() {
        assert_eq!(
            Scheduler::choose(None, 4).unwrap(),
            Scheduler::MultiThread(4)
        );
        assert_eq!(
            Scheduler::choose(Some(" 2 "), 1).unwrap(),
            Scheduler::MultiThread(2)
        );
    }

    #[test]
    fn each_scheduler_starts_the_runtime_it_names() {
        let one = Scheduler::CurrentThread.start().unwrap();
        assert_eq!(
            one.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let two = Scheduler::MultiThread(2).start().unwrap();
        assert_eq!(
            two.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert_eq!(two.metrics().num_workers(), 2);
    }

    #[test]
    fn a_worker_count_that_is_not_a_whole_number_is_refused_by_name() {
        for bad in ["0", "", "two", "-1", "1.5"] {
            let error = Scheduler::choose(Some(bad), 4).unwrap_err();
            assert!(error.to_string().contains(WORKERS_ENV), "{error}");
        }
    }
}
