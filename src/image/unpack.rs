//! Layer unpacking: one OCI image layer (a tar stream, plain, gzip or zstd) into a directory
//! that serves as an overlayfs lower dir.
//!
//! Owns decompression, the layer's diff_id (sha256 of the uncompressed tar), turning tar
//! entries into files, directories, links, device nodes and fifos with their owner, mode, mtime
//! and xattrs, and converting OCI whiteouts into the overlayfs form (`.wh.NAME` becomes a 0/0
//! character device `NAME`, `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its directory).
//! As the image spec says, a whiteout hides only what lower layers hold: when this layer itself
//! already holds `NAME`, a non-directory stays as it is and a directory is marked opaque instead.
//! The layer's own `trusted.overlay.*` / `user.overlay.*` xattrs are dropped (they would forge
//! overlayfs metadata).
//!
//! Must not write outside `dest`: every entry path is taken relative to `dest` (absolute paths are refused; a leading
//! `./` is dropped), `..` components are refused, and each parent component is checked to be a
//! real directory, never a symlink, before anything is created below it (only this process writes
//! into `dest`, so check-then-use is sound). Symlinks are written verbatim and never followed.
//! Must not hold a layer in memory (every buffer is bounded) nor verify the compressed digest
//! (the caller's reader does that; both the uncompressed and the compressed stream are drained to
//! their end so it sees every byte). Knows nothing of registries or the image store.
//!
//! Error kinds: a layer that is corrupt (bad compression or tar framing), unsafe (escapes `dest`)
//! or unsupported is [`ErrorKind::FailedPrecondition`], like any other bad image
//! (`ImageError::BadImage`); a failed layer stream is `FailedPrecondition` when the reader says
//! `InvalidData` (the digest did not match) and [`ErrorKind::Unavailable`] otherwise (network);
//! a local filesystem failure is [`ErrorKind::Internal`].

mod stream;
#[cfg(test)]
mod tests;
mod write;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::error::ErrorKind;
use stream::{Budget, Hashing, Limited, Source, SourceFailure, Zstd};
use write::Writer;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI or Docker layer media type (including the non-distributable and foreign
    /// variants); `None` for a media type that is not a known layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar, trailing blocks included.
    pub diff_id: String,
    /// Uncompressed bytes.
    pub size: u64,
    /// Tar members processed (GNU long-name and PAX `x` headers count as part of their member).
    pub entries: u64,
}

/// How many bytes a layer may unpack to (`[image] max_layer_size`, `max_image_size`).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Uncompressed bytes of this layer (and bytes written for it); 0 = unlimited.
    pub layer: u64,
    /// `(limit, used)`: uncompressed bytes of every layer of the image together, `used` shared
    /// by the layers of one pull; a limit of 0 = unlimited.
    pub image: Option<(u64, Arc<AtomicU64>)>,
}

/// Which size limit an unpack passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `[image] max_layer_size`.
    Layer(u64),
    /// `[image] max_image_size`.
    Image(u64),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Layer(n) => write!(
                f,
                "layer unpacks to more than {n} bytes ([image] max_layer_size)"
            ),
            Exceeded::Image(n) => write!(
                f,
                "image unpacks to more than {n} bytes ([image] max_image_size)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A size limit was passed: a decompression bomb, or an image larger than allowed.
    #[error("{0}")]
    TooLarge(Exceeded),
    /// The caller's reader failed: the blob's digest did not match, or the download broke.
    #[error("reading layer stream: {0}")]
    Stream(#[source] io::Error),
    /// The compression or the tar framing is broken.
    #[error("corrupt layer: {what}: {source}")]
    Corrupt { what: String, source: io::Error },
    /// The entry would write outside the destination or through a symlink.
    #[error("unsafe layer entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The entry cannot be unpacked as described (bad name, missing link target, ...).
    #[error("invalid layer entry {entry:?}: {reason}")]
    Invalid { entry: String, reason: String },
    /// A local filesystem operation failed.
    #[error("unpacking layer entry {entry:?} at {path}: {source}")]
    Io {
        entry: String,
        path: PathBuf,
        source: io::Error,
    },
}

impl UnpackError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            UnpackError::Stream(e) if e.kind() == io::ErrorKind::InvalidData => {
                ErrorKind::FailedPrecondition
            }
            // The blob being saved as it streams hit a full disk.
            UnpackError::Stream(e) if ErrorKind::of_io(e) == ErrorKind::ResourceExhausted => {
                ErrorKind::ResourceExhausted
            }
            UnpackError::Stream(_) => ErrorKind::Unavailable,
            UnpackError::Corrupt { .. }
            | UnpackError::Unsafe { .. }
            | UnpackError::Invalid { .. } => ErrorKind::FailedPrecondition,
            UnpackError::Io { source, .. } => ErrorKind::of_io(source),
            UnpackError::TooLarge(_) => ErrorKind::ResourceExhausted,
        }
    }
}

