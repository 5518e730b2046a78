//! `cargo xtask setup`: installs what building and testing need, on a fresh machine or again.
//!
//! Five steps, in order, each probed first and skipped when already satisfied:
//! Debian packages (LLVM 22 for bpf-linker, and the tools the tests and benchmarks use), rustup
//! components (`rust-src` for `-Z build-std`, clippy and rustfmt), bpf-linker 0.13.0 built
//! against LLVM 22, cargo-deny (the supply-chain checks), and bpffs mounted at `/sys/fs/bpf`
//! (mode 0700). Each step prints one line
//! (`setup: <step> ... ok (already ...)` or what it is doing); a failure says what to do.

use std::{env, ffi::OsString, fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::process::{Runner, describe, is_root, query};

/// Debian packages: LLVM 22 for bpf-linker, then the tools the tests and benchmarks run.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bpftool",
    "ethtool",
    "haproxy",
    "wrk",
    // h2load: `lb bench l7`'s HTTP/2 clients.
    "nghttp2-client",
    // The control-socket tests: a socket served by another user, a CLI run with other groups;
    // setpriv (util-linux) for the least-privilege tests too.
    "python3",
    "util-linux",
    // systemd-analyze: the least-privilege tests check the shipped unit.
    "systemd",
    // BIRD 2: the scale-out lab's router and nodes (each test starts its own instances), and
    // the check of the shipped BIRD files.
    "bird2",
    // Headless Chromium driven by ChromeDriver (WebDriver): the status page's test.
    "chromium",
    "chromium-driver",
    // `lb capture`'s test reads the pcapng file back with tcpdump.
    "tcpdump",
];

/// Rustup components, per toolchain (`None`: the toolchain cargo runs by default).
const RUSTUP_COMPONENTS: &[(Option<&str>, &str)] = &[
    (Some("nightly"), "rust-src"),
    (Some("nightly"), "clippy"),
    (None, "clippy"),
    (None, "rustfmt"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deny, for `cargo xtask deny` (the supply-chain checks, also a step of `cargo xtask test`).
pub const CARGO_DENY_VERSION: &str = "0.20.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

/// Runs every setup step.
pub fn run(runner: &Runner) -> Result<()> {
    let installed = install_apt_packages(runner)?;
    if installed.contains(&"bird2") {
        stop_packaged_bird(runner);
    }
    install_rustup_components(runner)?;
    install_bpf_linker(runner)?;
    install_cargo_deny(runner)?;
    mount_bpffs(runner)?;
    Ok(())
}

fn report(step: &str, outcome: &str) {
    println!("setup: {step} ... {outcome}");
}

/// Reports a step that did `what` (or, on a dry run, would have).
fn report_done(runner: &Runner, step: &str, what: &str) {
    if runner.is_dry_run() {
        report(step, "not done (dry run)");
    } else {
        report(step, &format!("ok ({what})"));
    }
}

/// Fails with a hint unless this process is root.
fn require_root(what: &str) -> Result<()> {
    if !is_root()? {
        bail!("setup needs root ({what}): run `sudo cargo xtask setup`");
    }
    Ok(())
}

/// Installs the missing packages; returns them.
fn install_apt_packages(runner: &Runner) -> Result<Vec<&'static str>> {
    const STEP: &str = "apt packages";
    let missing: Vec<&'static str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !is_apt_installed(package))
        .collect();
    if missing.is_empty() {
        report(STEP, "ok (already installed)");
        return Ok(missing);
    }
    report(STEP, &format!("missing {}", missing.join(" ")));
    require_root("apt-get, mount")?;
    let mut update = Command::new("apt-get");
    update
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive");
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    runner
        .run(&mut update)
        .and_then(|()| runner.run(&mut install))
        .context(
            "installing Debian packages failed; check `apt-get` output above and the network",
        )?;
    report_done(runner, STEP, &format!("installed {}", missing.join(", ")));
    Ok(missing)
}

/// The `bird2` package enables its own service: where systemd runs, the one this setup just
/// installed is stopped and disabled (the tests start their own BIRDs in namespaces; a BIRD
/// that was there before is left alone).
fn stop_packaged_bird(runner: &Runner) {
    const STEP: &str = "packaged bird.service";
    if !std::path::Path::new("/run/systemd/system").exists() {
        report(STEP, "ok (systemd is not running: nothing started it)");
        return;
    }
    let mut disable = Command::new("systemctl");
    disable.args(["disable", "--now", "bird.service"]);
    match runner.run(&mut disable) {
        Ok(()) => report_done(runner, STEP, "stopped and disabled"),
        Err(error) => report(STEP, &format!("left as it is ({error:#})")),
    }
}

fn is_apt_installed(package: &str) -> bool {
    query("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn install_rustup_components(runner: &Runner) -> Result<()> {
    const STEP: &str = "rustup components";
    let mut added = Vec::new();
    for &(toolchain, component) in RUSTUP_COMPONENTS {
        if is_component_installed(toolchain, component) {
            continue;
        }
        let mut cmd = rustup_component_command(toolchain, "add");
        cmd.arg(component);
        runner.run(&mut cmd).with_context(|| {
            format!(
                "`{}` failed; is rustup installed and online?",
                describe(&cmd)
            )
        })?;
        added.push(format!("{component} ({})", toolchain.unwrap_or("default")));
    }
    if added.is_empty() {
        report(STEP, "ok (already installed)");
    } else {
        report_done(runner, STEP, &format!("added {}", added.join(", ")));
    }
    Ok(())
}

/// `rustup component <verb>`, for `toolchain` if given.
fn rustup_component_command(toolchain: Option<&str>, verb: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", verb]);
    if let Some(toolchain) = toolchain {
        cmd.args(["--toolchain", toolchain]);
    }
    cmd
}

fn is_component_installed(toolchain: Option<&str>, component: &str) -> bool {
    let mut args = vec!["component", "list", "--installed"];
    if let Some(toolchain) = toolchain {
        args.extend(["--toolchain", toolchain]);
    }
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let target_suffixed = format!("{component}-");
    query("rustup", &args).is_some_and(|list| {
        list.lines()
            .any(|line| line == component || line.starts_with(&target_suffixed))
    })
}

fn install_bpf_linker(runner: &Runner) -> Result<()> {
    let step = format!("bpf-linker {BPF_LINKER_VERSION}");
    if has_bpf_linker() {
        report(&step, "ok (already installed)");
        return Ok(());
    }
    report(&step, "installing with LLVM 22 (about a minute)");
    let mut path = OsString::from(format!("{LLVM_PREFIX}/bin:"));
    path.push(env::var_os("PATH").unwrap_or_default());
    let mut cmd = runner.cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ])
    .args(["--no-default-features", "--features", "llvm-22"])
    .env("LLVM_PREFIX", LLVM_PREFIX)
    .env("PATH", path);
    runner.run(&mut cmd).context(
        "building bpf-linker failed; it needs llvm-22-dev and libpolly-22-dev (the apt step)",
    )?;
    if !runner.is_dry_run() && !has_bpf_linker() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed but `bpf-linker --version` disagrees; \
             put cargo's bin directory (~/.cargo/bin) first in PATH"
        );
    }
    report_done(runner, &step, "installed");
    Ok(())
}

