//! `cargo xtask clippy`: lints the workspace in two passes, like aya's own xtask, then the fuzz
//! crate.
//!
//! 1. Host crates on the default toolchain, all targets, warnings denied; then `lb-userspace`
//!    again without its default `lab` feature (the Debian package's build), all targets but the
//!    integration tests that need the lab: a module outside `lab`, `demo` and `bench` that
//!    used them, or their crates, would fail here.
//! 2. The eBPF crate on nightly for `bpfel-unknown-none` with `-Z build-std=core`, given the same
//!    `bpf_target_arch` cfg that aya-build passes when it builds the crate for real, in its own
//!    target directory so it does not invalidate the host build.
//! 3. The fuzz crate (`fuzz/`, a workspace of its own), all targets, on the default toolchain
//!    and in the host build's target directory: only the fuzz crate itself is linted anew.
//!
//! Every pass runs; the command fails afterwards if any found something.

use anyhow::{Result, bail};

use crate::process::Runner;

const EBPF_PACKAGE: &str = "lb-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";
const EBPF_TARGET_DIR: &str = "target/bpf-clippy";

/// Runs every pass, each even if an earlier one fails, so one run shows every finding.
pub fn run(runner: &Runner) -> Result<()> {
    let host = lint_host_crates(runner);
    let without_lab = lint_without_lab(runner);
    let ebpf = lint_ebpf_crate(runner);
    let fuzz = lint_fuzz_crate(runner);
    let failed: Vec<String> = [
        ("host crates", host),
        ("lb-userspace without the lab", without_lab),
        ("eBPF crate", ebpf),
        ("fuzz crate", fuzz),
    ]
    .into_iter()
    .filter_map(|(pass, result)| result.err().map(|err| format!("{pass}: {err:#}")))
    .collect();
    if !failed.is_empty() {
        bail!("clippy found problems (see above); {}", failed.join("; "));
    }
    Ok(())
}

fn lint_host_crates(runner: &Runner) -> Result<()> {
    let mut cmd = runner.cargo();
    cmd.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--all-targets",
    ])
    .args(["--", "-D", "warnings"]);
    runner.run(&mut cmd)
}

/// `lb-userspace` as the package builds it: `--no-default-features`. Its integration tests
/// that need the lab say so (`required-features`) and are left out; the unit tests are not.
fn lint_without_lab(runner: &Runner) -> Result<()> {
    let mut cmd = runner.cargo();
    cmd.args([
        "clippy",
        "-p",
        "lb-userspace",
        "--no-default-features",
        "--all-targets",
    ])
    .args(["--", "-D", "warnings"]);
    runner.run(&mut cmd)
}

fn lint_fuzz_crate(runner: &Runner) -> Result<()> {
    let mut cmd = runner.cargo();
    cmd.arg("clippy")
        .arg("--manifest-path")
        .arg(runner.root().join("fuzz/Cargo.toml"))
        .arg("--all-targets")
        .arg("--target-dir")
        .arg(runner.target_dir())
        .args(["--", "-D", "warnings"]);
    runner.run(&mut cmd)
}

fn lint_ebpf_crate(runner: &Runner) -> Result<()> {
    let mut cmd = runner.cargo();
    cmd.args([
        "+nightly",
        "clippy",
        "-p",
        EBPF_PACKAGE,
        "--target",
        EBPF_TARGET,
    ])
    .args(["-Z", "build-std=core", "--release"])
    .arg("--target-dir")
    .arg(runner.root().join(EBPF_TARGET_DIR))
    .args(["--", "-D", "warnings"])
    // aya-build's `build_ebpf` passes exactly this cfg (plus codegen and link flags that do
    // not change what clippy sees). With `--target`, these flags skip build scripts.
    .env("CARGO_ENCODED_RUSTFLAGS", bpf_target_arch_cfg())
    // As aya-build does: a RUSTC or wrapper inherited from the outer cargo would pin the
    // stable compiler. `cargo clippy` sets its own wrapper.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    runner.run(&mut cmd)
}

/// `--cfg=bpf_target_arch="<host arch>"`, with aya-build's riscv64 spelling.
fn bpf_target_arch_cfg() -> String {
    let arch = std::env::consts::ARCH;
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        arch
    };
    format!("--cfg=bpf_target_arch=\"{arch}\"")
}
