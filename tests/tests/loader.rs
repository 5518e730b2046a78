//! Loading and attaching: pinned maps are created under the pin directory and adopted by the
//! next load only if their shape matches; a missing interface or a pin directory outside bpffs
//! is a clear error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::path::PathBuf;

use lb::{
    datapath::{Datapath as _, RingGeometry},
    loader::{AttachMode, BALANCER_MAPS, Balancer, BalancerSpec, LoadError},
};

/// A pin directory on bpffs, removed (with its pins) on every exit path.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/{name}-{}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists() {
            std::fs::remove_dir_all(&self.0).expect("removing the pin directory");
        }
    }
}

fn spec(pin_dir: Option<PathBuf>, ring_size: u32) -> BalancerSpec {
    BalancerSpec {
        geometry: RingGeometry {
            ring_size,
            rings: 2,
        },
        conn_table_size: 4096,
        pin_dir,
    }
}

#[test]
fn pinned_maps_are_adopted_only_when_their_shape_matches() {
    lb_tests::require_root();
    let dir = PinDir::new("lbtest-pins");
    let (balancer, datapath) = Balancer::load(&spec(Some(dir.0.clone()), 251)).unwrap();
    for name in BALANCER_MAPS {
        assert!(dir.0.join(name).exists(), "{name} is pinned");
    }
    // Write something to find again.
    let mut datapath = datapath;
    lb::datapath::Datapath::write_ring(&mut datapath, 1, &[(7, 42)]).unwrap();
    drop((balancer, datapath));

    let (_balancer, adopted) = Balancer::load(&spec(Some(dir.0.clone()), 251)).unwrap();
    assert_eq!(
        adopted.read_ring(1).unwrap()[7],
        42,
        "the pinned ring map was adopted"
    );
    drop((_balancer, adopted));

    let error = Balancer::load(&spec(Some(dir.0.clone()), 257)).unwrap_err();
    assert!(
        matches!(&error, LoadError::PinnedMapMismatch { path, .. } if path.ends_with("lb_rings_v1")),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("remove the pinned maps"), "{message}");
}

#[test]
fn a_pin_directory_outside_bpffs_is_refused() {
    lb_tests::require_root();
    let dir = std::env::temp_dir().join(format!("lbtest-not-bpffs-{}", std::process::id()));
    let error = Balancer::load(&spec(Some(dir.clone()), 251)).unwrap_err();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("removing the test directory");
    }
    assert!(matches!(error, LoadError::NotBpffs(_)), "{error}");
    assert!(error.to_string().contains("mount -t bpf"), "{error}");
}

#[test]
fn attaching_to_a_missing_interface_says_so() {
    lb_tests::require_root();
    let (mut balancer, _datapath) = Balancer::load(&spec(None, 251)).unwrap();
    let error = balancer
        .attach("lbtest-nope0", AttachMode::Auto)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "interface \"lbtest-nope0\" not found; `ip link` lists interfaces"
    );
}
