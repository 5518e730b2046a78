//! `cargo xtask bench compare --base REV`: today's packet path against an earlier one, in the
//! same run.
//!
//! The `lb` of REV is built from `git archive` in `target/bench-base/<commit>/` (kept, so the
//! next comparison starts at once), this workspace's `lb` as usual. Each round runs
//! `lb bench xdp --rounds 1` of both (base first in even rounds, last in odd ones, so drift
//! between rounds does not favour either), reads the cases both print and pairs them by
//! round: per-packet cost above the trivial `XDP_TX` program (each binary measures its own
//! baseline in the same process), and the live forwarding rate over the trivial program's.
//! The table gives medians with the minimum and maximum of the rounds.
//!
//! With `--l7` ([`run_l7`]): one `lb bench l7 --base BASE_LB --rounds N` of this tree's build,
//! which runs both builds' daemons side by side and pairs them by round itself.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::process::{Runner, describe};

/// Per-packet cases both versions measure.
const COST_CASES: [&str; 4] = [
    "TCP SYN to a VIP (new flow)",
    "established flow",
    "established flow, FIB next hop",
    "packet for no VIP",
];

/// Live-rate cases both versions measure.
const RATE_CASES: [&str; 2] = ["balancer, static next hop", "balancer, FIB next hop"];

/// What one `lb bench xdp --rounds 1` printed for the shared cases.
#[derive(Debug, Default)]
struct Sample {
    /// Nanoseconds per packet above the trivial program, per [`COST_CASES`].
    costs: Vec<f64>,
    /// Rate over the trivial program's, per [`RATE_CASES`].
    ratios: Vec<f64>,
}

/// The two `lb` binaries compared.
struct Builds {
    /// The base revision's full commit id.
    commit: String,
    base_lb: PathBuf,
    new_lb: PathBuf,
}

impl Builds {
    /// Checks `rounds`, then builds the `lb` of `base` and this tree's (release).
    fn make(runner: &Runner, base: &str, rounds: usize) -> Result<Self> {
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let commit = resolve(runner.root(), base)?;
        let base_lb = build_base(runner, &commit)?;
        let mut cmd = runner.cargo();
        cmd.args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"]);
        runner.run(&mut cmd)?;
        Ok(Self {
            commit,
            base_lb,
            new_lb: runner.target_dir().join("release/lb"),
        })
    }
}

/// Builds both binaries and runs the paired rounds.
pub fn run(
    runner: &Runner,
    base: &str,
    rounds: usize,
    extra: &[std::ffi::OsString],
) -> Result<ExitCode> {
    let Builds {
        commit,
        base_lb,
        new_lb,
    } = Builds::make(runner, base, rounds)?;
    if runner.is_dry_run() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut base_samples = Vec::new();
    let mut new_samples = Vec::new();
    for round in 0..rounds {
        let order: [(&Path, &mut Vec<Sample>); 2] = if round % 2 == 0 {
            [(&base_lb, &mut base_samples), (&new_lb, &mut new_samples)]
        } else {
            [(&new_lb, &mut new_samples), (&base_lb, &mut base_samples)]
        };
        for (lb, samples) in order {
            eprintln!("compare: round {}/{rounds}: {}", round + 1, lb.display());
            samples.push(measure(lb, extra)?);
        }
    }
    print!("{}", render(&commit, &base_samples, &new_samples));
    Ok(ExitCode::SUCCESS)
}

/// Builds both binaries and runs this tree's `lb bench l7` with REV's beside it.
pub fn run_l7(
    runner: &Runner,
    base: &str,
    rounds: usize,
    extra: &[std::ffi::OsString],
) -> Result<ExitCode> {
    let Builds {
        commit,
        base_lb,
        new_lb,
    } = Builds::make(runner, base, rounds)?;
    let mut bench = Command::new(new_lb);
    bench
        .args(["bench", "l7", "--rounds", &rounds.to_string(), "--base"])
        .arg(&base_lb)
        .args(extra);
    println!("base build: {commit}");
    runner.run(&mut bench)?;
    Ok(ExitCode::SUCCESS)
}

