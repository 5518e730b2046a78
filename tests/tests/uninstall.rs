//! `lb uninstall` removes the pin directory only when it is lb's: a directory of its own on
//! bpffs, writable by its owner only, holding nothing but the daemon's maps and
//! `links/` (real pins, made with bpftool). Anything else (a directory elsewhere, a bpffs
//! mount itself, a symbolic link, a directory holding other pins, one others may write, one a
//! daemon holds) is refused, naming the reason, and nothing is removed. Runs as
//! root, with bpffs at /sys/fs/bpf (`cargo xtask setup` mounts it) and bpftool.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const BPFFS: &str = "/sys/fs/bpf";

/// Directories a test made, removed on every exit path.
struct Made(Vec<PathBuf>);

impl Drop for Made {
    fn drop(&mut self) {
        for dir in &self.0 {
            drop(std::fs::remove_dir_all(dir));
        }
    }
}

/// A configuration with `pin_dir` and a control socket nothing listens on; `lb uninstall
/// --config` of it: (success, stdout, stderr).
fn uninstall(work: &Path, pin_dir: &Path) -> (bool, String, String) {
    let config = work.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[control]\nsocket = {:?}\n\n[datapath]\npin_dir = {:?}\n",
            work.join("lb.sock"),
            pin_dir
        ),
    )
    .unwrap();
    let output = Command::new(lb_bin())
        .args(["uninstall", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-uninstall-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bpffs_dir(name: &str) -> PathBuf {
    assert!(
        lb::loader::is_bpffs(Path::new(BPFFS)),
        "bpffs is not mounted at {BPFFS} (`cargo xtask setup` mounts it)"
    );
    let dir = Path::new(BPFFS).join(format!("lb-uninstall-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Pins a new map at `path` (with bpftool, as any BPF program's pin would be).
fn pin_map(path: &Path) {
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args([
            "type", "array", "key", "4", "value", "4", "entries", "1", "name", "lb_test",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create {}", path.display());
}

#[test]
fn lbs_own_pin_directory_is_removed() {
    let (work, pins) = (work_dir("own"), bpffs_dir("own"));
    let _made = Made(vec![work.clone(), pins.clone()]);
    std::fs::create_dir(pins.join("links")).unwrap();
    // Pins named as this build's map, an earlier build's, and a link's.
    pin_map(&pins.join(lb_common::maps::VIPS_V4));
    pin_map(&pins.join("lb_conns4_v1"));
    pin_map(&pins.join("links").join("veth0"));
    // An earlier build's map directory, empty.
    std::fs::create_dir(pins.join("lb_old")).unwrap();
    let (ok, stdout, stderr) = uninstall(&work, &pins);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("no interface is configured") && !stdout.contains("from  "),
        "{stdout}"
    );
    assert!(!pins.exists());
}

#[test]
fn a_pin_directory_a_daemon_holds_is_refused_and_kept() {
    use std::os::fd::AsRawFd as _;
    let (work, pins) = (work_dir("held"), bpffs_dir("held"));
    let _made = Made(vec![work.clone(), pins.clone()]);
    pin_map(&pins.join(lb_common::maps::VIPS_V4));
    // The lock a running daemon holds.
    let held = std::fs::File::open(&pins).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let (ok, _, stderr) = uninstall(&work, &pins);
    assert!(!ok, "refused");
    assert!(
        stderr.contains("another lb daemon uses the pin directory"),
        "{stderr}"
    );
    assert!(
        pins.join(lb_common::maps::VIPS_V4).exists(),
        "nothing removed"
    );
}

#[test]
fn a_pin_directory_others_may_write_is_refused_and_kept() {
    use std::os::unix::fs::PermissionsExt as _;
    let (work, pins) = (work_dir("mode"), bpffs_dir("mode"));
    let _made = Made(vec![work.clone(), pins.clone()]);
    pin_map(&pins.join(lb_common::maps::VIPS_V4));
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, _, stderr) = uninstall(&work, &pins);
    assert!(!ok, "refused");
    assert!(
        stderr.contains("others may write it (mode 777)"),
        "{stderr}"
    );
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (ok, _, stderr) = uninstall(&work, &pins);
    assert!(!ok, "refused");
    assert!(
        stderr.contains("others may write it (mode 775)"),
        "{stderr}"
    );
    assert!(
        pins.join(lb_common::maps::VIPS_V4).exists(),
        "nothing removed"
    );
}

#[test]
fn a_directory_off_bpffs_is_refused_and_kept() {
    let work = work_dir("elsewhere");
    let _made = Made(vec![work.clone()]);
    let pins = work.join("pins");
    std::fs::create_dir_all(&pins).unwrap();
    std::fs::write(pins.join("keep"), "an operator's file").unwrap();
    let (ok, _, stderr) = uninstall(&work, &pins);
    assert!(!ok, "refused");
    assert!(
        stderr.contains("not removing pin_dir") && stderr.contains("not on bpffs"),
        "{stderr}"
    );
    assert!(pins.join("keep").exists(), "nothing removed");
}

#[test]
fn a_directory_holding_other_pins_is_refused_and_kept() {
    let (work, pins) = (work_dir("foreign"), bpffs_dir("foreign"));
    let _made = Made(vec![work.clone(), pins.clone()]);
    std::fs::create_dir(pins.join("links")).unwrap();
    std::fs::create_dir(pins.join("someone-elses")).unwrap();
    let (ok, _, stderr) = uninstall(&work, &pins);
    assert!(!ok, "refused");
    assert!(stderr.contains("(someone-elses)"), "{stderr}");
    assert!(pins.join("links").exists(), "nothing removed");
}

/// A bpffs mounted for one test on a directory of its own, unmounted and removed on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        drop(Command::new("umount").arg(&self.0).status());
        drop(std::fs::remove_dir(&self.0));
    }
}

#[test]
fn a_bpffs_mount_itself_is_refused() {
    // A private mount: were the refusal broken, only this test's mount would be emptied.
    let work = work_dir("mount");
    let _made = Made(vec![work.clone()]);
    let mount = Mount(work.join("bpf"));
    std::fs::create_dir(&mount.0).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&mount.0)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting bpffs (run as root)");
    std::fs::create_dir(mount.0.join("links")).unwrap();
    let (ok, _, stderr) = uninstall(&work, &mount.0);
    assert!(!ok, "refused");
    assert!(stderr.contains("a bpffs mount itself"), "{stderr}");
    assert!(mount.0.join("links").exists(), "nothing removed");
}

#[test]
fn a_symbolic_link_is_refused() {
    let (work, pins) = (work_dir("link"), bpffs_dir("link"));
    let _made = Made(vec![work.clone(), pins.clone()]);
    let link = work.join("pins");
    std::os::unix::fs::symlink(&pins, &link).unwrap();
    let (ok, _, stderr) = uninstall(&work, &link);
    assert!(!ok, "refused");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(pins.exists(), "nothing removed");
}

/// The `lb` binary under test (`cargo build -p lb-userspace --bin lb`), checked to run as root.
fn lb_bin() -> PathBuf {
    lb_tests::require_root();
    lb::lab::daemon::lb_binary().expect("the lb binary")
}
