//! The filesystem side of unpacking: one tar entry at a time into the layer directory.
//!
//! Owns path confinement: an entry path is made relative to the root (a leading `./` is
//! dropped), `..` is refused, and every parent component is checked with `lstat` to be a real
//! directory (missing ones are created 0755 root:root) before anything is created below it. The
//! final component is never followed either: an existing non-directory there is removed first,
//! files are created with `O_EXCL|O_NOFOLLOW`, and owner/mtime use `AT_SYMLINK_NOFOLLOW`. Only
//! this process writes into the root, so checking then using is sound. Must not read the stream
//! beyond the entry it is given.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dev, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, CWD,
};
use tar::EntryType;

use super::stream::{Budget, SourceFailure};
use super::{stream_error, UnpackError};

/// The whiteout prefix of the OCI layer format.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks its directory opaque: nothing of the lower layers shows through.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Copy buffer for file contents.
const BUFFER_SIZE: usize = 128 * 1024;

/// Writes the entries of one layer below `root`.
pub(super) struct Writer<'a> {
    root: PathBuf,
    failure: &'a SourceFailure,
    /// Charged with every byte written to a file (sparse entries write more than they read).
    pub(super) budget: Option<&'a Budget<'a>>,
    buf: Vec<u8>,
    /// Directory mtimes, applied by [`Writer::finish`] once nothing more is written into them.
    dir_times: BTreeMap<Vec<OsString>, Timespec>,
}

/// The metadata of one entry, PAX records applied.
struct Meta {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: Timespec,
    /// From `SCHILY.xattr.<name>` PAX records.
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// What an entry path already points at.
enum Existing {
    Missing,
    Dir,
    /// An overlayfs whiteout: a 0/0 character device.
    Whiteout,
    Other,
}

/// The special meaning of a `.wh.` name.
enum Whiteout<'n> {
    /// `.wh..wh..opq`: the directory is opaque.
    Opaque,
    /// Another `.wh..wh.` name: AUFS bookkeeping, ignored.
    Meta,
    /// `.wh.NAME`: NAME is deleted.
    Hide(&'n OsStr),
}

impl<'a> Writer<'a> {
    pub(super) fn new(root: &Path, failure: &'a SourceFailure) -> Self {
        Writer {
            root: root.to_path_buf(),
            failure,
            budget: None,
            buf: vec![0; BUFFER_SIZE],
            dir_times: BTreeMap::new(),
        }
    }

