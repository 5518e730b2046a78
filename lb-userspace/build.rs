//! Builds the XDP programs (`lb-ebpf`) for the BPF target with aya-build, so that the `lb`
//! binary embeds them. Needs the nightly toolchain with `rust-src` and `bpf-linker`:
//! `cargo xtask setup` installs both.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
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
