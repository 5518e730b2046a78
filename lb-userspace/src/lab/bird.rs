//! A BIRD 2 routing daemon as a child process inside a lab namespace.
//!
//! [`Bird::start`] writes the configuration (and the files it includes) into a private
//! directory with short paths (a control socket path must fit in 108 bytes), starts
//! `bird -f -c DIR/bird.conf -s DIR/bird.ctl -P DIR/bird.pid` in the namespace and waits until
//! the control socket answers `show status`. [`Bird::birdc`] runs `birdc` against that socket
//! (a Unix socket: `birdc` itself needs no namespace); [`Bird::wait_established`] polls a BGP
//! protocol until it is `Established`. [`Bird::kill`] is a fault (SIGKILL: the peer sees the
//! TCP session close), [`Bird::pause`] a silent one (SIGSTOP: only the peer's hold timer
//! notices), [`Bird::stop`] a clean stop (SIGTERM: BIRD sends Cease), and
//! [`Bird::start_again`] runs the same configuration again. Dropping the guard stops BIRD
//! (SIGTERM, SIGKILL after a bound) and removes its directory.
//!
//! [`LB_NODE_CONF`] is the shipped node fragment (`packaging/bird/lb-node.conf`), and
//! [`node_config`] a node's bird.conf that includes it verbatim, so that the lab runs what
//! operators install.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{LabError, NetNs};

/// The node fragment operators include from their bird.conf.
pub const LB_NODE_CONF: &str = include_str!("../../../packaging/bird/lb-node.conf");

/// How long BIRD may take to answer on its socket once started, and to stop on SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest path a Unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running (or stopped) BIRD with its own directory.
#[derive(Debug)]
pub struct Bird {
    child: Option<Child>,
    netns: PathBuf,
    dir: PathBuf,
}

/// A node's bird.conf: its router id and one session (`tor`, from the fragment's `lb_uplink`
/// template) from `local` (AS 65001) to `neighbor` (AS 65000), logging into `dir`, with the
/// shipped fragment included from `dir` (written there by [`Bird::start`] as `lb-node.conf`).
pub fn node_config(dir: &Path, local: std::net::Ipv4Addr, neighbor: std::net::Ipv4Addr) -> String {
    format!(
        "log \"{log}\" all;\nrouter id {local};\nprotocol device {{}}\n\
         include \"{fragment}\";\n\
         protocol bgp tor from lb_uplink {{ local {local} as 65001; neighbor {neighbor} as 65000; }}\n",
        log = dir.join("bird.log").display(),
        fragment = dir.join("lb-node.conf").display(),
    )
}