/// The full commit id of `rev`.
fn resolve(root: &Path, rev: &str) -> Result<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("could not run git")?;
    if !output.status.success() {
        bail!("{rev:?} names no commit of this repository");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Extracts `commit` into `target/bench-base/<commit>/src` (once) and builds its `lb` there;
/// returns the binary's path.
fn build_base(runner: &Runner, commit: &str) -> Result<PathBuf> {
    let dir = runner.target_dir().join("bench-base").join(commit);
    let src = dir.join("src");
    if !src.join("Cargo.toml").exists() && !runner.is_dry_run() {
        // Extract into a fresh directory, renamed into place only when complete.
        let partial = dir.join("src.partial");
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        extract(runner.root(), commit, &partial)?;
        fs::rename(&partial, &src)
            .with_context(|| format!("moving {} into place", partial.display()))?;
    }
    let mut cmd = runner.cargo();
    cmd.current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"]);
    runner.run(&mut cmd)?;
    Ok(dir.join("target/release/lb"))
}

/// `git archive COMMIT | tar -x -C dest`.
fn extract(root: &Path, commit: &str, dest: &Path) -> Result<()> {
    let mut archive = Command::new("git");
    archive
        .args(["archive", "--format=tar", commit])
        .current_dir(root)
        .stdout(Stdio::piped());
    println!("$ {} | tar -x -C {}", describe(&archive), dest.display());
    let mut git = archive.spawn().context("could not run git archive")?;
    let stdout = git.stdout.take().context("git archive has no stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(stdout)
        .status()
        .context("could not run tar")?;
    let git = git.wait().context("waiting for git archive")?;
    if !git.success() || !tar.success() {
        bail!("extracting {commit} failed (git archive {git}, tar {tar})");
    }
    Ok(())
}

/// Runs `lb bench xdp --rounds 1` and reads the shared cases from its report.
fn measure(lb: &Path, extra: &[std::ffi::OsString]) -> Result<Sample> {
    let mut cmd = Command::new(lb);
    cmd.args(["bench", "xdp", "--rounds", "1"])
        .args(extra)
        .stderr(Stdio::inherit());
    let output = cmd
        .output()
        .with_context(|| format!("could not run `{}`", describe(&cmd)))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(&cmd), output.status);
    }
    let report = String::from_utf8_lossy(&output.stdout);
    parse(&report).with_context(|| format!("reading the report of `{}`:\n{report}", describe(&cmd)))
}

/// The shared cases of one report. A row is `  CASE  NUMBERS...`: the case ends at the first
/// run of two spaces; a spread prints as `median [min-max]`.
fn parse(report: &str) -> Result<Sample> {
    let rows: Vec<(&str, Vec<&str>)> = report
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("  ")?;
            let (case, rest) = line.split_once("  ")?;
            Some((case.trim(), rest.split_whitespace().collect()))
        })
        .collect();
    let row = |case: &str| {
        rows.iter()
            .find(|(name, _)| *name == case)
            .map(|(_, tokens)| tokens.as_slice())
            .with_context(|| format!("no row {case:?}"))
    };
    let number = |token: &str| {
        token
            .parse::<f64>()
            .with_context(|| format!("{token:?} is not a number"))
    };
    let mut sample = Sample::default();
    for case in COST_CASES {
        // balancer, trivial program, difference: the medians are the unbracketed tokens.
        let medians: Vec<&str> = row(case)?
            .iter()
            .copied()
            .filter(|token| !token.starts_with('['))
            .collect();
        let difference = medians
            .get(2)
            .with_context(|| format!("row {case:?} has no difference"))?;
        sample.costs.push(number(difference)?);
    }
    for case in RATE_CASES {
        let tokens = row(case)?;
        let ratio = tokens
            .iter()
            .position(|token| *token == "ratio")
            .and_then(|at| tokens.get(at + 1))
            .with_context(|| format!("row {case:?} has no ratio"))?;
        sample.ratios.push(number(ratio)?);
    }
    Ok(sample)
}

