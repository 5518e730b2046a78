//! `lb decap attach|detach --iface IF`: the backends' decapsulation program, attached so that
//! it stays after the command exits (its link is pinned under bpffs), and detached by removing
//! that pin.

use std::path::PathBuf;

use aya::programs::{links::FdLink, xdp::XdpLink};

use crate::loader::{AttachMode, DECAP_PROGRAM, Decap, LoadError, attach, interface_index};

/// Where the link of the decapsulation program on `interface` is pinned.
pub fn pin_path(interface: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lb-decap").join(interface)
}

/// Why `lb decap` failed.
#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "lb's decapsulation program is already attached to {0}; `lb decap detach --iface {0}` first"
    )]
    AlreadyAttached(String),
    #[error("lb's decapsulation program is not attached to {0} (no pin at {1})")]
    NotAttached(String, String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the link at {path}: {reason}")]
    Pin { path: String, reason: String },
}

/// Attaches the decapsulation program to `interface` and pins its link. Returns what the
/// backend needs besides, for the operator.
pub fn attach_decap(interface: &str, mode: AttachMode) -> Result<String, DecapError> {
    interface_index(interface)?;
    let path = pin_path(interface);
    if path.exists() {
        return Err(DecapError::AlreadyAttached(interface.to_owned()));
    }
    let mut decap = Decap::load()?;
    let (mode, link_id) = attach(&mut decap.ebpf, DECAP_PROGRAM, interface, mode)?;
    let link: XdpLink =
        decap
            .program()?
            .take_link(link_id)
            .map_err(|source| LoadError::Program {
                program: DECAP_PROGRAM,
                source,
            })?;
    let pin_error = |reason: String| DecapError::Pin {
        path: path.display().to_string(),
        reason,
    };
    let fd_link = FdLink::try_from(link).map_err(|e| {
        pin_error(format!(
            "the kernel attached the program without a BPF link ({e}), so it cannot outlive this command"
        ))
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DecapError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    fd_link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
    Ok(format!(
        "lb_decap attached to {interface} ({mode:?} mode); it stays attached until `lb decap detach --iface {interface}`.\n\
         This backend also needs:\n\
         - every VIP it serves on its loopback:  ip addr add VIP/32 dev lo   (IPv6: VIP/128)\n\
         - reverse-path filtering off:           sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{interface}.rp_filter=0\n\
         - no ARP answers for the VIP:           sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2\n"
    ))
}

/// Detaches the decapsulation program from `interface` (removes its pinned link).
pub fn detach_decap(interface: &str) -> Result<String, DecapError> {
    let path = pin_path(interface);
    if !path.exists() {
        return Err(DecapError::NotAttached(
            interface.to_owned(),
            path.display().to_string(),
        ));
    }
    std::fs::remove_file(&path).map_err(|source| DecapError::Io {
        what: format!("removing {}", path.display()),
        source,
    })?;
    Ok(format!("lb_decap detached from {interface}\n"))
}
