//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure.
//!
//! Steps: setup, `cargo fmt --check` (the workspace and the fuzz crate), clippy (both passes),
//! the supply-chain checks (`cargo xtask deny`), unit tests (host crates), a slice of the parser fuzz targets ([`FUZZ_SLICE`] each, see
//! `fuzz_parsers`), then the privileged tests (`lb-tests`, root only), then the Debian package
//! (built, installed, tried and purged: `package`). Each step gets a header line; the run ends with one
//! summary line giving each step's duration, or naming the step that failed.
//! `--skip-setup` drops the first step; arguments after `--` go to the privileged test binary
//! (a test-name filter, `--nocapture`, ...).

use std::{
    ffi::OsString,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    clippy, deny, fuzz_parsers, package,
    process::{Runner, is_root},
    setup,
};

/// How long `cargo xtask test` runs each parser fuzz target.
const FUZZ_SLICE: Duration = Duration::from_secs(10);

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct Options {
    /// Skip `setup` (faster when the machine is known to be ready).
    #[arg(long)]
    skip_setup: bool,
    /// Passed to the privileged test run after `--test-threads=2`, e.g. a test name filter.
    #[arg(last = true)]
    privileged_args: Vec<OsString>,
}

/// One step of the run: a name for the header and summary, and what it does.
struct Step<'a> {
    name: &'static str,
    action: Box<dyn Fn() -> Result<()> + 'a>,
}

/// How a finished step went.
struct Outcome {
    name: &'static str,
    elapsed: Duration,
    is_ok: bool,
}

/// Runs the steps in order; fails naming the first step that failed.
pub fn run(runner: &Runner, options: &Options) -> Result<()> {
    let steps = plan(runner, options);
    let total = steps.len();
    let mut outcomes = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        println!("\n==> test: step {}/{total}: {}", index + 1, step.name);
        let started = Instant::now();
        let result = (step.action)();
        outcomes.push(Outcome {
            name: step.name,
            elapsed: started.elapsed(),
            is_ok: result.is_ok(),
        });
        if let Err(err) = result {
            let not_run: Vec<&str> = steps[index + 1..].iter().map(|step| step.name).collect();
            println!("\n{}", summarize(&outcomes, &not_run));
            bail!("test step `{}` failed: {err:#}", step.name);
        }
    }
    let dry_run = if runner.is_dry_run() {
        " (dry run)"
    } else {
        ""
    };
    println!("\n{}{dry_run}", summarize(&outcomes, &[]));
    Ok(())
}

/// The steps `options` ask for, in order.
fn plan<'a>(runner: &'a Runner, options: &'a Options) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    if !options.skip_setup {
        steps.push(Step {
            name: "setup",
            action: Box::new(|| setup::run(runner)),
        });
    }
    steps.push(Step {
        name: "fmt",
        action: Box::new(|| check_format(runner)),
    });
    steps.push(Step {
        name: "clippy",
        action: Box::new(|| clippy::run(runner)),
    });
    steps.push(Step {
        name: "supply chain",
        action: Box::new(|| deny::run(runner, &deny::Options::default())),
    });
    steps.push(Step {
        name: "unit tests",
        action: Box::new(|| run_unit_tests(runner)),
    });
    steps.push(Step {
        name: "parser fuzzing",
        action: Box::new(|| run_fuzz_slice(runner)),
    });
    steps.push(Step {
        name: "privileged tests",
        action: Box::new(|| run_privileged_tests(runner, &options.privileged_args)),
    });
    steps.push(Step {
        name: "package",
        action: Box::new(|| package::run(runner, &package::Options { check: true })),
    });
    steps
}

fn check_format(runner: &Runner) -> Result<()> {
    let mut cmd = runner.cargo();
    cmd.args(["fmt", "--all", "--", "--check"]);
    runner.run(&mut cmd)?;
    // The fuzz crate is a workspace of its own.
    let mut cmd = runner.cargo();
    cmd.args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]);
    runner.run(&mut cmd)
}

fn run_unit_tests(runner: &Runner) -> Result<()> {
    let mut cmd = runner.cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--exclude",
        "lb-tests",
    ]);
    runner.run(&mut cmd)
}

fn run_fuzz_slice(runner: &Runner) -> Result<()> {
    let targets = fuzz_parsers::list_targets(runner.root())?;
    fuzz_parsers::run_targets(runner, &targets, FUZZ_SLICE)
}

fn run_privileged_tests(runner: &Runner, extra_args: &[OsString]) -> Result<()> {
    if !is_root()? {
        bail!("the privileged tests (lb-tests) need root: run `sudo cargo xtask test`");
    }
    // The end-to-end tests run the `lb` binary (the daemon and its CLI), found next to the
    // test executables.
    let mut build = runner.cargo();
    build.args(["build", "-p", "lb-userspace", "--bin", "lb"]);
    runner.run(&mut build)?;
    // The upgrade test (daemon_l7_restart) hands over from this build to another one: the
    // release build of the same source.
    let mut release = runner.cargo();
    release.args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"]);
    runner.run(&mut release)?;
    let mut cmd = runner.cargo();
    cmd.args(["test", "-p", "lb-tests", "--", "--test-threads=2"])
        .args(extra_args);
    runner.run(&mut cmd)
}

/// One line: each step's duration, and which step failed and which did not run.
fn summarize(outcomes: &[Outcome], not_run: &[&str]) -> String {
    let total: Duration = outcomes.iter().map(|outcome| outcome.elapsed).sum();
    let steps: Vec<String> = outcomes
        .iter()
        .map(|outcome| {
            let failed = if outcome.is_ok { "" } else { " FAILED" };
            format!(
                "{} {}{failed}",
                outcome.name,
                format_duration(outcome.elapsed)
            )
        })
        .collect();
    let verdict = if outcomes.iter().all(|outcome| outcome.is_ok) && not_run.is_empty() {
        "all steps ok"
    } else {
        "stopped"
    };
    let mut line = format!(
        "==> test: {verdict} in {}: {}",
        format_duration(total),
        steps.join(", ")
    );
    if !not_run.is_empty() {
        line.push_str(&format!("; not run: {}", not_run.join(", ")));
    }
    line
}

/// `12.3s` under a minute, `4m05s` above.
fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &'static str, seconds: u64, is_ok: bool) -> Outcome {
        Outcome {
            name,
            elapsed: Duration::from_secs(seconds),
            is_ok,
        }
    }

    #[test]
    fn summary_lists_every_step_with_its_duration() {
        let outcomes = [outcome("fmt", 1, true), outcome("clippy", 65, true)];
        assert_eq!(
            summarize(&outcomes, &[]),
            "==> test: all steps ok in 1m06s: fmt 1.0s, clippy 1m05s"
        );
    }

    #[test]
    fn summary_names_the_failed_step_and_what_did_not_run() {
        let outcomes = [outcome("fmt", 2, false)];
        assert_eq!(
            summarize(&outcomes, &["clippy"]),
            "==> test: stopped in 2.0s: fmt 2.0s FAILED; not run: clippy"
        );
    }
}