/// Unpacks the layer stream into `dest`, an existing empty directory, as an overlayfs lower dir.
///
/// Never writes outside `dest`. Blocking. Reads `reader` to its end even past the tar archive's
/// end, so a reader that verifies a digest at EOF can fail the unpack. On error the caller
/// removes `dest`.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    dest: &Path,
) -> Result<Unpacked, UnpackError> {
    unpack_layer_limited(reader, compression, dest, &Limits::default())
}

/// [`unpack_layer`] within `limits`: past one, [`UnpackError::TooLarge`] (the caller removes
/// `dest`, as after any error).
pub fn unpack_layer_limited<R: Read>(
    reader: R,
    compression: Compression,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let failure = SourceFailure::default();
    let budget = Budget::new(limits);
    let mut source = BufReader::with_capacity(
        64 * 1024,
        Source {
            inner: reader,
            failure: &failure,
        },
    );
    let result = unpack_stream(&mut source, compression, dest, &failure, &budget);
    let result = match (result, budget.exceeded()) {
        (Err(_), Some(what)) => Err(UnpackError::TooLarge(what)),
        (result, _) => result,
    };
    if result.is_ok() {
        tracing::trace!(dest = %dest.display(), "layer unpacked");
    }
    result
}

/// Decompresses, hashes and unpacks, then drains both streams.
fn unpack_stream(
    source: &mut impl BufRead,
    compression: Compression,
    dest: &Path,
    failure: &SourceFailure,
    budget: &Budget<'_>,
) -> Result<Unpacked, UnpackError> {
    let decompressed: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(&mut *source),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut *source)),
        Compression::Zstd => Box::new(Zstd::new(&mut *source)),
    };
    let limited = Limited {
        inner: decompressed,
        budget,
    };
    let mut archive = tar::Archive::new(Hashing::new(limited));
    let entries = unpack_entries(&mut archive, dest, failure, budget)?;

    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| stream_error(failure, e, || "after the tar archive".into()))?;
    let (diff_id, size) = rest.finish();
    io::copy(source, &mut io::sink())
        .map_err(|e| stream_error(failure, e, || "after the compressed data".into()))?;
    Ok(Unpacked {
        diff_id,
        size,
        entries,
    })
}

/// Writes every entry; returns how many there were.
fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    failure: &SourceFailure,
    budget: &Budget<'_>,
) -> Result<u64, UnpackError> {
    let mut writer = Writer::new(dest, failure);
    writer.budget = Some(budget);
    let mut count = 0u64;
    let mut previous = String::new();
    let entries = archive
        .entries()
        .map_err(|e| stream_error(failure, e, || "reading the archive".into()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| stream_error(failure, e, || format!("entry after {previous:?}")))?;
        previous = writer.entry(&mut entry)?;
        count += 1;
    }
    writer.finish()?;
    Ok(count)
}

/// An error while reading decompressed data: the caller's reader failing, or a corrupt layer.
fn stream_error(
    failure: &SourceFailure,
    error: io::Error,
    what: impl FnOnce() -> String,
) -> UnpackError {
    match failure.take() {
        Some(original) => UnpackError::Stream(original),
        None => UnpackError::Corrupt {
            what: what(),
            source: error,
        },
    }
}