    /// Writes one entry; returns its name for error context.
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
    ) -> Result<String, UnpackError> {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(name);
        }
        let path = entry.path().map_err(|e| corrupt(&name, e))?;
        let rel = relative(&name, &path)?;
        if let Some(whiteout) = rel.last().and_then(|last| whiteout_of(last)) {
            self.whiteout(&name, &rel, whiteout)?;
            return Ok(name);
        }
        let meta = Meta::read(&name, entry)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&name, &rel, &meta, entry)?
            }
            EntryType::Directory => self.dir(&name, &rel, &meta)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| OsStr::from_bytes(&t).to_owned());
                self.symlink(&name, &rel, &meta, target)?
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(|e| corrupt(&name, e))?;
                self.hardlink(&name, &rel, target.as_deref())?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.node(&name, &rel, &meta, entry.header())?
            }
            other => {
                return Err(invalid(
                    &name,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ))
            }
        }
        Ok(name)
    }

    /// Applies the directory mtimes (deferred: writing into a directory changes its mtime).
    pub(super) fn finish(&mut self) -> Result<(), UnpackError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let name = display(&rel);
            let Some(path) = self
                .existing_dir(&rel)
                .map_err(|e| io_error(&name, &self.root, e))?
            else {
                continue; // replaced by a later entry
            };
            let times = Timestamps {
                last_access: mtime,
                last_modification: mtime,
            };
            sys(
                &name,
                &path,
                rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW),
            )?;
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        name: &str,
        rel: &[OsString],
        meta: &Meta,
        entry: &mut R,
    ) -> Result<(), UnpackError> {
        let path = self.place(name, rel)?;
        self.clear(name, &path)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = sys(
            name,
            &path,
            rustix::fs::open(&path, flags, Mode::from_raw_mode(0o600)),
        )?;
        let mut file = File::from(fd);
        self.copy(name, &path, entry, &mut file)?;
        sys(
            name,
            &path,
            rustix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)),
        )?;
        sys(name, &path, rustix::fs::fchmod(&file, meta.mode))?;
        set_xattrs(name, &path, meta, |key, value| {
            rustix::fs::fsetxattr(&file, key, value, XattrFlags::empty())
        })?;
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        sys(name, &path, rustix::fs::futimens(&file, &times))
    }

    fn copy(
        &mut self,
        name: &str,
        path: &Path,
        entry: &mut impl Read,
        file: &mut File,
    ) -> Result<(), UnpackError> {
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(stream_error(self.failure, e, || {
                        format!("content of entry {name:?}")
                    }))
                }
            };
            if let Some(budget) = self.budget {
                budget
                    .charge_written(n as u64)
                    .map_err(|e| stream_error(self.failure, e, || format!("entry {name:?}")))?;
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| io_error(name, path, e))?;
        }
    }

    fn dir(&mut self, name: &str, rel: &[OsString], meta: &Meta) -> Result<(), UnpackError> {
        let path = if rel.is_empty() {
            self.root.clone()
        } else {
            let path = self.place(name, rel)?;
            match existing(&path).map_err(|e| io_error(name, &path, e))? {
                Existing::Dir => {}
                Existing::Missing => sys(
                    name,
                    &path,
                    rustix::fs::mkdirat(CWD, &path, Mode::from_raw_mode(0o700)),
                )?,
                found => {
                    self.clear(name, &path)?;
                    sys(
                        name,
                        &path,
                        rustix::fs::mkdirat(CWD, &path, Mode::from_raw_mode(0o700)),
                    )?;
                    if matches!(found, Existing::Whiteout) {
                        // The lower directory was deleted by this layer: this one replaces it.
                        set_opaque(name, &path)?;
                    }
                }
            }
            path
        };
        self.set_path_meta(name, &path, meta, true)?;
        self.dir_times.insert(rel.to_vec(), meta.mtime);
        Ok(())
    }

    fn symlink(
        &mut self,
        name: &str,
        rel: &[OsString],
        meta: &Meta,
        target: Option<OsString>,
    ) -> Result<(), UnpackError> {
        let target = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(name, "symlink without a target"))?;
        let path = self.place(name, rel)?;
        self.clear(name, &path)?;
        sys(
            name,
            &path,
            rustix::fs::symlinkat(target.as_os_str(), CWD, &path),
        )?;
        self.set_path_meta(name, &path, meta, false)?;
        set_mtime(name, &path, meta.mtime)
    }

    /// A hard link to an entry unpacked earlier, resolved inside the root like any entry path.
    fn hardlink(
        &mut self,
        name: &str,
        rel: &[OsString],
        target: Option<&Path>,
    ) -> Result<(), UnpackError> {
        let target = target.ok_or_else(|| invalid(name, "hardlink without a target"))?;
        let target_rel = relative(name, target)?;
        let Some((target_last, target_parents)) = target_rel.split_last() else {
            return Err(invalid(name, "hardlink to the layer root"));
        };
        let target_dir = self
            .parent_dir(name, target_parents, false)
            .map_err(|e| about_target(e, target))?;
        let target_path = target_dir.join(target_last);
        match existing(&target_path).map_err(|e| io_error(name, &target_path, e))? {
            Existing::Missing => {
                return Err(invalid(
                    name,
                    format!("hardlink target {:?} is not in the layer", target.display()),
                ))
            }
            Existing::Dir => {
                return Err(invalid(
                    name,
                    format!("hardlink target {:?} is a directory", target.display()),
                ))
            }
            Existing::Whiteout | Existing::Other => {}
        }
        if target_rel == rel {
            return Ok(());
        }
        let path = self.place(name, rel)?;
        self.clear(name, &path)?;
        sys(
            name,
            &path,
            rustix::fs::linkat(CWD, &target_path, CWD, &path, AtFlags::empty()),
        )
    }

    fn node(
        &mut self,
        name: &str,
        rel: &[OsString],
        meta: &Meta,
        header: &tar::Header,
    ) -> Result<(), UnpackError> {
        let (file_type, dev) = match header.entry_type() {
            EntryType::Fifo => (FileType::Fifo, 0),
            kind => {
                let file_type = if kind == EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (file_type, device(name, header)?)
            }
        };
        let path = self.place(name, rel)?;
        self.clear(name, &path)?;
        sys(
            name,
            &path,
            rustix::fs::mknodat(CWD, &path, file_type, Mode::from_raw_mode(0o600), dev),
        )?;
        self.set_path_meta(name, &path, meta, true)?;
        set_mtime(name, &path, meta.mtime)
    }

    /// Turns an OCI whiteout into its overlayfs form; the `.wh.` file itself is never written.
    fn whiteout(
        &mut self,
        name: &str,
        rel: &[OsString],
        whiteout: Whiteout<'_>,
    ) -> Result<(), UnpackError> {
        let parents = rel.split_last().map_or(rel, |(_, parents)| parents);
        let dir = self.parent_dir(name, parents, true)?;
        let hidden = match whiteout {
            Whiteout::Opaque => return set_opaque(name, &dir),
            Whiteout::Meta => {
                tracing::debug!(entry = name, "ignoring aufs whiteout metadata");
                return Ok(());
            }
            Whiteout::Hide(hidden) => hidden,
        };
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(unsafe_entry(name, "whiteout of an invalid name"));
        }
        let path = dir.join(hidden);
        // A whiteout only deletes what the lower layers hold; an entry of this layer stays.
        match existing(&path).map_err(|e| io_error(name, &path, e))? {
            Existing::Missing => sys(
                name,
                &path,
                rustix::fs::mknodat(CWD, &path, FileType::CharacterDevice, Mode::empty(), 0),
            ),
            // This layer's directory replaces the lower one rather than merging with it.
            Existing::Dir => set_opaque(name, &path),
            Existing::Whiteout | Existing::Other => Ok(()),
        }
    }

    /// Where the non-root entry `rel` goes, its parent directories made sure of.
    fn place(&self, name: &str, rel: &[OsString]) -> Result<PathBuf, UnpackError> {
        let (last, parents) = rel
            .split_last()
            .ok_or_else(|| invalid(name, "only a directory may stand for the layer root"))?;
        Ok(self.parent_dir(name, parents, true)?.join(last))
    }

    /// Walks `parents` below the root without following symlinks: each must be a directory
    /// (created 0755 root:root when missing and `create`). Returns the last one's path.
    fn parent_dir(
        &self,
        name: &str,
        parents: &[OsString],
        create: bool,
    ) -> Result<PathBuf, UnpackError> {
        let mut dir = self.root.clone();
        for (i, component) in parents.iter().enumerate() {
            dir.push(component);
            let shown = || display(&parents[..=i]);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(
                        name,
                        format!("path component {:?} is a symlink", shown()),
                    ))
                }
                Ok(_) => {
                    return Err(invalid(
                        name,
                        format!("path component {:?} is not a directory", shown()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    let mode = Mode::from_raw_mode(0o755);
                    sys(name, &dir, rustix::fs::mkdirat(CWD, &dir, mode))?;
                    sys(
                        name,
                        &dir,
                        rustix::fs::chmodat(CWD, &dir, mode, AtFlags::empty()),
                    )?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(invalid(
                        name,
                        format!("path component {:?} does not exist", shown()),
                    ))
                }
                Err(e) => return Err(io_error(name, &dir, e)),
            }
        }
        Ok(dir)
    }

    /// `rel`'s path if it and all its parents are still real directories.
    fn existing_dir(&self, rel: &[OsString]) -> io::Result<Option<PathBuf>> {
        let mut dir = self.root.clone();
        for component in rel {
            dir.push(component);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(dir))
    }

    /// Removes whatever is at `path` (later entries win); the parents are already checked.
    fn clear(&self, name: &str, path: &Path) -> Result<(), UnpackError> {
        let removed = match existing(path).map_err(|e| io_error(name, path, e))? {
            Existing::Missing => return Ok(()),
            Existing::Dir => std::fs::remove_dir_all(path),
            Existing::Whiteout | Existing::Other => std::fs::remove_file(path),
        };
        removed.map_err(|e| io_error(name, path, e))
    }

    /// Owner, then mode (chown clears setuid/setgid), then xattrs of a path whose last component
    /// is not followed. Symlinks have no mode of their own.
    fn set_path_meta(
        &self,
        name: &str,
        path: &Path,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), UnpackError> {
        let owner = rustix::fs::chownat(
            CWD,
            path,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        sys(name, path, owner)?;
        if chmod {
            sys(
                name,
                path,
                rustix::fs::chmodat(CWD, path, meta.mode, AtFlags::empty()),
            )?;
        }
        set_xattrs(name, path, meta, |key, value| {
            rustix::fs::lsetxattr(path, key, value, XattrFlags::empty())
        })
    }
}

