//! Running child processes: the one place that prints, spawns and checks commands.
//!
//! [`Runner`] knows the workspace root and whether this is a dry run. Commands that change
//! something or do the work go through [`Runner::run`] (fails on a non-zero exit, naming the
//! command) or [`Runner::status`] (hands the exit status back, for `bench` and `demo`); both
//! inherit stdio and are only printed on a dry run. Read-only probes that decide whether a step
//! is needed go through [`query`], which runs even on a dry run and captures stdout.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs commands from the workspace root, or only prints them on a dry run.
#[derive(Debug)]
pub struct Runner {
    root: PathBuf,
    dry_run: bool,
}

impl Runner {
    /// A runner rooted at the workspace that contains this xtask.
    pub fn new(dry_run: bool) -> Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .context("xtask's manifest directory has no parent (the workspace root)")?;
        Ok(Self {
            root: root.to_path_buf(),
            dry_run,
        })
    }

    /// The workspace root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workspace's build directory: `$CARGO_TARGET_DIR`, else `target/` under the root.
    pub fn target_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| self.root.join("target"), PathBuf::from)
    }

    /// Whether commands are only printed.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// `cargo` through the rustup proxy, started in the workspace root.
    ///
    /// Not `$CARGO`: that is the stable toolchain's own binary, which ignores `+nightly`.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&self.root);
        cmd
    }

    /// Runs `cmd` with inherited stdio; fails unless it exits with status 0.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        let status = self.status(cmd)?;
        if !status.success() {
            bail!("`{}` failed ({status})", describe(cmd));
        }
        Ok(())
    }

    /// Runs `cmd` with inherited stdio and returns its exit status (success on a dry run).
    pub fn status(&self, cmd: &mut Command) -> Result<ExitStatus> {
        if self.dry_run {
            println!("[dry-run] $ {}", describe(cmd));
            return Ok(ExitStatus::default());
        }
        println!("$ {}", describe(cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`; is it installed?", describe(cmd)))?;
        // Ctrl-C reaches the child too (same process group): let it finish, and clean up,
        // before this process goes. Installed after the spawn, so the child keeps the defaults.
        let _ignoring = IgnoreInterrupts::new();
        child
            .wait()
            .with_context(|| format!("waiting for `{}`", describe(cmd)))
    }
}

/// Ignores SIGINT and SIGTERM in this process while it lives, so that an interrupted child's
/// cleanup is not cut short by its parent. (Ignored signals stay ignored across `exec`, so it
/// must be created after a child is spawned, never before.)
struct IgnoreInterrupts {
    previous: [libc::sighandler_t; 2],
}

impl IgnoreInterrupts {
    fn new() -> Self {
        // SAFETY: `signal` with SIG_IGN installs no handler code; the previous dispositions
        // are restored on drop.
        let previous = unsafe {
            [
                libc::signal(libc::SIGINT, libc::SIG_IGN),
                libc::signal(libc::SIGTERM, libc::SIG_IGN),
            ]
        };
        Self { previous }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        // SAFETY: restores the dispositions `new` replaced.
        unsafe {
            libc::signal(libc::SIGINT, self.previous[0]);
            libc::signal(libc::SIGTERM, self.previous[1]);
        }
    }
}

/// Runs a read-only probe and returns its stdout, or `None` if it is missing or fails.
pub fn query(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
pub fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("/proc/self/status has no effective uid")?;
    Ok(euid == "0")
}

/// A shell-like rendering of `cmd`: changed environment variables, program, arguments.
pub fn describe(cmd: &Command) -> String {
    let mut text = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            text.push_str(&format!("{}={} ", key.display(), quote(value)));
        }
    }
    text.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&quote(arg));
    }
    text
}

/// Quotes an argument if the shell would split or expand it.
fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    let is_plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if is_plain {
        arg.into_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
