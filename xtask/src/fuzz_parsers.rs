//! `cargo xtask fuzz`: the parser fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer), each for a
//! while: the configuration file, sticky cookies (opening, and sealing round trips), `Cookie`
//! header surgery, the certificate reader and the request headers' handling. `cargo xtask
//! test` runs a short slice of each ([`run_targets`]).
//!
//! Flow: setup (the fuzz build embeds the eBPF programs, as every build of `lb-userspace`
//! does), `cargo install --locked cargo-fuzz` if it is missing, one `cargo +nightly fuzz
//! build`, then per target one `cargo +nightly fuzz run` with the committed seeds
//! (`fuzz/corpus/TARGET`, read only) and a scratch corpus it grows (`fuzz/target/corpus/TARGET`,
//! not committed). libFuzzer's output goes to `fuzz/target/logs/TARGET.log`; each target gets
//! one line: runs, time, outcome. A target passes when no input panics, none runs longer than
//! [`INPUT_TIMEOUT_S`] and the process stays under [`MEMORY_LIMIT_MB`] (RSS, and any single
//! allocation). A failure names the input that caused it (`fuzz/artifacts/TARGET/...`); replay
//! it with `cargo +nightly fuzz run TARGET PATH`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    process::{Runner, query},
    setup,
};

/// Seconds each target runs by default.
const DEFAULT_SECONDS: u64 = 60;
/// libFuzzer's `-timeout`: one input taking longer is a hang.
pub const INPUT_TIMEOUT_S: u64 = 10;
/// libFuzzer's `-rss_limit_mb` and `-malloc_limit_mb`.
pub const MEMORY_LIMIT_MB: u64 = 512;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct Options {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    seconds: u64,
    /// Run only this target (repeatable); all of `fuzz/fuzz_targets` by default.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Skip `setup` (faster when the machine is known to be ready).
    #[arg(long)]
    skip_setup: bool,
}

