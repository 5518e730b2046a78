//! An `lb run` daemon as a child process inside a lab namespace, with its own configuration
//! file, control socket and pin directory (all unique per daemon), stopped with SIGTERM (and
//! its files removed) when the guard is dropped. It runs as the test's user (root), or as a
//! [`Launch`] says: through a wrapper command (`setpriv` with a user and capabilities, as a
//! systemd unit would run it), its directory and pin directory made its user's.

use std::{
    ffi::OsString,
    fs,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{LabError, NetNs};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a daemon may take to come up (loading and verifying the programs, writing the
/// tables) or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `lb` binary: `$LB_BIN` if set, else the `lb` next to the running executable or one
/// directory up (where cargo puts binaries for tests in `deps/`).
pub fn lb_binary() -> Result<PathBuf, LabError> {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| LabError::File {
        what: "finding the running executable",
        source,
    })?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("lb"))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| LabError::Daemon(format!(
            "no `lb` binary next to {}; build it (`cargo build -p lb-userspace --bin lb`) or set LB_BIN",
            exe.display()
        )))
}

/// A running daemon.
pub struct DaemonProcess {
    child: Option<Child>,
    binary: PathBuf,
    /// The namespace file and the configuration file, to start it again.
    netns: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    /// Environment variables of the next start.
    env: Vec<(String, String)>,
    launch: Launch,
    /// The bpffs mounted for a daemon of another user (unmounted on drop).
    bpffs: Option<PathBuf>,
}

/// How a daemon is started: `wrapper` (a command and its arguments, e.g. `setpriv ...`) runs
/// `lb run ...`; with an `owner` (uid, gid), the daemon's directory (its socket's) and its pin
/// directory (on a bpffs mounted for it in that directory) are made that user's, mode 0700,
/// before it starts, as a systemd unit's `RuntimeDirectory=` and `ExecStartPre=` make them; `binary`, if given, runs instead of the
/// build's `lb` (a copy that user may execute). The default: the build's, directly, as the
/// test's user.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub wrapper: Vec<OsString>,
    pub owner: Option<(u32, u32)>,
    pub binary: Option<PathBuf>,
}

/// Mounts a bpffs of its own at `path` (mode 0700).
fn mount_bpffs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: NUL-terminated strings that live across the call; no data pointer but the
    // options string.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts `path` (lazily: whatever still holds it lets go when it closes).
