//! Named network namespaces as guards, and veth pairs between them.
//!
//! [`NetNs::new`] runs `ip netns add {prefix}-{pid}-{counter}`; dropping the guard runs
//! `ip netns del`, which also destroys the veth ends inside. Commands run inside with
//! [`NetNs::run`] (`ip netns exec`) and [`NetNs::ip`] (`ip -n`); Rust code runs inside with
//! [`NetNs::spawn`], a thread that joins the namespace before running its closure. [`veth`]
//! creates a pair directly between two namespaces: nothing is ever created in the root
//! namespace. [`sweep_stale`] removes namespaces whose creating process no longer exists.

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use super::LabError;

/// Where `ip netns add` bind-mounts the namespaces it names.
const NETNS_DIR: &str = "/run/netns";

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Longest namespace prefix we accept; keeps names readable in `ip netns list`.
const MAX_PREFIX: usize = 16;

/// Makes namespace names unique within this process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted (with everything in it) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `{prefix}-{pid}-{counter}`.
    ///
    /// The prefix is 1 to 16 ASCII letters, digits or `_`, so that [`sweep_stale`] can parse
    /// names back.
    pub fn new(prefix: &str) -> Result<Self, LabError> {
        check_prefix(prefix)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{id}", std::process::id());
        run_command("ip", &["netns", "add", &name])?;
        Ok(Self { name })
    }

    /// The namespace name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip netns exec NAME <args>` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// Runs `ip -n NAME <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// Brings `iface` up with `mtu`.
    pub fn up(&self, iface: &str, mtu: u32) -> Result<(), LabError> {
        self.ip(&["link", "set", iface, "mtu", &mtu.to_string()])?;
        self.ip(&["link", "set", iface, "up"])?;
        Ok(())
    }

    /// Gives `iface` an IPv4 and an IPv6 address with their prefix lengths (the IPv6 one
    /// without duplicate address detection, usable at once).
    pub fn address(
        &self,
        iface: &str,
        (v4, len4): (Ipv4Addr, u8),
        (v6, len6): (Ipv6Addr, u8),
    ) -> Result<(), LabError> {
        self.ip(&["addr", "add", &format!("{v4}/{len4}"), "dev", iface])?;
        let v6 = format!("{v6}/{len6}");
        self.ip(&["-6", "addr", "add", &v6, "dev", iface, "nodad"])?;
        Ok(())
    }

    /// Sets (or replaces) the default routes via `v4` and `v6`.
    pub fn default_via(&self, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(), LabError> {
        self.ip(&["route", "replace", "default", "via", &v4.to_string()])?;
        self.ip(&["-6", "route", "replace", "default", "via", &v6.to_string()])?;
        Ok(())
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        self.run(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Moves the calling thread (only it) into the namespace.
    pub fn enter_current_thread(&self) -> Result<(), LabError> {
        let file = self.open()?;
        enter_fd(&file, &self.name)
    }

    /// Runs `f` on the calling thread inside the namespace, then moves the thread back to the
    /// namespace it was in. For short steps that must happen inside (attaching XDP by
    /// interface name, `BPF_PROG_TEST_RUN` with an ingress interface).
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T, LabError> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|source| LabError::Enter {
            name: "(this thread's own)".to_owned(),
            source,
        })?;
        self.enter_current_thread()?;
        let result = f();
        enter_fd(&home, "(this thread's own)")?;
        Ok(result)
    }

    /// Starts a named thread that enters the namespace, then runs `f`.
    ///
    /// Returns once the thread is inside the namespace; if it could not enter, the error is
    /// returned here and `f` never runs.
    pub fn spawn<F, T>(&self, name: &str, f: F) -> Result<JoinHandle<T>, LabError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let ns_name = self.name.clone();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let entered = enter_fd(&file, &ns_name);
                drop(file);
                if let Err(error) = entered {
                    let message = error.to_string();
                    report_entered(&entered_tx, Err(error));
                    // Ends this thread without running `f` (and without the panic hook's noise);
                    // the spawner returns the error instead of the handle.
                    std::panic::resume_unwind(Box::new(message));
                }
                report_entered(&entered_tx, Ok(()));
                f()
            })
            .map_err(|source| thread_error(name, &source.to_string()))?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(error)) => {
                // The thread unwinds right after reporting; reap it, its payload is `error`.
                drop(handle.join());
                Err(error)
            }
            Err(mpsc::RecvError) => {
                // It ended without reporting (it could not have run `f`); reap it.
                drop(handle.join());
                Err(thread_error(name, "ended before entering the namespace"))
            }
        }
    }

    /// Runs the future `job` makes on a current-thread tokio runtime in a thread inside the
    /// namespace (sockets it opens belong there), and waits for its output.
    pub fn block_on<F, Fut, T>(&self, name: &str, job: F) -> Result<T, LabError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.spawn(name, move || run_async(job()))?
            .join()
            .map_err(|_| thread_error(name, "panicked (its message is above)"))?
    }

    /// The bind mount that names this namespace.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Opens the namespace file, for `setns`.
    fn open(&self) -> Result<File, LabError> {
        File::open(self.path()).map_err(|source| LabError::Enter {
            name: self.name.clone(),
            source,
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = run_command("ip", &["netns", "del", &self.name]) {
            tracing::warn!(%error, "could not delete lab namespace {}", self.name);
        }
    }
}

/// Creates a veth pair, `a_name` in namespace `a` and `b_name` in `b`, and sets both ends up.
///
/// The pair is created inside `a` (`ip -n A link add ... peer name B_NAME netns B`), never in
/// the root namespace; deleting either namespace destroys it.
pub fn veth(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<(), LabError> {
    check_ifname(a_name)?;
    check_ifname(b_name)?;
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Deletes namespaces named `{prefix}-{pid}-{n}` whose process `pid` no longer exists, left by
/// an earlier run that was killed. Other names are never touched. Returns the deleted names.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>, LabError> {
    check_prefix(prefix)?;
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::ReadDir {
                path: NETNS_DIR,
                source,
            });
        }
    };
    let mut deleted = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(pid) = parse_owner(prefix, &name) else {
            continue;
        };
        if pid != std::process::id() && !is_process_alive(pid) {
            run_command("ip", &["netns", "del", &name])?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// The pid in a name `{prefix}-{pid}-{n}`, or `None` for any other name.
fn parse_owner(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, id) = rest.split_once('-')?;
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_number(id) {
        return None;
    }
    if !is_number(pid) {
        return None;
    }
    pid.parse().ok()
}

