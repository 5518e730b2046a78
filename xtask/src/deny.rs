//! `cargo xtask deny`: cargo-deny's checks of the dependencies (advisories, licences, duplicate
//! versions, sources) of the workspace and of the fuzz crate, with the configuration in
//! `deny.toml`.
//!
//! Advisories come from the RustSec database snapshot committed in `supply-chain/advisory-db`
//! (its commit and date in `SNAPSHOT`), because CI machines of this kind cannot reach GitHub:
//! before each run the snapshot is made the git repository cargo-deny reads (under
//! `target/advisory-dbs`, its commit dated as the snapshot, so that cargo-deny's staleness limit
//! in `deny.toml` counts from the snapshot's date), and cargo-deny runs offline, after `cargo
//! fetch` has downloaded every package of the lock files (those of other platforms too).
//! `--refresh` first replaces the snapshot with the database's current state, where GitHub is
//! reachable.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{process::Runner, setup};

/// The RustSec database, as `deny.toml` names it.
const DB_URL: &str = "https://github.com/rustsec/advisory-db";
/// Where cargo-deny looks for [`DB_URL`] under `deny.toml`'s `db-path`: the URL's last
/// segment and cargo-deny's hash of the URL (it says so when it cannot find it).
const DB_DIR: &str = "advisory-db-3157b0e258782691";
/// The snapshot in the repository, and what of the database it keeps.
const SNAPSHOT_DIR: &str = "supply-chain/advisory-db";
const SNAPSHOT_PARTS: &[&str] = &["crates", "rust", "LICENSE.txt", "LICENSES"];

#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Replace the advisory database snapshot with the database's current state first (needs
    /// access to GitHub); commit the change.
    #[arg(long)]
    refresh: bool,
}

/// Installs cargo-deny if needed, prepares the advisory database, and runs every check.
pub fn run(runner: &Runner, options: &Options) -> Result<()> {
    setup::install_cargo_deny(runner)?;
    let snapshot = runner.root().join(SNAPSHOT_DIR);
    if options.refresh {
        refresh(runner, &snapshot)?;
    }
    let (commit, date) = read_snapshot(&snapshot)?;
    println!("deny: advisory database snapshot {commit} of {date}");
    prepare_db(runner, &snapshot, &date)?;
    // The workspace, then the fuzz crate (a workspace of its own, with its own lock file).
    for manifest in ["Cargo.toml", "fuzz/Cargo.toml"] {
        // cargo-deny reads every package of the lock file, those of other platforms too, and
        // offline it finds only what is already downloaded: a build downloads what the host
        // needs, so a new machine has not got the rest.
        let mut fetch = runner.cargo();
        fetch.args(["fetch", "--locked", "--manifest-path", manifest]);
        runner
            .run(&mut fetch)
            .with_context(|| format!("downloading the packages of {manifest}"))?;
        let mut cmd = runner.cargo();
        cmd.args(["deny", "--manifest-path", manifest, "--locked", "--offline"])
            .arg("check");
        runner.run(&mut cmd).with_context(|| {
            format!("cargo-deny found a problem in {manifest} (above); deny.toml says what is allowed and why")
        })?;
    }
    Ok(())
}

/// The snapshot's database commit and its date (ISO 8601), from `SNAPSHOT`.
fn read_snapshot(snapshot: &Path) -> Result<(String, String)> {
    let path = snapshot.join("SNAPSHOT");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .with_context(|| format!("{} has no `{name}` line", path.display()))
    };
    Ok((field("commit:")?, field("date:")?))
}

/// Makes the snapshot a git repository where cargo-deny looks for the database, unless it is
/// there already.
fn prepare_db(runner: &Runner, snapshot: &Path, date: &str) -> Result<()> {
    let db = runner
        .root()
        .join("target")
        .join("advisory-dbs")
        .join(DB_DIR);
    let stamp = db.join(".snapshot-date");
    if fs::read_to_string(&stamp).is_ok_and(|made| made == date) {
        return Ok(());
    }
    if runner.is_dry_run() {
        println!(
            "deny: would copy {} to {}",
            snapshot.display(),
            db.display()
        );
        return Ok(());
    }
    if db.exists() {
        fs::remove_dir_all(&db).with_context(|| format!("removing {}", db.display()))?;
    }
    fs::create_dir_all(&db).with_context(|| format!("making {}", db.display()))?;
    for part in SNAPSHOT_PARTS {
        copy_tree(&snapshot.join(part), &db.join(part))?;
    }
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&db)
            .args([
                "-c",
                "user.name=lb xtask",
                "-c",
                "user.email=xtask@localhost",
            ])
            .args(args)
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date);
        runner.run(&mut cmd)
    };
    git(&["init", "--quiet", "--initial-branch=main"])?;
    git(&["add", "--all"])?;
    git(&[
        "commit",
        "--quiet",
        "--message",
        "RustSec advisory database snapshot",
    ])?;
    fs::write(&stamp, date).with_context(|| format!("writing {}", stamp.display()))
}

/// Replaces the snapshot with a fresh shallow clone's content.
fn refresh(runner: &Runner, snapshot: &Path) -> Result<()> {
    let clone = runner.root().join("target").join("advisory-db-refresh");
    if clone.exists() {
        fs::remove_dir_all(&clone).with_context(|| format!("removing {}", clone.display()))?;
    }
    let mut cmd = Command::new("git");
    cmd.args(["clone", "--quiet", "--depth=1", DB_URL])
        .arg(&clone);
    runner
        .run(&mut cmd)
        .context("cloning the advisory database failed: --refresh needs access to GitHub")?;
    let show = Command::new("git")
        .arg("-C")
        .arg(&clone)
        .args(["show", "-s", "--format=%H%n%cI", "HEAD"])
        .output()
        .context("reading the clone's commit")?;
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    let mut lines = text.lines();
    let (Some(commit), Some(date)) = (lines.next(), lines.next()) else {
        bail!("git show gave no commit and date: {text:?}");
    };
    for part in SNAPSHOT_PARTS {
        let to = snapshot.join(part);
        if to.is_dir() {
            fs::remove_dir_all(&to).with_context(|| format!("removing {}", to.display()))?;
        }
        copy_tree(&clone.join(part), &to)?;
    }
    fs::write(
        snapshot.join("SNAPSHOT"),
        format!("{DB_URL}\ncommit: {commit}\ndate: {date}\n"),
    )
    .context("writing SNAPSHOT")?;
    fs::remove_dir_all(&clone).with_context(|| format!("removing {}", clone.display()))?;
    println!("deny: the snapshot is now {commit} of {date}: review and commit {SNAPSHOT_DIR}");
    Ok(())
}

/// Copies a file, or a directory and everything in it.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() {
        fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        return Ok(());
    }
    fs::create_dir_all(to).with_context(|| format!("making {}", to.display()))?;
    let entries = fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let name: PathBuf = entry.file_name().into();
        copy_tree(&entry.path(), &to.join(name))?;
    }
    Ok(())
}
