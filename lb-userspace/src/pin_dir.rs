//! `lb uninstall`'s care with the pin directory: [`remove`] takes away a directory only if it
//! is lb's, and only what lb pins in it.
//!
//! Everything is done through one descriptor of the directory, opened without following a
//! symbolic link, and under its lock (the one a running daemon holds), so that what is checked
//! is what is removed: it is on bpffs, not the root of a mount (`statx`'s mount-root
//! attribute: other programs' pins may share a mount), writable by its owner only (whoever
//! owns it: root, or the daemon's user under the systemd unit), and holds nothing but the
//! daemon's maps (this build's or an earlier one's, all `lb_*`) and `links/` (the XDP links,
//! one per interface). Then each of those is unlinked by name from the descriptor, and the
//! emptied directory removed (by its path: an empty directory is all it can be by then).

use std::{
    ffi::{CStr, CString},
    fs::File,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use crate::loader::LoadError;

const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
/// The links' subdirectory.
const LINKS: &str = "links";

/// Removes `dir` and the daemon's pins in it, if it is lb's pin directory (see the module's
/// doc); otherwise refuses, naming why, and removes nothing.
pub fn remove(dir: &Path) -> Result<(), LoadError> {
    let pins = own(dir)?;
    let links = pins
        .entries
        .iter()
        .any(|name| name.as_bytes() == LINKS.as_bytes());
    if links {
        let links_dir = open_dir(Some(pins.fd.as_raw_fd()), Path::new(LINKS))
            .map_err(|source| io(&dir.join(LINKS), source))?;
        for name in entries(&links_dir).map_err(|source| io(&dir.join(LINKS), source))? {
            unlink(&links_dir, &name)
                .map_err(|source| io(&named(&dir.join(LINKS), &name), source))?;
        }
    }
    for name in &pins.entries {
        unlink(&pins.fd, name).map_err(|source| io(&named(dir, name), source))?;
    }
    std::fs::remove_dir(dir).map_err(|source| io(dir, source))
}

/// Checks that `dir` is lb's pin directory, and locks it: the check holds until the result
/// is dropped.
fn own(dir: &Path) -> Result<Owned, LoadError> {
    let refuse = |why: &str| LoadError::NotOurPins {
        dir: dir.to_owned(),
        why: why.to_owned(),
    };
    let fd = open_dir(None, dir).map_err(|source| match source.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => {
            refuse("it is a symbolic link or not a directory: name the directory itself")
        }
        _ => io(dir, source),
    })?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(if source.kind() == std::io::ErrorKind::WouldBlock {
            LoadError::PinDirInUse(dir.to_owned())
        } else {
            io(dir, source)
        });
    }
    if !is_bpffs(&fd).map_err(|source| io(dir, source))? {
        return Err(refuse("it is not on bpffs, where the daemon pins its maps"));
    }
    if is_mount_root(&fd).map_err(|source| io(dir, source))? {
        return Err(refuse(
            "it is a bpffs mount itself, which other programs' pins may share; give lb a \
             directory of its own on it",
        ));
    }
    let meta = File::from(fd.try_clone().map_err(|source| io(dir, source))?)
        .metadata()
        .map_err(|source| io(dir, source))?;
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(&format!(
            "its group or others may write it (mode {:o}): others' files may be in it",
            meta.mode() & 0o7777
        )));
    }
    let entries = entries(&fd).map_err(|source| io(dir, source))?;
    let mut foreign: Vec<String> = entries
        .iter()
        .map(|name| name.to_string_lossy().into_owned())
        // The maps of this build and of earlier ones (all named `lb_*`), and the links.
        .filter(|name| name != LINKS && !name.starts_with("lb_"))
        .collect();
    if !foreign.is_empty() {
        foreign.sort();
        return Err(refuse(&format!(
            "it holds what the daemon does not pin ({}): remove those yourself, or correct \
             pin_dir",
            foreign.join(", ")
        )));
    }
    Ok(Owned { fd, entries })
}

/// lb's pin directory, locked, and its entries.
struct Owned {
    fd: OwnedFd,
    entries: Vec<CString>,
}

/// `dir`/`name`, for messages.
fn named(dir: &Path, name: &CStr) -> PathBuf {
    dir.join(std::ffi::OsStr::from_bytes(name.to_bytes()))
}

fn io(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Opens the directory `path` (relative to `at`, if given) without following a symbolic link.
fn open_dir(at: Option<RawFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated and lives for the call; `at` is a descriptor the caller
    // holds open, or AT_FDCWD.
    let fd = unsafe { libc::openat(at.unwrap_or(libc::AT_FDCWD), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_bpffs(fd: &OwnedFd) -> std::io::Result<bool> {
    // SAFETY: `statfs` is plain old data; all-zero is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `stat` is a valid out-pointer for the call.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_type == BPF_FS_MAGIC)
}

fn is_mount_root(fd: &OwnedFd) -> std::io::Result<bool> {
    // SAFETY: `statx` is plain old data; all-zero is a valid value to be overwritten.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    let empty: &CStr = c"";
    // SAFETY: `fd` is open, the path is an empty NUL-terminated string (AT_EMPTY_PATH: the
    // descriptor itself), and `stat` is a valid out-pointer for the call.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            &raw mut stat,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let attribute = u64::try_from(libc::STATX_ATTR_MOUNT_ROOT).unwrap_or(0);
    if stat.stx_attributes_mask & attribute == 0 {
        return Err(std::io::Error::other(
            "the kernel does not say whether it is a mount's root (Linux 5.8 does)",
        ));
    }
    Ok(stat.stx_attributes & attribute != 0)
}

/// The names in the directory `fd` (not `.` and `..`), read through the descriptor.
fn entries(fd: &OwnedFd) -> std::io::Result<Vec<CString>> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    std::fs::read_dir(path)?
        .map(|entry| {
            let name = entry?.file_name();
            CString::new(name.as_bytes()).map_err(std::io::Error::other)
        })
        .collect()
}

/// Removes `name` from the directory `fd`: a pin (a file), or an empty directory.
fn unlink(fd: &OwnedFd, name: &CStr) -> std::io::Result<()> {
    // SAFETY: `fd` is open and `name` is NUL-terminated, both for the call.
    if unsafe { libc::unlinkat(fd.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EISDIR) {
        return Err(error);
    }
    // SAFETY: as above.
    if unsafe { libc::unlinkat(fd.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}
