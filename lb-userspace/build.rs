//! Builds the XDP programs (`lb-ebpf`) for the BPF target with aya-build, so that the `lb`
//! binary embeds them. Needs the nightly toolchain with `rust-src` and `bpf-linker`:
//! `cargo xtask setup` installs both. Also stamps the git commit the binary is built from
//! (`LB_GIT_COMMIT`, for `lb --version`).

use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The commit of the work tree (12 hex digits, `-modified` if tracked files differ from it), or
/// `LB_GIT_COMMIT` as given (a build from a source package), or `unknown`.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=LB_GIT_COMMIT");
    if let Ok(given) = std::env::var("LB_GIT_COMMIT") {
        return given;
    }
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Built again when HEAD moves (a commit, a checkout) or the index changes (an edit staged).
    for path in ["HEAD", "index"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(file) = git(&["rev-parse", "--git-path", &head])
    {
        println!("cargo:rerun-if-changed={file}");
    }
    // And when a source changes (a build script that names what it watches is not run again
    // for anything else): `-modified` then says so, and goes once the tree is clean again.
    for path in [
        "src",
        "Cargo.toml",
        "../lb-common",
        "../lb-ebpf",
        "../Cargo.toml",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let modified = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    if modified {
        format!("{commit}-modified")
    } else {
        commit
    }
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rustc-env=LB_GIT_COMMIT={}", git_commit());
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("the workspace has no lb-ebpf package"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("lb-ebpf's manifest has no directory"))?
        .as_str();
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed (the compiler output is above); if the toolchain is \
         missing, `cargo xtask setup` installs it",
    )
}