fn unmount(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: a NUL-terminated string that lives across the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `path` (a directory) `owner`'s, mode 0700.
fn give(path: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

impl std::fmt::Debug for DaemonProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonProcess")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The paths a daemon's configuration must use: its socket and its pin directory.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
}

impl DaemonProcess {
    /// Starts `lb run` inside `ns` with the configuration `config` makes from the paths this
    /// daemon must use, and waits until its control socket answers.
    ///
    /// The daemon leaves its maps and XDP links pinned when it stops (restarts are hitless);
    /// dropping the guard removes the pins, which detaches the balancer.
    pub fn start(
        binary: &Path,
        ns: &NetNs,
        config: impl FnOnce(&DaemonPaths) -> String,
    ) -> Result<Self, LabError> {
        Self::start_launched(binary, ns, Launch::default(), config)
    }

    /// [`DaemonProcess::start`], started as `launch` says.
    pub fn start_launched(
        binary: &Path,
        ns: &NetNs,
        launch: Launch,
        config: impl FnOnce(&DaemonPaths) -> String,
    ) -> Result<Self, LabError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("lb-lab-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        // A daemon of another user pins on a bpffs of its own in its directory: /sys/fs/bpf
        // is root's and mode 0700 on a host (the unit shows the daemon only its directory).
        let bpffs = launch.owner.map(|_| dir.join("bpf"));
        let paths = DaemonPaths {
            socket: dir.join("lb.sock"),
            pin_dir: match &bpffs {
                Some(bpffs) => bpffs.join("lb"),
                None => PathBuf::from("/sys/fs/bpf").join(&tag),
            },
        };
        let io = |what: &'static str| move |source| LabError::File { what, source };
        fs::create_dir_all(&dir).map_err(io("creating the daemon's directory"))?;
        let config_path = dir.join("lb.toml");
        fs::write(&config_path, config(&paths))
            .map_err(io("writing the daemon's configuration"))?;
        // The guard first: on any error below, dropping it removes what was made.
        let mut daemon = Self {
            child: None,
            binary: binary.to_owned(),
            netns: ns.path(),
            config: config_path,
            dir,
            socket: paths.socket,
            pin_dir: paths.pin_dir,
            env: Vec::new(),
            launch,
            bpffs: None,
        };
        if let (Some(owner), Some(bpffs)) = (daemon.launch.owner, bpffs) {
            give(&daemon.dir, owner).map_err(io("giving the daemon's directory to its user"))?;
            fs::create_dir(&bpffs).map_err(io("creating the bpffs mount point"))?;
            mount_bpffs(&bpffs).map_err(io("mounting a bpffs for the daemon"))?;
            daemon.bpffs = Some(bpffs.clone());
            give(&bpffs, owner).map_err(io("giving the bpffs to the daemon's user"))?;
            fs::create_dir(&daemon.pin_dir).map_err(io("creating the pin directory"))?;
            give(&daemon.pin_dir, owner).map_err(io("giving the pin directory to its user"))?;
        }
        daemon.child = Some(spawn(
            &daemon.launch,
            &daemon.binary,
            &daemon.netns,
            &daemon.config,
            &daemon.dir.join("daemon.log"),
            &[],
            &[],
        )?);
        daemon.wait_until_ready()?;
        Ok(daemon)
    }

    /// Waits until `ready(socket)` holds (or the daemon exits, or [`START_TIMEOUT`] passes).
    fn wait_until(&mut self, ready: impl Fn(&Path) -> bool) -> Result<(), LabError> {
        let outcome = poll(START_TIMEOUT, || {
            if ready(&self.socket) {
                return Some(Ok(()));
            }
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(Err(status)),
                _ => None,
            }
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => {
                self.child = None;
                Err(LabError::Daemon(format!(
                    "the daemon exited ({status}) before it was ready:\n{}",
                    self.log()
                )))
            }
            None => Err(LabError::Daemon(format!(
                "the daemon was not ready within {START_TIMEOUT:?}:\n{}",
                self.log()
            ))),
        }
    }

    /// Waits until the control socket answers.
    fn wait_until_ready(&mut self) -> Result<(), LabError> {
        self.wait_until(|socket| UnixStream::connect(socket).is_ok())
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The configuration file the daemon runs with (`lb reload` re-reads it).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Where the daemon pins its maps (tests read the maps there).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon: `lb --socket SOCKET args...`.
    pub fn cli(&self, args: &[&str]) -> Result<Output, LabError> {
        Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|source| LabError::File {
                what: "running the lb CLI",
                source,
            })
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) -> Result<std::process::ExitStatus, LabError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| LabError::Daemon("the daemon was already stopped".to_owned()))?;
        let io = |source| LabError::File {
            what: "killing the daemon",
            source,
        };
        child.kill().map_err(io)?;
        child.wait().map_err(io)
    }

    /// Starts the daemon again (after `stop` or `kill`) with the same configuration, socket and
    /// pins, and waits until it is ready. Its log goes on in the same file.
    pub fn restart(&mut self) -> Result<(), LabError> {
        if self.child.is_some() {
            return Err(LabError::Daemon("the daemon is still running".to_owned()));
        }
        let log = self.dir.join("daemon.log");
        self.child = Some(spawn(
            &self.launch,
            &self.binary,
            &self.netns,
            &self.config,
            &log,
            &self.env,
            &[],
        )?);
        self.wait_until_ready()
    }

    /// Starts `binary` (this build or another) with `lb run --take-over` beside the running
    /// daemon, with the same configuration, and waits until it has taken over (its control
    /// socket has replaced the old one's). Returns the old daemon, which drains and exits on
    /// its own. The log goes on in the same file.
    pub fn take_over(&mut self, binary: &Path) -> Result<Predecessor, LabError> {
        use std::os::unix::fs::MetadataExt as _;
        let old = self
            .child
            .take()
            .ok_or_else(|| LabError::Daemon("no daemon runs to take over from".to_owned()))?;
        let mut old = Predecessor { child: Some(old) };
        let inode = |path: &Path| fs::symlink_metadata(path).map(|m| m.ino()).ok();
        let before = inode(&self.socket);
        let log = self.dir.join("daemon.log");
        self.binary = binary.to_owned();
        self.child = Some(spawn(
            &self.launch,
            &self.binary,
            &self.netns,
            &self.config,
            &log,
            &self.env,
            &["--take-over"],
        )?);
        let taken_over = self
            .wait_until(|socket| inode(socket) != before && UnixStream::connect(socket).is_ok());
        if let Err(error) = taken_over {
            if self.child.is_none() {
                // The new daemon exited: the old one carries on, and is this guard's again.
                self.child = old.child.take();
            }
            return Err(error);
        }
        Ok(old)
    }

    /// Sends SIGTERM and returns at once: the daemon drains (its control socket and pin
    /// directory are free for a new one, [`DaemonProcess::restart`]) and exits on its own.
    pub fn terminate(&mut self) -> Result<Predecessor, LabError> {
        let child = self
            .child
            .take()
            .ok_or_else(|| LabError::Daemon("the daemon was already stopped".to_owned()))?;
        let mut old = Predecessor { child: Some(child) };
        old.terminate().map_err(|source| LabError::File {
            what: "sending SIGTERM to the daemon",
            source,
        })?;
        Ok(old)
    }

    /// The environment of the next [`DaemonProcess::restart`] (`[]`: the test's own).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Waits up to `limit` for the daemon to exit on its own; its status, if it did.
    pub fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.child.as_ref()?;
        let status = poll(limit, || self.child.as_mut()?.try_wait().ok().flatten())?;
        self.child = None;
        Some(status)
    }

    /// Stops the daemon with SIGTERM (SIGKILL after a timeout) and returns its exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus, LabError> {
        let Some(mut child) = self.child.take() else {
            return Err(LabError::Daemon(
                "the daemon was already stopped".to_owned(),
            ));
        };
        let io = |source| LabError::File {
            what: "stopping the daemon",
            source,
        };
        if let Some(status) = child.try_wait().map_err(io)? {
            return Ok(status);
        }
        sigterm(&mut child).map_err(io)?;
        match poll(STOP_TIMEOUT, || child.try_wait().ok().flatten()) {
            Some(status) => Ok(status),
            None => {
                child.kill().map_err(io)?;
                child.wait().map_err(io)
            }
        }
    }
}

