//! Idmapped mounts for pods with a user namespace (Linux ≥ 5.12; overlayfs on idmapped layers
//! ≥ 5.19).
//!
//! A container in a pod user namespace runs as an unprivileged host uid, but image layers and
//! volumes are owned by host ids. An idmapped mount shows files owned by host id `x` as the id
//! that `x` is inside the pod's user namespace (host 0 appears as the container's root), and
//! writes through it store the unmapped id. crius makes these itself, for every runtime: each
//! source is cloned detached (`open_tree(OPEN_TREE_CLONE)`), given the pod's user namespace
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`) and attached under a short staging directory
//! (`<root>/i/<container id prefix>/<n>`). The overlay rootfs is mounted on top of the staged
//! layers and the runtime bind-mounts staged volumes; after that the staging mounts are detached:
//! the overlay and the container's mount namespace keep their own references.
//!
//! Owns: the staging directories. Must not: know about containers or records. Blocking.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Sets the idmapping of the detached mount `tree` (and of its submounts when `recursive`).
fn set_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: `tree` and `userns` are open descriptors for the duration of the call; the empty
    // path is a valid NUL-terminated string; `attr` is a properly laid out `struct mount_attr`
    // whose size is passed alongside.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached clone of the mount at `src`, idmapped through the user namespace `userns`.
pub fn clone_idmapped(src: &Path, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, src, flags)?;
    set_idmap(tree.as_fd(), userns, recursive)?;
    Ok(tree)
}

/// Idmapped mounts staged for one container; detached and removed on [`Staging::release`] or
/// drop.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Staging {
    /// Creates the (empty) staging directory `dir`.
    pub fn new(dir: &Path) -> io::Result<Staging> {
        std::fs::create_dir_all(dir)?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
        })
    }

    /// Stages an idmapped clone of `src` and returns where it is attached. A file source is
    /// attached on a file, a directory on a directory.
    pub fn add(
        &mut self,
        src: &Path,
        userns: BorrowedFd<'_>,
        recursive: bool,
    ) -> io::Result<PathBuf> {
        let tree = clone_idmapped(src, userns, recursive)?;
        let target = self.dir.join(self.mounted.len().to_string());
        if std::fs::metadata(src)?.is_dir() {
            std::fs::create_dir(&target)?;
        } else {
            std::fs::File::create(&target)?;
        }
        rustix::mount::move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            &target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        self.mounted.push(target.clone());
        Ok(target)
    }

    /// Detaches every staged mount and removes the directory.
    pub fn release(&mut self) -> io::Result<()> {
        for path in self.mounted.drain(..) {
            detach(&path)?;
        }
        remove_dir(&self.dir)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "releasing idmapped staging mounts failed");
        }
    }
}

fn detach(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a staging directory and its (now empty) mount points, never recursing: should a
/// staged mount still be attached, this fails instead of deleting the source's files.
fn remove_dir(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Detaches and removes whatever staging directories a killed daemon left under `parent`.
pub fn clean_leftovers(parent: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut cleaned = 0;
    for entry in entries {
        let dir = entry?.path();
        if let Ok(inner) = std::fs::read_dir(&dir) {
            for staged in inner.flatten() {
                detach(&staged.path())?;
            }
        }
        remove_dir(&dir)?;
        cleaned += 1;
    }
    Ok(cleaned)
}
