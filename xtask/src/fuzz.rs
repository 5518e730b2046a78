//! `cargo xtask fuzz-xdp`: setup, then the packet-path fuzzer (`fuzz-xdp` of the `lb-tests`
//! crate) in release mode: 10 million generated and mutated frames through each XDP program
//! unless told otherwise. `cargo xtask test` runs a bounded slice of it.

use std::{ffi::OsString, process::ExitCode};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    process::{Runner, is_root},
    setup,
};

/// Options of `cargo xtask fuzz-xdp`.
#[derive(Debug, Args)]
pub struct Options {
    /// Passed on to `fuzz-xdp` (`--frames N`, `--seed S`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs setup, then the fuzzer.
pub fn run(runner: &Runner, options: &Options) -> Result<ExitCode> {
    if !is_root()? {
        bail!("the fuzzer loads XDP programs: run `sudo cargo xtask fuzz-xdp`");
    }
    setup::run(runner)?;
    let mut cmd = runner.cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        "fuzz-xdp",
        "--",
    ])
    .args(&options.args);
    let status = runner.status(&mut cmd)?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