pub fn install_cargo_deny(runner: &Runner) -> Result<()> {
    let step = format!("cargo-deny {CARGO_DENY_VERSION}");
    if has_cargo_deny() {
        report(&step, "ok (already installed)");
        return Ok(());
    }
    // Without optimisations: it builds in about half the time, and checks this workspace's
    // two hundred crates in a second either way.
    report(&step, "installing (a few minutes)");
    let mut cmd = runner.cargo();
    cmd.args([
        "install",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--locked",
        "--debug",
        "--force",
    ]);
    runner
        .run(&mut cmd)
        .context("building cargo-deny failed; see cargo's output above")?;
    if !runner.is_dry_run() && !has_cargo_deny() {
        bail!(
            "cargo-deny {CARGO_DENY_VERSION} was installed but `cargo deny --version` disagrees; \
             put cargo's bin directory (~/.cargo/bin) first in PATH"
        );
    }
    report_done(runner, &step, "installed");
    Ok(())
}

/// Whether `cargo deny` is the pinned version.
fn has_cargo_deny() -> bool {
    query("cargo", &["deny", "--version"]).is_some_and(|version| {
        version
            .split_whitespace()
            .any(|word| word == CARGO_DENY_VERSION)
    })
}

fn has_bpf_linker() -> bool {
    query("bpf-linker", &["--version"]).is_some_and(|version| {
        version
            .split_whitespace()
            .any(|word| word == BPF_LINKER_VERSION)
    })
}

fn mount_bpffs(runner: &Runner) -> Result<()> {
    let step = format!("bpffs at {BPFFS}");
    if is_bpffs_mounted()? {
        report(&step, "ok (already mounted)");
        return Ok(());
    }
    require_root("apt-get, mount")?;
    let mut cmd = Command::new("mount");
    // Root's only, as systemd mounts it (the kernel's default, 1777, lets anyone pin there).
    cmd.args(["-t", "bpf", "-o", "mode=0700", "bpf", BPFFS]);
    runner
        .run(&mut cmd)
        .context("mounting bpffs failed; the kernel needs CONFIG_BPF_SYSCALL")?;
    report_done(runner, &step, "mounted");
    Ok(())
}

fn is_bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}