impl Bird {
    /// Writes `files` (name, contents) and the configuration `config` makes from the directory
    /// into a new private directory, starts BIRD in `ns` and waits until it answers.
    pub fn start(
        ns: &NetNs,
        files: &[(&str, &str)],
        config: impl FnOnce(&Path) -> String,
    ) -> Result<Self, LabError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from("/tmp").join(format!("lbbird-{}-{n}", std::process::id()));
        let io = |what: &'static str| move |source| LabError::File { what, source };
        fs::create_dir_all(&dir).map_err(io("creating BIRD's directory"))?;
        // The guard first: on any error below, dropping it removes the directory.
        let mut bird = Self {
            child: None,
            netns: ns.path(),
            dir,
        };
        if bird.socket().as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LabError::Daemon(format!(
                "BIRD's control socket path {} is longer than a Unix socket takes",
                bird.socket().display()
            )));
        }
        for (name, contents) in files {
            fs::write(bird.dir.join(name), contents).map_err(io("writing a BIRD file"))?;
        }
        fs::write(bird.config(), config(&bird.dir)).map_err(io("writing bird.conf"))?;
        bird.start_again()?;
        Ok(bird)
    }

    /// Starts BIRD again (after [`Bird::kill`] or [`Bird::stop`]) with the same files, and
    /// waits until its socket answers.
    pub fn start_again(&mut self) -> Result<(), LabError> {
        if self.child.is_some() {
            return Err(LabError::Daemon("BIRD is still running".to_owned()));
        }
        self.child = Some(self.spawn()?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.birdc(&["show", "status"]).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(LabError::Daemon(format!(
                    "BIRD exited ({status}) before it answered:\n{}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(LabError::Daemon(format!(
                    "BIRD did not answer on {} within {START_TIMEOUT:?}:\n{}",
                    self.socket().display(),
                    self.log()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether BIRD runs (was started and has not been stopped or killed by this guard).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The private directory (configuration, socket, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// BIRD's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// What BIRD wrote to its log file and to stderr.
    pub fn log(&self) -> String {
        let read = |name| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("bird.log"), read("stderr.log"))
    }

    /// Runs `birdc -s SOCKET args...` and returns what it printed; an error if it could not
    /// reach BIRD (birdc then exits non-zero).
    pub fn birdc(&self, args: &[&str]) -> Result<String, LabError> {
        let socket = self.socket();
        let command = format!("birdc -s {} {}", socket.display(), args.join(" "));
        let output = Command::new("birdc")
            .arg("-s")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(LabError::Command {
                command,
                status: output.status.to_string(),
                stderr: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
            });
        }
        Ok(stdout)
    }

    /// Waits until BGP protocol `protocol` is `Established` (polling `show protocols`);
    /// returns how long that took.
    pub fn wait_established(
        &self,
        protocol: &str,
        timeout: Duration,
    ) -> Result<Duration, LabError> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.birdc(&["show", "protocols", protocol]) {
                Ok(out) if out.contains("Established") => return Ok(start.elapsed()),
                Ok(out) => last = out,
                Err(error) => last = error.to_string(),
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(LabError::Daemon(format!(
            "BGP protocol {protocol} not established within {timeout:?}: {last}\n{}",
            self.log()
        )))
    }

    /// Kills BIRD with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) -> Result<(), LabError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| LabError::Daemon("BIRD was not running".to_owned()))?;
        let io = |source| LabError::File {
            what: "killing BIRD",
            source,
        };
        child.kill().map_err(io)?;
        child.wait().map_err(io)?;
        // A killed BIRD leaves its socket and pid file: a new one would refuse the socket.
        for name in ["bird.ctl", "bird.pid"] {
            let path = self.dir.join(name);
            if path.exists() {
                fs::remove_file(&path).map_err(|source| LabError::File {
                    what: "removing a killed BIRD's socket",
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Stops BIRD with SIGTERM (it sends Cease to its peers and exits), SIGKILL if it has not
    /// exited within a bound.
    pub fn stop(&mut self) -> Result<(), LabError> {
        let Some(mut child) = self.child.take() else {
            return Err(LabError::Daemon("BIRD was not running".to_owned()));
        };
        let io = |source| LabError::File {
            what: "stopping BIRD",
            source,
        };
        if child.try_wait().map_err(io)?.is_none() {
            signal(&child, libc::SIGTERM).map_err(io)?;
            // A paused BIRD must run to act on it.
            signal(&child, libc::SIGCONT).map_err(io)?;
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().map_err(io)?.is_none() {
                if Instant::now() > deadline {
                    child.kill().map_err(io)?;
                    child.wait().map_err(io)?;
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Pauses BIRD (SIGSTOP): it sends nothing more, its sessions stay open, and the peer
    /// notices only when its hold timer expires.
    pub fn pause(&mut self) -> Result<(), LabError> {
        self.signal(libc::SIGSTOP, "pausing BIRD")
    }

    /// Lets a paused BIRD run again (SIGCONT).
    pub fn resume(&mut self) -> Result<(), LabError> {
        self.signal(libc::SIGCONT, "resuming BIRD")
    }

    fn signal(&mut self, signal_number: libc::c_int, what: &'static str) -> Result<(), LabError> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| LabError::Daemon("BIRD is not running".to_owned()))?;
        let io = |source| LabError::File { what, source };
        if let Some(status) = child.try_wait().map_err(io)? {
            self.child = None;
            return Err(LabError::Daemon(format!("BIRD has exited ({status})")));
        }
        signal(child, signal_number).map_err(io)
    }

    /// Starts `bird -f` in the namespace, stdout and stderr into `stderr.log`.
    fn spawn(&self) -> Result<Child, LabError> {
        let io = |what: &'static str| move |source| LabError::File { what, source };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .map_err(io("opening BIRD's stderr log"))?;
        let netns = fs::File::open(&self.netns).map_err(io("opening the namespace"))?;
        let mut command = Command::new("bird");
        // SAFETY: between fork and exec the child only calls `setns` (async-signal-safe) on a
        // descriptor the parent keeps open until `spawn` returns. Only the network namespace
        // changes, as `ip netns exec` would (without its private /sys).
        unsafe {
            use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
            let fd = netns.as_raw_fd();
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .arg("-f")
            .arg("-c")
            .arg(self.config())
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("opening BIRD's stderr log"))?)
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: format!("bird -f -c {}", self.config().display()),
                source,
            })
    }
}

/// Sends `signal_number` to `child`, which the caller has checked has not been reaped.
fn signal(child: &Child, signal_number: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not reaped
    // (only its `Child`, borrowed here, waits for it), so the id is no one else's.
    if unsafe { libc::kill(pid, signal_number) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Bird {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(error) = self.stop()
        {
            tracing::warn!(%error, "could not stop a lab BIRD");
        }
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(%error, "could not remove {}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped files: `packaging/bird/`.
    fn packaging() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/bird")
    }

    /// `bird -p -c FILE`: parses the configuration and exits; its complaint if it fails.
    fn parse(file: &Path) -> Result<(), String> {
        let output = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(file)
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    #[test]
    fn the_shipped_bird_files_parse() {
        if Command::new("bird").arg("--version").output().is_err() {
            eprintln!("skipped: `bird` is not installed (`apt-get install bird2`; CI installs it)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("lb-bird-parse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let fragment = packaging().join("lb-node.conf");
        // The fragment, included as the example does, and as the lab does (its own copy).
        let example = fs::read_to_string(packaging().join("bird-node.example.conf"))
            .unwrap_or_else(|e| panic!("bird-node.example.conf: {e}"));
        assert!(example.contains("include \"/etc/lb/bird/lb-node.conf\";"));
        let example = example.replace("/etc/lb/bird/lb-node.conf", &fragment.display().to_string());
        // The lab writes its copy of the fragment next to its node configuration.
        fs::write(dir.join("lb-node.conf"), LB_NODE_CONF)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let lab_node = node_config(
            &dir,
            std::net::Ipv4Addr::new(198, 18, 21, 2),
            std::net::Ipv4Addr::new(198, 18, 21, 1),
        );
        let cases = [
            ("node example", example),
            ("lab node", lab_node),
            (
                "fragment alone",
                format!("include \"{}\";\n", fragment.display()),
            ),
        ];
        let mut failures = Vec::new();
        for (name, text) in cases {
            let file = dir.join(format!("{}.conf", name.replace(' ', "-")));
            fs::write(&file, &text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if let Err(error) = parse(&file) {
                failures.push(format!("{name}: {error}\n{text}"));
            }
        }
        if let Err(error) = parse(&packaging().join("bird-router.example.conf")) {
            failures.push(format!("router example: {error}"));
        }
        drop(fs::remove_dir_all(&dir));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_node_config_includes_the_shipped_fragment_and_uses_its_template() {
        let text = node_config(
            Path::new("/tmp/x"),
            std::net::Ipv4Addr::new(198, 18, 21, 2),
            std::net::Ipv4Addr::new(198, 18, 21, 1),
        );
        assert!(text.contains("include \"/tmp/x/lb-node.conf\";"), "{text}");
        assert!(text.contains("from lb_uplink"), "{text}");
        assert!(LB_NODE_CONF.contains("template bgp lb_uplink"));
        assert!(LB_NODE_CONF.contains("kernel table 200;"));
        assert!(LB_NODE_CONF.contains("krt_source = 200"));
        // Graceful restart is only ever mentioned in comments.
        assert!(
            LB_NODE_CONF
                .lines()
                .map(|line| line.split('#').next().unwrap_or_default())
                .all(|code| !code.contains("graceful"))
        );
    }
}
