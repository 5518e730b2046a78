//! Running this workspace's `lb` binary, built in release mode, for `bench` and `demo`.
//!
//! `cargo run --release -p lb-userspace --bin lb -- <subcommand> <extra args>`; the child's exit
//! status becomes xtask's own, so a failing benchmark or demo fails `cargo xtask` the same way.

use std::{ffi::OsString, os::unix::process::ExitStatusExt as _, process::ExitCode};

use anyhow::Result;

use crate::process::{Runner, describe};

/// Runs `lb <subcommand...> <extra_args...>` and returns its exit code.
pub fn run(runner: &Runner, subcommand: &[&str], extra_args: &[OsString]) -> Result<ExitCode> {
    let mut cmd = runner.cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "lb",
        "--",
    ])
    .args(subcommand)
    .args(extra_args);
    let status = runner.status(&mut cmd)?;
    if status.success() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("xtask: `{}` failed ({status})", describe(&cmd));
    // A signal has no code: report it the way a shell does (128 + signal number).
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(1);
    Ok(ExitCode::from(code))
}
