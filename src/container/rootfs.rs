//! The container root filesystem: an overlayfs of the image's layers with a per-container
//! upper and work dir.
//!
//! Where the kernel has it (Linux ≥ 6.8) the overlay is built with the new mount API, one
//! `fsconfig("lowerdir+")` per layer: no option string, so no limit on layers or path lengths.
//! Older kernels get the classic option string, with lower dirs passed through short symlinks
//! (`<root>/l/<12 hex>` → the layer dir) to stay under the one-page limit (about 120 layers).
//! In a pod user namespace the lower dirs are idmapped clones staged under `<root>/i` (see
//! `crate::idmap`), equally short.
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
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir)?;
    }
    if let Some(done) = mount_layer_by_layer(lowers, upper, work, target, false) {
        return done;
    }
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
    mount_with_options(&short, upper, work, target, false)
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
    match mount_layer_by_layer(lowers, upper, work, target, false) {
        Some(done) => done,
        None => mount_with_options(lowers, upper, work, target, false),
    }
}

/// Mounts an overlay of `lowers` (top layer first, paths used as given) at `target`, read-only:
/// an image volume. The (empty) upper and work dirs are there because overlayfs refuses a
/// single lower layer without them on the classic mount path; nothing can be written to them.
pub fn mount_overlay_readonly(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir)?;
    }
    match mount_layer_by_layer(lowers, upper, work, target, true) {
        Some(done) => done,
        None => mount_with_options(lowers, upper, work, target, true),
    }
}

/// Unmounts every mount directly under `dir` (the image volumes of a bundle); a missing `dir`
/// is fine.
pub fn unmount_children(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        unmount(&entry?.path())?;
    }
    Ok(())
}

/// The new mount API (Linux ≥ 6.8): one `fsconfig("lowerdir+")` per layer, so no option string
/// and no length limit. `None` when the kernel does not know `lowerdir+` (or `fsopen`): the
/// caller falls back to the classic option string.
fn mount_layer_by_layer(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    readonly: bool,
) -> Option<std::io::Result<()>> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags,
        FsOpenFlags, MountAttrFlags, MoveMountFlags,
    };
    let fs = match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(_) => return None,
    };
    let mut first = true;
    for lower in lowers {
        match fsconfig_set_string(&fs, "lowerdir+", lower) {
            Ok(()) => first = false,
            Err(e) if first && e == rustix::io::Errno::INVAL => return None,
            Err(e) => return Some(Err(layer_error(lower, e))),
        }
    }
    let result = (|| {
        fsconfig_set_string(&fs, "upperdir", upper)?;
        fsconfig_set_string(&fs, "workdir", work)?;
        fsconfig_create(&fs)?;
        let attrs = if readonly {
            MountAttrFlags::MOUNT_ATTR_RDONLY
        } else {
            MountAttrFlags::empty()
        };
        let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
        move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })();
    Some(result.map_err(std::io::Error::from))
}

fn layer_error(lower: &Path, e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::new(
        std::io::Error::from(e).kind(),
        format!("overlay layer {}: {e}", lower.display()),
    )
}

/// The classic `mount(2)` with `lowerdir=a:b:...` (one page at most).
fn mount_with_options(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    readonly: bool,
) -> std::io::Result<()> {
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
        if readonly {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        },
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

    #[test]
    fn a_hundred_and_twenty_eight_long_layer_paths_fit_the_mount_options() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Real layer dirs: <root>/layers/<64 hex chain id>, far too long to list 128 of.
        let store = dir.path().join("a-long-image-store-path/layers");
        let lowers: Vec<PathBuf> = (0..128)
            .map(|i| {
                let layer = store.join(format!("{i:064x}"));
                std::fs::create_dir_all(&layer).unwrap();
                std::fs::write(layer.join(format!("f{i}")), "x").unwrap();
                layer
            })
            .collect();
        let plain: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(
            plain > 4096,
            "the test needs paths that would not fit: {plain}"
        );
        let target = dir.path().join("rootfs");
        mount(
            &lowers,
            &dir.path().join("l"),
            &dir.path().join("upper"),
            &dir.path().join("work"),
            &target,
        )
        .unwrap();
        let seen = std::fs::read_dir(&target).unwrap().count();
        unmount(&target).unwrap();
        assert_eq!(seen, 128);
    }

    #[test]
    fn a_readonly_overlay_of_one_layer_shows_it_and_refuses_writes() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join("a"), "1").unwrap();
        let volumes = dir.path().join("volumes");
        let target = volumes.join("0");
        mount_overlay_readonly(
            std::slice::from_ref(&layer),
            &dir.path().join("upper"),
            &dir.path().join("work"),
            &target,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "1");
        let err = std::fs::write(target.join("b"), "2").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::ROFS.raw_os_error())
        );
        unmount_children(&volumes).unwrap();
        // The classic option string path (kernels before 6.8) is read-only too.
        mount_with_options(
            std::slice::from_ref(&layer),
            &dir.path().join("upper"),
            &dir.path().join("work"),
            &target,
            true,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "1");
        let err = std::fs::write(target.join("b"), "2").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::ROFS.raw_os_error())
        );
        unmount_children(&volumes).unwrap();
        std::fs::remove_dir_all(&volumes).unwrap();
        assert!(layer.join("a").exists());
        assert!(!layer.join("b").exists());
    }

    #[test]
    fn the_classic_option_string_path_mounts_too() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (l1, l2) = (dir.path().join("l1"), dir.path().join("l2"));
        for (l, f) in [(&l1, "a"), (&l2, "b")] {
            std::fs::create_dir_all(l).unwrap();
            std::fs::write(l.join(f), f).unwrap();
        }
        let target = dir.path().join("rootfs");
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        for d in [&upper, &work, &target] {
            std::fs::create_dir_all(d).unwrap();
        }
        mount_with_options(&[l2, l1], &upper, &work, &target, false).unwrap();
        let mut seen: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        unmount(&target).unwrap();
        seen.sort();
        assert_eq!(seen, ["a", "b"]);
    }
}