impl Meta {
    fn read<R: Read>(name: &str, entry: &mut tar::Entry<R>) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| corrupt(name, e))? & 0o7777;
        let uid = Uid::from_raw(id(
            name,
            "uid",
            header.uid().map_err(|e| corrupt(name, e))?,
        )?);
        let gid = Gid::from_raw(id(
            name,
            "gid",
            header.gid().map_err(|e| corrupt(name, e))?,
        )?);
        let secs = header.mtime().map_err(|e| corrupt(name, e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| corrupt(name, e))? {
            for record in pax {
                let record = record.map_err(|e| corrupt(name, e))?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    mtime = pax_time(record.value_bytes()).unwrap_or(mtime);
                } else if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((
                        OsStr::from_bytes(xattr).to_owned(),
                        record.value_bytes().to_vec(),
                    ));
                }
            }
        }
        Ok(Meta {
            mode: Mode::from_raw_mode(mode),
            uid,
            gid,
            mtime,
            xattrs,
        })
    }
}

/// The entry path as components below the root: `.` dropped, `..` and absolute paths refused
/// (no image builder writes absolute names; a layer that does is hand-crafted).
fn relative(name: &str, path: &Path) -> Result<Vec<OsString>, UnpackError> {
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(c) => components.push(c.to_owned()),
            std::path::Component::CurDir => {}
            std::path::Component::RootDir => {
                return Err(unsafe_entry(
                    name,
                    format!("path {:?} is absolute", path.display()),
                ))
            }
            std::path::Component::ParentDir | std::path::Component::Prefix(_) => {
                return Err(unsafe_entry(
                    name,
                    format!("path {:?} contains \"..\"", path.display()),
                ))
            }
        }
    }
    Ok(components)
}