/// Tells [`NetNs::spawn`] whether the new thread entered the namespace.
fn report_entered(entered: &mpsc::SyncSender<Result<(), LabError>>, result: Result<(), LabError>) {
    // The spawner is blocked in `recv` until this arrives, so the receiver is still there.
    if entered.send(result).is_err() {
        tracing::debug!("nobody waited for a lab thread to enter its namespace");
    }
}

/// Whether a process with this pid exists (in our pid namespace).
fn is_process_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Joins the namespace open as `file`, for the calling thread only.
fn enter_fd(file: &File, name: &str) -> Result<(), LabError> {
    // SAFETY: `file` owns an open descriptor for the whole call; `setns` only reads it and
    // changes the calling thread's network namespace, which no Rust invariant depends on.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(LabError::Enter {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `program args...`; returns stdout, or an error with the command line and its stderr.
fn run_command(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Accepts 1 to 16 ASCII letters, digits and `_`.
fn check_prefix(prefix: &str) -> Result<(), LabError> {
    let is_valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if is_valid {
        return Ok(());
    }
    Err(LabError::InvalidName {
        name: prefix.to_owned(),
        reason: "a namespace prefix is 1 to 16 ASCII letters, digits or `_` (no `-`)",
    })
}

/// Accepts interface names the kernel accepts: 1 to 15 bytes, no `/`, `:` or whitespace.
fn check_ifname(name: &str) -> Result<(), LabError> {
    let is_valid = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if is_valid {
        return Ok(());
    }
    Err(LabError::InvalidName {
        name: name.to_owned(),
        reason: "an interface name is 1 to 15 printable ASCII bytes without `/` or `:`",
    })
}

/// A [`LabError::Thread`] for thread `name`.
fn thread_error(name: &str, reason: &str) -> LabError {
    LabError::Thread {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Runs `future` to completion on a new current-thread tokio runtime, in this thread.
pub fn run_async<T>(future: impl Future<Output = T>) -> Result<T, LabError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|runtime| runtime.block_on(future))
        .map_err(|source| LabError::File {
            what: "starting a tokio runtime in a lab thread",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests that need root (namespaces, veths, sweeping) are in tests/tests/lab.rs.

    #[test]
    fn parse_owner_accepts_only_the_lab_pattern() {
        assert_eq!(parse_owner("lab", "lab-123-0"), Some(123));
        assert_eq!(parse_owner("lab", "lab-123-45"), Some(123));
        assert_eq!(parse_owner("lab", "lab-123"), None);
        assert_eq!(parse_owner("lab", "lab-x-1"), None);
        assert_eq!(parse_owner("lab", "lab-1-2-3"), None);
        assert_eq!(parse_owner("lab", "labx-1-2"), None);
        assert_eq!(parse_owner("lab", "other-1-2"), None);
        assert_eq!(parse_owner("lab", "lab--1"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_prefix("lb_test1").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a-b").is_err());
        assert!(check_prefix("abcdefghijklmnopq").is_err());
        assert!(check_ifname("veth0").is_ok());
        assert!(check_ifname("a234567890123456").is_err());
        assert!(check_ifname("a b").is_err());
    }
}