/// Runs setup, then the targets `options` name.
pub fn run(runner: &Runner, options: &Options) -> Result<ExitCode> {
    if !options.skip_setup {
        setup::run(runner)?;
    }
    let targets = if options.targets.is_empty() {
        list_targets(runner.root())?
    } else {
        let known = list_targets(runner.root())?;
        if let Some(unknown) = options.targets.iter().find(|t| !known.contains(t)) {
            bail!(
                "no fuzz target `{unknown}`; the targets are {}",
                known.join(", ")
            );
        }
        options.targets.clone()
    };
    run_targets(runner, &targets, Duration::from_secs(options.seconds))?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the fuzz crate and runs `targets` for `each`; fails naming every failed target and
/// the input that made it fail.
pub fn run_targets(runner: &Runner, targets: &[String], each: Duration) -> Result<()> {
    install_cargo_fuzz(runner)?;
    let mut build = fuzz_command(runner);
    build.arg("build");
    let started = Instant::now();
    runner.run(&mut build)?;
    println!("fuzz: built in {:.1}s", started.elapsed().as_secs_f64());
    let mut failures = Vec::new();
    for target in targets {
        let report = run_target(runner, target, each)?;
        println!("fuzz: {target}: {}", report.describe());
        if let Some(failure) = report.failure {
            failures.push(format!("{target}: {failure}"));
        }
    }
    if !failures.is_empty() {
        bail!("fuzz targets failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// The targets of the fuzz crate: the files of `fuzz/fuzz_targets`, sorted.
pub fn list_targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut targets = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            targets.push(stem.to_owned());
        }
    }
    targets.sort();
    Ok(targets)
}

fn install_cargo_fuzz(runner: &Runner) -> Result<()> {
    if query("cargo", &["fuzz", "--version"]).is_some() {
        return Ok(());
    }
    let mut cmd = runner.cargo();
    cmd.args(["install", "--locked", "cargo-fuzz"]);
    runner.run(&mut cmd)
}

/// `cargo +nightly fuzz` from the workspace root (it finds `fuzz/` there), building into
/// `fuzz/target` whatever `CARGO_TARGET_DIR` says: the instrumented build shares nothing with
/// the workspace's, and a second copy of it elsewhere would only cost a cold build. Without
/// the package variables `cargo run` gave this process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`,
/// ...): ring's build script watches some of them, and values that differ from a plain
/// `cargo fuzz`'s would rebuild ring and everything above it each time one follows the other.
fn fuzz_command(runner: &Runner) -> std::process::Command {
    let mut cmd = runner.cargo();
    cmd.args(["+nightly", "fuzz"])
        .env_remove("CARGO_TARGET_DIR");
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_package_variable) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The variables cargo sets for the package it runs (not the user's `CARGO_*` settings).
fn is_package_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || matches!(
            key,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
        )
}

/// How one target's run went.
struct Report {
    runs: Option<u64>,
    elapsed: Duration,
    /// What went wrong, naming the input; `None` if the target passed.
    failure: Option<String>,
}

impl Report {
    fn describe(&self) -> String {
        let runs = self
            .runs
            .map_or_else(|| "? runs".to_owned(), |runs| format!("{runs} runs"));
        let seconds = self.elapsed.as_secs_f64();
        let rate = self
            .runs
            .map(|runs| format!(" ({:.0}/s)", runs as f64 / seconds.max(0.001)))
            .unwrap_or_default();
        let outcome = self.failure.as_deref().unwrap_or("ok");
        format!("{runs} in {seconds:.1}s{rate}: {outcome}")
    }
}

/// Runs `target` for `each` with its seeds and scratch corpus, libFuzzer's output to its log.
fn run_target(runner: &Runner, target: &str, each: Duration) -> Result<Report> {
    let fuzz = runner.root().join("fuzz");
    let scratch = fuzz.join("target/corpus").join(target);
    let logs = fuzz.join("target/logs");
    let log_path = logs.join(format!("{target}.log"));
    let mut cmd = fuzz_command(runner);
    cmd.args(["run", target])
        .arg(&scratch)
        .arg(fuzz.join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={}", each.as_secs()))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={MEMORY_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MEMORY_LIMIT_MB}"))
        .arg("-print_final_stats=1");
    if runner.is_dry_run() {
        runner.run(&mut cmd)?;
        return Ok(Report {
            runs: None,
            elapsed: Duration::ZERO,
            failure: None,
        });
    }
    for dir in [&scratch, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    cmd.stdout(Stdio::null()).stderr(log);
    println!(
        "fuzz: {target}: {}s, libFuzzer's output in {}",
        each.as_secs(),
        log_path.display()
    );
    let started = Instant::now();
    let status = runner.status(&mut cmd)?;
    let elapsed = started.elapsed();
    let output =
        fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let failure = (!status.success()).then(|| failure_of(&output, &log_path, runner.root()));
    if failure.is_some() {
        print_tail(&output, 40);
    }
    Ok(Report {
        runs: runs_of(&output),
        elapsed,
        failure,
    })
}

/// The executed inputs, from `-print_final_stats`.
fn runs_of(output: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

/// What libFuzzer reported, and the input it saved (relative to the workspace root).
fn failure_of(output: &str, log: &Path, root: &Path) -> String {
    let kind = [
        ("libFuzzer: timeout", "hang (an input ran past the timeout)"),
        ("libFuzzer: out-of-memory", "out of memory (past the limit)"),
        ("libFuzzer: malloc limit", "allocation past the limit"),
        ("panicked at", "panic"),
        ("AddressSanitizer", "memory error (AddressSanitizer)"),
        ("libFuzzer: deadly signal", "crash"),
    ]
    .iter()
    .find(|(marker, _)| output.contains(marker))
    .map_or("failed", |(_, kind)| kind);
    let input = output
        .lines()
        .find_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| PathBuf::from(path.trim()));
    match input {
        Some(input) => {
            let input = input
                .strip_prefix(root)
                .unwrap_or(&input)
                .display()
                .to_string();
            format!("{kind}; input {input} (log {})", log.display())
        }
        None => format!("{kind}; no input saved (log {})", log.display()),
    }
}

fn print_tail(output: &str, lines: usize) {
    let all: Vec<&str> = output.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("  | {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_names_its_kind_and_input() {
        let output = "thread '<unnamed>' panicked at src/x.rs:1:1\n==1== ERROR: libFuzzer: \
                      deadly signal\nartifact_prefix='/r/fuzz/artifacts/config/'; Test unit \
                      written to /r/fuzz/artifacts/config/crash-ab12\n";
        assert_eq!(
            failure_of(output, Path::new("log"), Path::new("/r")),
            "panic; input fuzz/artifacts/config/crash-ab12 (log log)"
        );
    }

    #[test]
    fn the_run_count_comes_from_the_final_stats() {
        let output = "Done 1234 runs in 10 second(s)\nstat::number_of_executed_units: 1240\n";
        assert_eq!(runs_of(output), Some(1240));
    }
}
