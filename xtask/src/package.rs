//! `cargo xtask package`: the Debian package, `target/package/lb_VERSION_ARCH.deb`, built with
//! `dpkg-deb` from a release binary without the lab and `packaging/`:
//!
//! | installed as | from |
//! | --- | --- |
//! | `/usr/bin/lb` | `--release --no-default-features` in `target/package-build` (debug symbols stripped) |
//! | `/lib/systemd/system/lb.service` | `packaging/lb.service`, `ExecStart` and `ExecReload` on `/usr/bin/lb` |
//! | `/usr/lib/sysusers.d/lb.conf` | `packaging/lb.sysusers`: the user `lb` (made by `postinst`) |
//! | `/etc/lb/lb.toml` (a conffile) | `packaging/lb.toml`, an example `lb check` passes |
//! | `/etc/logrotate.d/lb` (a conffile) | `packaging/lb.logrotate` |
//! | `/usr/share/man/man1/lb*.1.gz` | `lb man`: a page for `lb` and each of its commands |
//! | bash, zsh and fish completions | `lb completions SHELL` |
//! | `/usr/share/doc/lb/` | the README, the copyright, the BIRD examples |
//!
//! The binary is the daemon and its CLI only: built without the `lab` feature, it has no
//! `lb demo`, no `lb bench` and none of the lab's code (see the README's "Package" section).
//! It is built in a target directory of its own, so that the release `lb` with the lab
//! (`cargo xtask bench`, `demo`) and this one never replace each other. Before building,
//! `cargo tree` must show that the lab's crates ([`LAB_CRATES`]) are not among the binary's
//! dependencies. With `--check` (root), the package is then installed on this machine,
//! `lb --version` and `lb check` run on the example as installed, `lb help demo` and
//! `lb help bench` must be refused as unknown commands, and it is purged again.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::process::{Runner, is_root, query};

/// Options of `cargo xtask package`.
#[derive(Debug, Args)]
pub struct Options {
    /// Then install it here, run `lb --version` and `lb check` on its example, and purge it
    /// (root).
    #[arg(long)]
    pub check: bool,
}

/// The version of the binary `lb`, as `lb --version` says it (`lb 0.1.0` on its first line).
fn version(lb: &Path) -> Result<String> {
    let output = Command::new(lb)
        .arg("--version")
        .output()
        .context("lb --version")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("lb "))
        .map(str::to_owned)
        .context("`lb --version` did not start with `lb VERSION`")
}

/// Builds the package; with `--check`, installs, tries and purges it.
pub fn run(runner: &Runner, options: &Options) -> Result<()> {
    let deb = build(runner)?;
    if options.check {
        check(runner, &deb)?;
    }
    Ok(())
}

/// The crates only the lab, `lb demo` and `lb bench` use: the package's binary links none.
const LAB_CRATES: [&str; 2] = ["rcgen", "plotters"];

/// The commands the `lab` feature adds: the package's `lb` does not know them.
const LAB_COMMANDS: [&str; 2] = ["demo", "bench"];

/// Cargo's flags for the package's binary: release, without the `lab` feature.
const PACKAGE_BUILD: [&str; 6] = [
    "--release",
    "-p",
    "lb-userspace",
    "--bin",
    "lb",
    "--no-default-features",
];