/// Median, minimum and maximum.
fn spread(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    format!("{median:6.2} [{:.2}-{:.2}]", sorted[0], sorted[n - 1])
}

/// The side-by-side table.
fn render(commit: &str, base: &[Sample], new: &[Sample]) -> String {
    let short = &commit[..commit.len().min(10)];
    let mut out = format!(
        "\nPer-packet cost above the trivial XDP_TX program (ns per packet; median [min-max] of \
         {} paired rounds)\n  {:32} {:>22} {:>22} {:>22}\n",
        base.len(),
        "case",
        format!("base {short}"),
        "this tree",
        "this tree - base"
    );
    for (i, case) in COST_CASES.iter().enumerate() {
        let b: Vec<f64> = base.iter().map(|s| s.costs[i]).collect();
        let n: Vec<f64> = new.iter().map(|s| s.costs[i]).collect();
        let d: Vec<f64> = n.iter().zip(&b).map(|(n, b)| n - b).collect();
        out += &format!(
            "  {case:32} {:>22} {:>22} {:>22}\n",
            spread(&b),
            spread(&n),
            spread(&d)
        );
    }
    out += &format!(
        "\nLive forwarding rate over the trivial program's (median [min-max] of {} paired rounds)\n  \
         {:32} {:>22} {:>22} {:>22}\n",
        base.len(),
        "case",
        format!("base {short}"),
        "this tree",
        "this tree / base"
    );
    for (i, case) in RATE_CASES.iter().enumerate() {
        let b: Vec<f64> = base.iter().map(|s| s.ratios[i]).collect();
        let n: Vec<f64> = new.iter().map(|s| s.ratios[i]).collect();
        let r: Vec<f64> = n.iter().zip(&b).map(|(n, b)| n / b).collect();
        out += &format!(
            "  {case:32} {:>22} {:>22} {:>22}\n",
            spread(&b),
            spread(&n),
            spread(&r)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Per-packet cost through BPF_PROG_TEST_RUN (ns per packet; median [min-max] of rounds; CPU 1)
  case                                           balancer       trivial XDP_TX    difference (paired)
  TCP SYN to a VIP (new flow)          180.2 [180.2-180.2]   40.1 [40.1-40.1]   140.1 [140.1-140.1]   <= +150 met
  established flow                      90.5 [90.5-90.5]   40.0 [40.0-40.0]     50.5 [50.5-50.5]   <= +40 not met
  established flow, 802.1Q-tagged       95.0 [95.0-95.0]   40.0 [40.0-40.0]     55.0 [55.0-55.0]
  established flow, FIB next hop       120.0 [120.0-120.0]   40.0 [40.0-40.0]     80.0 [80.0-80.0]
  ICMP too big, to the flow's backend  130.0 [130.0-130.0]   40.0 [40.0-40.0]     90.0 [90.0-90.0]
  packet for no VIP                     38.0 [38.0-38.0]   40.0 [40.0-40.0]     -2.0 [-2.0--2.0]

Forwarding rate, live frames out of a veth to a counting XDP sink, 65536 flows (Mpps; median [min-max])
  trivial XDP_TX (MAC swap)               1.5 [1.5-1.5]   delivered 1.000
  balancer, static next hop               1.2 [1.2-1.2]   delivered 1.000   ratio 0.80 [0.80-0.80]   target >= 0.60 met
  balancer, FIB next hop                  1.1 [1.1-1.1]   delivered 1.000   ratio 0.73 [0.73-0.73]
";

    #[test]
    fn reads_the_shared_cases_and_skips_the_others() {
        let sample = parse(REPORT).unwrap();
        assert_eq!(sample.costs, [140.1, 50.5, 80.0, -2.0]);
        assert_eq!(sample.ratios, [0.80, 0.73]);
    }

    #[test]
    fn a_missing_case_is_named() {
        let report = REPORT.replace("established flow, FIB next hop", "renamed");
        let error = parse(&report).unwrap_err().to_string();
        assert!(error.contains("established flow, FIB next hop"), "{error}");
    }
}
