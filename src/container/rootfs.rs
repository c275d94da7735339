//! The container root filesystem: an overlayfs of the image's layers with a per-container
//! upper and work dir.
//!
//! Lower dirs are passed through short symlinks (`<root>/l/<12 hex>` → the layer dir) so that
//! the mount option string stays under the kernel's one-page limit even with many layers; in a
//! pod user namespace they are idmapped clones staged under `<root>/i` (see `crate::idmap`),
//! equally short.
//! Blocking. Must not know about records.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// Mounts the overlay at `target`. `lowers` are top layer first.
pub fn mount(
    lowers: &[PathBuf],
    links_dir: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(links_dir)?;
    let mut short = Vec::with_capacity(lowers.len());
    for lower in lowers {
        let name = lower
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key: String = name
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(12)
            .collect();
        let link = links_dir.join(if key.len() == 12 { key } else { name });
        match std::fs::read_link(&link) {
            Ok(existing) if existing == *lower => {}
            Ok(_) => {
                std::fs::remove_file(&link)?;
                std::os::unix::fs::symlink(lower, &link)?;
            }
            Err(_) => match std::os::unix::fs::symlink(lower, &link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            },
        }
        short.push(link);
    }
    mount_overlay(&short, upper, work, target)
}

/// Mounts an overlay of `lowers` (top layer first, paths used as given) at `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir)?;
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if data.len() >= 4000 {
        return Err(std::io::Error::other(format!(
            "overlay options for {} layers are too long ({} bytes)",
            lowers.len(),
            data.len()
        )));
    }
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// Unmounts the overlay (and anything the runtime left stacked on it); not mounted is fine.
pub fn unmount(target: &Path) -> std::io::Result<()> {
    for _ in 0..8 {
        match rustix::mount::unmount(target, UnmountFlags::DETACH) {
            Ok(()) => continue,
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads a small file from inside the rootfs without following symlinks out of it: only plain
/// files directly at `rel` (e.g. `etc/passwd`), at most 1 MiB.
pub fn read_small(rootfs: &Path, rel: &str) -> Option<String> {
    let mut path = rootfs.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
    }
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    std::fs::read_to_string(&path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_refuses_symlinks_out_of_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("etc/group")).unwrap();
        assert!(read_small(dir.path(), "etc/passwd")
            .unwrap()
            .starts_with("root"));
        assert!(read_small(dir.path(), "etc/group").is_none());
        assert!(read_small(dir.path(), "etc/missing").is_none());
    }

    #[test]
    fn overlay_of_two_layers_shows_both_and_writes_go_up() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let l1 = dir.path().join("layers/aaaaaaaaaaaaaaaa");
        let l2 = dir.path().join("layers/bbbbbbbbbbbbbbbb");
        std::fs::create_dir_all(&l1).unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        std::fs::write(l1.join("a"), "1").unwrap();
        std::fs::write(l2.join("b"), "2").unwrap();
        let target = dir.path().join("rootfs");
        mount(
            &[l2.clone(), l1.clone()],
            &dir.path().join("l"),
            &dir.path().join("upper"),
            &dir.path().join("work"),
            &target,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(target.join("b")).unwrap(), "2");
        std::fs::write(target.join("c"), "3").unwrap();
        unmount(&target).unwrap();
        unmount(&target).unwrap();
        assert!(dir.path().join("upper/c").exists());
        assert!(!l1.join("c").exists());
    }
}