/// Fails if a lab crate is among the normal dependencies of the package's build of `lb`.
fn check_no_lab_crates(runner: &Runner) -> Result<()> {
    let mut cargo = runner.cargo();
    cargo.args([
        "tree",
        "-p",
        "lb-userspace",
        "--no-default-features",
        "-e",
        "normal",
    ]);
    cargo.args(["--prefix", "none", "--format", "{p}"]);
    let output = cargo.output().context("running cargo tree")?;
    if !output.status.success() {
        bail!(
            "`cargo tree` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let linked: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| LAB_CRATES.contains(name))
        .collect();
    if !linked.is_empty() {
        bail!(
            "the package's lb depends on the lab's crates ({}): a module outside lab, demo and \
             bench uses them (`cargo tree -p lb-userspace --no-default-features -i CRATE`)",
            linked.join(", ")
        );
    }
    Ok(())
}

/// Builds the release binary (without the lab) and the package; returns the package's path.
pub fn build(runner: &Runner) -> Result<PathBuf> {
    let root = runner.root().to_owned();
    check_no_lab_crates(runner)?;
    // Its own target directory: target/release/lb is the build with the lab.
    let build_dir = runner.target_dir().join("package-build");
    let mut cargo = runner.cargo();
    cargo
        .arg("build")
        .args(PACKAGE_BUILD)
        .arg("--target-dir")
        .arg(&build_dir);
    runner.run(&mut cargo)?;
    let lb = build_dir.join("release/lb");
    let version = if runner.is_dry_run() {
        "VERSION".to_owned()
    } else {
        version(&lb)?
    };
    let arch = query("dpkg", &["--print-architecture"])
        .context("dpkg --print-architecture (a Debian system builds the package)")?
        .trim()
        .to_owned();
    let out = runner.target_dir().join("package");
    let stage = out.join(format!("lb_{version}_{arch}"));
    let deb = out.join(format!("lb_{version}_{arch}.deb"));
    if runner.is_dry_run() {
        println!(
            "[dry-run] would stage {} and build {}",
            stage.display(),
            deb.display()
        );
        return Ok(deb);
    }
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let packaging = root.join("packaging");

    let bin = stage.join("usr/bin/lb");
    copy(&lb, &bin, 0o755)?;
    if query("strip", &["--version"]).is_some() {
        runner.run(Command::new("strip").arg("--strip-debug").arg(&bin))?;
    }
    let unit = fs::read_to_string(packaging.join("lb.service")).context("reading lb.service")?;
    write(
        &stage.join("lib/systemd/system/lb.service"),
        &unit.replace("/usr/local/bin/lb", "/usr/bin/lb"),
        0o644,
    )?;
    copy(
        &packaging.join("lb.sysusers"),
        &stage.join("usr/lib/sysusers.d/lb.conf"),
        0o644,
    )?;
    copy(
        &packaging.join("lb.toml"),
        &stage.join("etc/lb/lb.toml"),
        0o644,
    )?;
    copy(
        &packaging.join("lb.logrotate"),
        &stage.join("etc/logrotate.d/lb"),
        0o644,
    )?;

    // Manual pages and completions, from the binary's own definitions.
    let man = stage.join("usr/share/man/man1");
    runner.run(Command::new(&lb).arg("man").arg("--dir").arg(&man))?;
    for page in fs::read_dir(&man).context("reading the manual pages")? {
        runner.run(Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/lb"),
        ("zsh", "usr/share/zsh/vendor-completions/_lb"),
        ("fish", "usr/share/fish/vendor_completions.d/lb.fish"),
    ] {
        let output = Command::new(&lb)
            .args(["completions", shell])
            .output()
            .context("lb completions")?;
        if !output.status.success() {
            bail!("`lb completions {shell}` failed");
        }
        write(
            &stage.join(path),
            &String::from_utf8_lossy(&output.stdout),
            0o644,
        )?;
    }

    let doc = stage.join("usr/share/doc/lb");
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    runner.run(Command::new("gzip").arg("-9n").arg(doc.join("README.md")))?;
    write(&doc.join("copyright"), COPYRIGHT, 0o644)?;
    for file in [
        "lb-node.conf",
        "bird-node.example.conf",
        "bird-router.example.conf",
    ] {
        copy(
            &packaging.join("bird").join(file),
            &doc.join("bird").join(file),
            0o644,
        )?;
    }

    let size_kb = disk_usage_kb(&stage)?;
    let debian = stage.join("DEBIAN");
    write(
        &debian.join("control"),
        &control(&version, &arch, size_kb),
        0o644,
    )?;
    write(
        &debian.join("conffiles"),
        "/etc/lb/lb.toml\n/etc/logrotate.d/lb\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    runner.run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Installs `deb`, runs the installed `lb --version` and `lb check` on the installed example,
/// checks a manual page and a completion are where they belong, and purges the package (also
/// when the install or a check failed). Refuses on a host where lb is installed already: the
/// purge would take its configuration.
fn check(runner: &Runner, deb: &Path) -> Result<()> {
    if !is_root()? {
        bail!("installing the package needs root: `sudo cargo xtask package --check`");
    }
    if runner.is_dry_run() {
        println!("[dry-run] would install, check and purge {}", deb.display());
        return Ok(());
    }
    if query("dpkg-query", &["-W", "-f=${Status}", "lb"]).is_some_and(|s| s.contains("installed")) {
        bail!(
            "the package lb is installed on this host: --check would purge it (and its /etc/lb); \
             try the package on another host, or remove it first"
        );
    }
    let user_before = query("getent", &["passwd", "lb"]).is_some();
    let installed = runner.run(Command::new("dpkg").arg("-i").arg(deb));
    let checked = installed.and_then(|()| -> Result<()> {
        runner.run(Command::new("/usr/bin/lb").arg("--version"))?;
        runner.run(Command::new("/usr/bin/lb").args(["check", "--config", "/etc/lb/lb.toml"]))?;
        for path in [
            "/usr/share/man/man1/lb.1.gz",
            "/usr/share/man/man1/lb-backend-add.1.gz",
            "/usr/share/bash-completion/completions/lb",
            "/lib/systemd/system/lb.service",
        ] {
            if !Path::new(path).exists() {
                bail!("the package did not install {path}");
            }
        }
        for path in [
            "/usr/share/man/man1/lb-demo.1.gz",
            "/usr/share/man/man1/lb-bench.1.gz",
        ] {
            if Path::new(path).exists() {
                bail!("the package installed {path}: its lb was built with the lab");
            }
        }
        check_no_lab_commands(Path::new("/usr/bin/lb"))?;
        if !user_before && query("getent", &["passwd", "lb"]).is_none() {
            bail!("the package did not make the user lb");
        }
        Ok(())
    });
    let purged = runner.run(Command::new("dpkg").args(["--purge", "lb"]));
    checked?;
    purged?;
    println!("package: installed, checked and purged");
    Ok(())
}

/// Fails unless `lb` refuses `help demo` and `help bench` as unknown commands (`help`, so that
/// a binary with the lab only prints a help text rather than start a lab).
fn check_no_lab_commands(lb: &Path) -> Result<()> {
    for command in LAB_COMMANDS {
        let output = Command::new(lb)
            .args(["help", command])
            .output()
            .with_context(|| format!("lb help {command}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || !stderr.contains("unrecognized subcommand") {
            bail!(
                "the installed lb knows `lb {command}` (`lb help {command}`: {}): it was built \
                 with the lab",
                output.status
            );
        }
    }
    println!("package: lb has no {} command", LAB_COMMANDS.join(" or "));
    Ok(())
}

fn control(version: &str, arch: &str, size_kb: u64) -> String {
    format!(
        "Package: lb\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: lb developers <lb@localhost>\n\
         Installed-Size: {size_kb}\n\
         Depends: libc6 (>= 2.36)\n\
         Recommends: bird2\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP and TLS load balancer\n \
         One daemon and its CLI: an XDP program forwards passthrough listeners' packets\n \
         (Maglev and a connection table, IP-in-IP to the backends); offload and bridging\n \
         listeners terminate TLS (rustls) and proxy HTTP, with sticky sessions, access logs,\n \
         the PROXY protocol and a status page. Backends, health and BPF maps are the\n \
         daemon's; `lb` drives it.\n"
    )
}

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: lb\n\
\n\
Files: *\n\
Copyright: the lb developers\n\
License: MIT or Apache-2.0\n \
The binary also contains the crates it is built from, each under a permissive licence\n \
(MIT, Apache-2.0, BSD, ISC, Unicode-3.0, Zlib; `cargo xtask deny` checks them).\n";

/// Makes the user `lb` (systemd-sysusers, else adduser) and has systemd read the unit.
const POSTINST: &str = "#!/bin/sh\n\
set -e\n\
if [ \"$1\" = configure ]; then\n\
    if command -v systemd-sysusers >/dev/null 2>&1; then\n\
        systemd-sysusers /usr/lib/sysusers.d/lb.conf\n\
    elif ! getent passwd lb >/dev/null; then\n\
        adduser --system --group --no-create-home --home /nonexistent lb\n\
    fi\n\
    if [ -d /run/systemd/system ]; then\n\
        systemctl daemon-reload || true\n\
    fi\n\
fi\n";

/// Stops the service before the binary goes (a removal; an upgrade restarts it after).
const PRERM: &str = "#!/bin/sh\n\
set -e\n\
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n\
    systemctl stop lb.service || true\n\
fi\n";

const POSTRM: &str = "#!/bin/sh\n\
set -e\n\
if [ -d /run/systemd/system ]; then\n\
    systemctl daemon-reload || true\n\
fi\n";

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &bytes, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// The kilobytes `dir` takes, as `Installed-Size` wants them.
fn disk_usage_kb(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok(bytes.div_ceil(1024))
}
