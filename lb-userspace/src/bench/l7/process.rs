//! The processes of the L7 benchmark, and what it reads from them.
//!
//! - [`Child`]: a child process as a guard. It is started on one CPU (`taskset -c CPU`), in a
//!   process group of its own (a Ctrl-C at the terminal reaches only the benchmark, which then
//!   stops its children in order), with SIGTERM as its parent-death signal (so that a benchmark
//!   killed outright takes its children with it); dropping it stops it (SIGTERM, then SIGKILL)
//!   and waits for it.
//! - [`cpu_seconds`]: user plus system CPU time of a process so far (`/proc/PID/stat`), from
//!   which the benchmark derives CPU-µs per request and per handshake; [`children_cpu_seconds`]
//!   the same for the children waited for (the load generator `wrk`).
//! - [`pin_self`]: this process onto one CPU (the load generators' CPU); [`set_nice`]: its
//!   priority, and its children's.
//! - [`install_interrupt`] / [`check_interrupt`]: SIGINT and SIGTERM only set a flag, which every
//!   wait of the benchmark checks, so that an interrupted run unwinds through the guards.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::bench::BenchError;

/// How long a stopped child may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often waits look at the child and at the interrupt flag.
const TICK: Duration = Duration::from_millis(20);

/// A running child process; stopped and waited for when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
}

/// `taskset -c CPU program`: the command of a program pinned to `cpu`.
pub fn pinned(cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

impl Child {
    /// Starts `command` (stdin closed; stdout and stderr as the caller set them, else
    /// discarded).
    pub fn spawn(name: &str, command: &mut Command) -> Result<Self, BenchError> {
        command.stdin(Stdio::null()).process_group(0);
        // SAFETY: between fork and exec the child only calls `prctl`, which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command.spawn().map_err(|source| BenchError::Io {
            what: format!("starting {name} (`{command:?}`); is it installed?"),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// The process ID (`taskset` executes the program in its own process, so it is the
    /// program's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// The exit status if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The child's stdout (which must have been piped), once.
    pub fn take_stdout(&mut self) -> Result<std::process::ChildStdout, BenchError> {
        self.child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| BenchError::Unexpected(format!("{}: no stdout to read", self.name)))
    }

    /// Reads the first line the child writes on its stdout (which must be piped), failing if
    /// it exits first.
    pub fn first_line(&mut self) -> Result<String, BenchError> {
        let mut line = String::new();
        BufReader::new(self.take_stdout()?)
            .read_line(&mut line)
            .map_err(|source| BenchError::Io {
                what: format!("reading {}'s first line", self.name),
                source,
            })?;
        if line.is_empty() {
            let status = self.exited();
            return Err(BenchError::Unexpected(format!(
                "{} exited before it was ready ({status:?})",
                self.name
            )));
        }
        Ok(line.trim().to_owned())
    }

    /// Waits until `address` accepts TCP connections, failing if the child exits or
    /// `timeout` passes.
    pub fn wait_for_port(
        &mut self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupt()?;
            if TcpStream::connect_timeout(&address, TICK).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(BenchError::Unexpected(format!(
                    "{} exited ({status}) before it listened on {address}",
                    self.name
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Unexpected(format!(
                    "{} did not listen on {address} within {timeout:?}",
                    self.name
                )));
            }
            std::thread::sleep(TICK);
        }
    }

    /// Waits for the child to exit by itself (it is killed if the benchmark is interrupted).
    pub fn wait(&mut self) -> Result<ExitStatus, BenchError> {
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return Ok(status);
            }
            if is_interrupted() {
                self.stop();
                return Err(BenchError::Interrupted);
            }
            std::thread::sleep(TICK);
        }
    }

    /// Stops the child: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; waits for it.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not
            // yet waited for, so the ID cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(TICK);
        }
        tracing::warn!(child = %self.name, "did not stop on SIGTERM; killing it");
        drop(child.kill());
        child.wait().ok()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// User plus system CPU time that process `pid` (all its threads) has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        what: format!("reading {path}"),
        source,
    })?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so count fields
    // after the last ')'. utime and stime are fields 14 and 15 (state is field 3).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(BenchError::Unexpected(format!(
            "{path}: no utime and stime in {stat:?}"
        )));
    };
    // SAFETY: `sysconf` has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((utime + stime) as f64 / hz)
}

/// User plus system CPU time, in seconds, of this process's children that have been waited
/// for (`getrusage(RUSAGE_CHILDREN)`): the difference around a run of `wrk` is wrk's.
pub fn children_cpu_seconds() -> Result<f64, BenchError> {
    // SAFETY: `rusage` is plain old data; all-zero is a valid value for `getrusage` to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(BenchError::Io {
            what: "reading the CPU time of the benchmark's children".to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Pins this process (every thread it starts from now on) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), BenchError> {
    crate::bench::pin_current_thread(cpu).map_err(|source| BenchError::Io {
        what: format!("pinning the benchmark to CPU {cpu}"),
        source,
    })
}

/// Gives this process (and the children it starts from now on, which inherit it) the nice
/// value `nice`, so that other work on a shared machine disturbs the measurement less. Only a
/// warning if it cannot (not root).
pub fn set_nice(nice: i32) {
    // SAFETY: `setpriority` has no memory-safety preconditions; 0 is this thread, which is the
    // one that starts the children.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise the benchmark's priority; other work on this machine will show"
        );
    }
}

/// Makes SIGINT and SIGTERM set the flag that [`check_interrupt`] reads.
pub fn install_interrupt() -> Result<(), BenchError> {
    crate::interrupt::install().map_err(|source| BenchError::Io {
        what: "installing the Ctrl-C handler".to_owned(),
        source,
    })
}

pub use crate::interrupt::is_interrupted;

/// [`BenchError::Interrupted`] once a signal arrived.
pub fn check_interrupt() -> Result<(), BenchError> {
    if is_interrupted() {
        return Err(BenchError::Interrupted);
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 ([`crate::lab::free_port`]).
pub fn free_port() -> Result<u16, BenchError> {
    crate::lab::free_port().map_err(|source| BenchError::Io {
        what: "finding a free port on 127.0.0.1".to_owned(),
        source,
    })
}

/// Raises this process's limit on open files to its hard limit (HAProxy and the daemons
/// inherit it) and returns how many of `connections` idle connections fit under it: the
/// client holds one file per connection, and HAProxy asks for two per connection it may take
/// (and refuses to start if it cannot have them), so at most half the limit, less room for
/// the processes' own files.
pub fn raise_open_files(connections: usize) -> Result<usize, BenchError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(BenchError::Io {
            what: "reading the limit on open files".to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(BenchError::Io {
            what: "raising the limit on open files".to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    let room =
        usize::try_from(limit.rlim_max.saturating_sub(FILES_OF_OWN) / 2).unwrap_or(usize::MAX);
    if room <= 100 {
        return Err(BenchError::Unexpected(format!(
            "the limit on open files ({}, `ulimit -Hn`) leaves no room for idle connections",
            limit.rlim_max
        )));
    }
    Ok(connections.min(room - 100))
}

/// Files the processes of the idle measurement keep besides its connections.
const FILES_OF_OWN: u64 = 300;