fn whiteout_of(last: &OsStr) -> Option<Whiteout<'_>> {
    let bytes = last.as_bytes();
    if bytes == OPAQUE_WHITEOUT.as_bytes() {
        return Some(Whiteout::Opaque);
    }
    let hidden = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes())?;
    if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
        return Some(Whiteout::Meta);
    }
    Some(Whiteout::Hide(OsStr::from_bytes(hidden)))
}

fn existing(path: &Path) -> io::Result<Existing> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(Existing::Dir),
        Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => Ok(Existing::Whiteout),
        Ok(_) => Ok(Existing::Other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Missing),
        Err(e) => Err(e),
    }
}

fn set_opaque(name: &str, dir: &Path) -> Result<(), UnpackError> {
    sys(
        name,
        dir,
        rustix::fs::lsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()),
    )
}

fn set_mtime(name: &str, path: &Path, mtime: Timespec) -> Result<(), UnpackError> {
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    sys(
        name,
        path,
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW),
    )
}

/// Sets the entry's xattrs, except overlayfs' own (a layer must not forge whiteouts or
/// redirects); a filesystem without xattr support is tolerated.
fn set_xattrs(
    name: &str,
    path: &Path,
    meta: &Meta,
    set: impl Fn(&OsStr, &[u8]) -> rustix::io::Result<()>,
) -> Result<(), UnpackError> {
    for (key, value) in &meta.xattrs {
        let bytes = key.as_bytes();
        if bytes.starts_with(b"trusted.overlay.") || bytes.starts_with(b"user.overlay.") {
            tracing::debug!(entry = name, xattr = ?key, "ignoring overlayfs xattr from layer");
            continue;
        }
        match set(key, value) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOTSUP) => {
                tracing::debug!(entry = name, xattr = ?key, "xattr not supported by the filesystem, skipped")
            }
            Err(e) => return Err(io_error(name, path, e.into())),
        }
    }
    Ok(())
}

fn device(name: &str, header: &tar::Header) -> Result<Dev, UnpackError> {
    let major = header
        .device_major()
        .map_err(|e| corrupt(name, e))?
        .unwrap_or(0);
    let minor = header
        .device_minor()
        .map_err(|e| corrupt(name, e))?
        .unwrap_or(0);
    Ok(rustix::fs::makedev(major, minor))
}

fn id(name: &str, what: &str, value: u64) -> Result<u32, UnpackError> {
    u32::try_from(value)
        .ok()
        .filter(|&v| v != u32::MAX)
        .ok_or_else(|| invalid(name, format!("{what} {value} out of range")))
}

/// A PAX time, `<secs>[.<fraction>]`.
fn pax_time(value: &[u8]) -> Option<Timespec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, fraction) = value.split_once('.').unwrap_or((value, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let tv_nsec = if tv_sec < 0 { 0 } else { digits.parse().ok()? };
    Some(Timespec { tv_sec, tv_nsec })
}

/// Says that a path error is about the hardlink's target.
fn about_target(error: UnpackError, target: &Path) -> UnpackError {
    let prefix = |reason: String| format!("hardlink target {:?}: {reason}", target.display());
    match error {
        UnpackError::Unsafe { entry, reason } => UnpackError::Unsafe {
            entry,
            reason: prefix(reason),
        },
        UnpackError::Invalid { entry, reason } => UnpackError::Invalid {
            entry,
            reason: prefix(reason),
        },
        other => other,
    }
}

fn display(components: &[OsString]) -> String {
    components
        .iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn sys<T>(name: &str, path: &Path, result: rustix::io::Result<T>) -> Result<T, UnpackError> {
    result.map_err(|e| io_error(name, path, e.into()))
}

fn io_error(name: &str, path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        entry: name.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(name: &str, source: io::Error) -> UnpackError {
    UnpackError::Corrupt {
        what: format!("entry {name:?}"),
        source,
    }
}

fn unsafe_entry(name: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: name.to_string(),
        reason: reason.into(),
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Invalid {
        entry: name.to_string(),
        reason: reason.into(),
    }
}