/// Calls `check` every 20 ms until it gives `Some`, for up to `limit` (then `None`).
fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child`, if it has not exited.
fn sigterm(child: &mut Child) -> std::io::Result<()> {
    if let Some(status) = child.try_wait()? {
        return Err(std::io::Error::other(format!("it has exited ({status})")));
    }
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: `kill` has no memory-safety preconditions. `pid` is our own child, which has not
    // been reaped (it had not exited above, and only its `Child`, borrowed here, waits for
    // it), so the id is no one else's.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The soft open-file limit a daemon starts with: a shell's or a systemd unit's default.
const DEFAULT_OPEN_FILES: libc::rlim_t = 1024;

/// Starts `binary run ARGS --config CONFIG` (through `launch`'s wrapper) in the network
/// namespace at `netns`, logging to `log` (appended).
fn spawn(
    launch: &Launch,
    binary: &Path,
    netns: &Path,
    config: &Path,
    log: &Path,
    env: &[(String, String)],
    args: &[&str],
) -> Result<Child, LabError> {
    let io = |what: &'static str| move |source| LabError::File { what, source };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening the daemon's log"))?;
    let netns = fs::File::open(netns).map_err(io("opening the namespace"))?;
    let mut command = match launch.wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    // SAFETY: between fork and exec the child only calls `setns`, `getrlimit` and
    // `setrlimit`, which are async-signal-safe, on a descriptor the parent opened and keeps
    // open until `spawn` returns and on a struct on the child's stack. Only the network
    // namespace changes: the daemon keeps the host's mounts (bpffs at /sys/fs/bpf), unlike
    // under `ip netns exec`. The open-file limit is put back to the soft 1024 a shell or a
    // systemd unit gives (tests raise their own for their clients): the daemon raises its
    // own, as it must on a host.
    unsafe {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let fd = netns.as_raw_fd();
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = limit.rlim_max.min(DEFAULT_OPEN_FILES);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(io("starting the daemon"))
}

/// A daemon that handed over to its successor ([`DaemonProcess::take_over`]) and drains;
/// killed, if it still runs, when the guard is dropped.
#[derive(Debug)]
pub struct Predecessor {
    /// Always `Some` until the guard is taken apart.
    child: Option<Child>,
}

impl Predecessor {
    fn child(&mut self) -> std::io::Result<&mut Child> {
        self.child
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no process"))
    }

    /// Waits up to `limit` for it to exit; its status, if it did.
    pub fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        poll(limit, || {
            self.child().and_then(Child::try_wait).ok().flatten()
        })
    }

    /// Sends it SIGTERM (a second one, while it drains, closes its connections at once).
    pub fn terminate(&mut self) -> std::io::Result<()> {
        sigterm(self.child()?)
    }

    /// Kills it with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let child = self.child()?;
        child.kill()?;
        child.wait()
    }
}

impl Drop for Predecessor {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(None) = child.try_wait()
        {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(error) = self.stop()
        {
            tracing::warn!(%error, "could not stop a lab daemon");
        }
        if self.pin_dir.exists()
            && let Err(error) = fs::remove_dir_all(&self.pin_dir)
        {
            tracing::warn!(%error, "could not remove {}", self.pin_dir.display());
        }
        if let Some(bpffs) = &self.bpffs
            && let Err(error) = unmount(bpffs)
        {
            tracing::warn!(%error, "could not unmount {}", bpffs.display());
        }
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(%error, "could not remove {}", self.dir.display());
        }
    }
}
