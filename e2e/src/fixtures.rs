//! Test images, built reproducibly into one OCI image layout directory.
//!
//! This module owns the *content* of every image the e2e tests pull: it builds the layer
//! tarballs, configs, manifests and the index in pure Rust and writes them as an
//! [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md).
//! It does not start processes or talk to a registry (that is [`crate::registry`]).
//!
//! Reproducibility: every tar entry has mtime [`MTIME`], uid/gid 0 and no user/group names;
//! entries are sorted by path; gzip streams carry no file name and mtime 0; JSON is
//! serialized with sorted keys. Building twice gives byte-identical blobs, so digests are
//! stable for a given host `/bin/busybox` and a given `flate2` version (digests are not
//! hard-coded anywhere: tests read them from [`Layout`]).
//!
//! Images, tagged in `index.json` with [`REF_NAME_ANNOTATION`]:
//! - `busybox` ([`BUSYBOX`]): one layer with the host's static `/bin/busybox`, a symlink in
//!   `/bin` for every applet, `/etc/passwd`, `/etc/group`, `/root` and `/tmp` (mode 1777);
//!   linux/amd64, `Cmd ["sh"]`.
//! - `layered` ([`LAYERED`]): the busybox layer plus three layers exercising whiteouts; the
//!   resulting root filesystem is described on [`LAYERED_PRESENT`] / [`LAYERED_ABSENT`].
//! - `multiarch` ([`MULTIARCH`]): an image index with linux/amd64 (exactly the `busybox`
//!   manifest) and linux/arm64 (a tiny layer holding `/arch`, config architecture arm64).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::{Compression, GzBuilder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The annotation naming an image in `index.json` (what `oci:DIR:NAME` resolves).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Ref name of the single-layer busybox image.
pub const BUSYBOX: &str = "busybox";
/// Ref name of the four-layer whiteout image.
pub const LAYERED: &str = "layered";
/// Ref name of the amd64 + arm64 image index.
pub const MULTIARCH: &str = "multiarch";

/// mtime of every tar entry (the Unix epoch).
pub const MTIME: u64 = 0;

/// Where the busybox layer's binary is copied from (Debian package `busybox-static`).
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// `PATH` in every image config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Content of `/etc/passwd` in the busybox layer.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000:app:/tmp:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// Content of `/etc/group` in the busybox layer.
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// Paths (and, for regular files, their content) that must exist in the root filesystem
/// of `layered` after its four layers are applied in order, on top of everything in the
/// busybox layer (`/bin/sh`, `/etc/passwd`, ...):
///
/// | layer | adds / removes |
/// |---|---|
/// | 1 | the busybox layer (shared, same digest as `busybox`'s only layer) |
/// | 2 | `/data/keep`, `/data/gone`, `/dir-gone/a`, `/opq/old` |
/// | 3 | `/data/.wh.gone` (deletes `/data/gone`), `/.wh.dir-gone` (deletes the directory `/dir-gone`), `/opq/.wh..wh..opq` (hides everything below `/opq` from lower layers) and `/opq/new` |
/// | 4 | `/layer4` |
///
pub const LAYERED_PRESENT: &[(&str, Node)] = &[
    ("/bin/busybox", Node::Executable),
    ("/bin/sh", Node::Symlink("busybox")),
    ("/etc/passwd", Node::File(PASSWD)),
    ("/tmp", Node::Dir),
    ("/data", Node::Dir),
    ("/data/keep", Node::File("keep\n")),
    ("/opq", Node::Dir),
    ("/opq/new", Node::File("new\n")),
    ("/layer4", Node::File("layer4\n")),
];

/// What an expected path in an unpacked root filesystem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with exactly this content.
    File(&'static str),
    /// A regular file with mode 0755 (content not pinned).
    Executable,
    /// A symbolic link with this target.
    Symlink(&'static str),
}
/// Paths that must NOT exist in the unpacked `layered` root filesystem: deleted files and
/// directories and every whiteout marker (an unpacker must never materialize `.wh.` files).
pub const LAYERED_ABSENT: &[&str] = &[
    "/data/gone",
    "/data/.wh.gone",
    "/dir-gone",
    "/dir-gone/a",
    "/.wh.dir-gone",
    "/opq/old",
    "/opq/.wh..wh..opq",
];

/// Media types used by the fixtures and by registry pushes.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// A content-addressed blob: `sha256:<hex>` and its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// One layer: the compressed blob and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The gzip blob as stored in the layout and the registry.
    pub blob: Blob,
    /// `sha256` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

/// One image (a manifest, its config and its layers) as written to the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The OCI manifest blob.
    pub manifest: Blob,
    /// The config blob; its digest is the image ID.
    pub config: Blob,
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// Always `linux`.
    pub os: String,
    /// `amd64` or `arm64`.
    pub architecture: String,
}

impl Image {
    /// The image ID (digest of the config blob).
    pub fn image_id(&self) -> &str {
        &self.config.digest
    }

    /// The config's `rootfs.diff_ids`, lowest layer first.
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// An image index and the images it lists, in index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The OCI index blob.
    pub index: Blob,
    /// The listed images; `manifests[0]` is linux/amd64, `manifests[1]` linux/arm64.
    pub manifests: Vec<Image>,
}

impl Index {
    /// The listed image for `architecture`, if any.
    pub fn for_arch(&self, architecture: &str) -> Option<&Image> {
        self.manifests
            .iter()
            .find(|i| i.architecture == architecture)
    }
}

/// The OCI layout holding every fixture image, and their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The layout directory (holds `oci-layout`, `index.json`, `blobs/sha256/`).
    pub dir: PathBuf,
    /// `busybox`.
    pub busybox: Image,
    /// `layered`.
    pub layered: Image,
    /// `multiarch`.
    pub multiarch: Index,
}

impl Layout {
    /// The skopeo/containers-image reference of `name` in this layout (`oci:DIR:NAME`).
    pub fn oci_reference(&self, name: &str) -> String {
        format!("oci:{}:{name}", self.dir.display())
    }
}

/// Builds every fixture image into the OCI layout at `dir` (created if missing).
///
/// Blobs already present with identical content are not rewritten; `oci-layout` and
/// `index.json` are replaced atomically, so a concurrent reader never sees a partial
/// file. Other content of `dir` is left alone.
pub fn build_layout(dir: &Path) -> io::Result<Layout> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)
        .map_err(|e| with_context(e, format!("create layout dir {}", blobs.display())))?;

    let base = write_layer(dir, &busybox_layer()?)?;
    let busybox = write_image(dir, "amd64", vec![base.clone()])?;

    let mut layers = vec![base];
    for entries in [layered_layer2(), layered_layer3(), layered_layer4()] {
        layers.push(write_layer(dir, &entries)?);
    }
    let layered = write_image(dir, "amd64", layers)?;

    let arm64 = write_layer(dir, &arm64_layer())?;
    let arm64 = write_image(dir, "arm64", vec![arm64])?;
    let manifests = vec![busybox.clone(), arm64];
    let index_json = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests.iter().map(|image| json!({
            "mediaType": media_type::OCI_MANIFEST,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "platform": { "os": image.os, "architecture": image.architecture },
        })).collect::<Vec<_>>(),
    });
    let index = write_blob(dir, &to_json(&index_json)?)?;
    let multiarch = Index { index, manifests };

    let tag = |blob: &Blob, media_type: &str, name: &str| {
        json!({
            "mediaType": media_type,
            "digest": blob.digest,
            "size": blob.size,
            "annotations": { REF_NAME_ANNOTATION: name },
        })
    };
    let top = json!({
        "schemaVersion": 2,
        "manifests": [
            tag(&busybox.manifest, media_type::OCI_MANIFEST, BUSYBOX),
            tag(&layered.manifest, media_type::OCI_MANIFEST, LAYERED),
            tag(&multiarch.index, media_type::OCI_INDEX, MULTIARCH),
        ],
    });
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_atomic(&dir.join("index.json"), &to_json(&top)?)?;

    Ok(Layout {
        dir: dir.to_path_buf(),
        busybox,
        layered,
        multiarch,
    })
}

/// Writes a one-off image into a fresh OCI layout at `dir`, tagged `name`: one gzip layer per
/// uncompressed tar stream in `tars` (used for hand-crafted malicious and large layers).
pub fn write_custom_layout(dir: &Path, name: &str, tars: &[Vec<u8>]) -> io::Result<Image> {
    fs::create_dir_all(dir.join("blobs").join("sha256"))
        .map_err(|e| with_context(e, format!("create layout dir {}", dir.display())))?;
    let mut layers = Vec::new();
    for tar in tars {
        let blob = write_blob(dir, &gzip(tar)?)?;
        layers.push(Layer {
            blob,
            diff_id: sha256_digest(tar),
        });
    }
    let image = write_image(dir, "amd64", layers)?;
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "annotations": { REF_NAME_ANNOTATION: name },
        }],
    });
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_atomic(&dir.join("index.json"), &to_json(&top)?)?;
    Ok(image)
}

/// An uncompressed tar stream holding one regular file `name` (mode 0644, owner 0:0, mtime 0).
pub fn single_file_tar(name: &str, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, name, data)?;
    b.into_inner()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One tar entry of a layer being built.
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// Layer content keyed by path relative to `/` (no leading or trailing slash); the
/// `BTreeMap` order puts every directory before its children.
type Entries = BTreeMap<String, Entry>;

fn dir(entries: &mut Entries, path: &str, mode: u32) {
    entries.insert(path.to_owned(), Entry::Dir { mode });
}

fn file(entries: &mut Entries, path: &str, data: &str) {
    entries.insert(
        path.to_owned(),
        Entry::File {
            mode: 0o644,
            data: data.as_bytes().to_vec(),
        },
    );
}

fn busybox_layer() -> io::Result<Entries> {
    let binary = fs::read(HOST_BUSYBOX)
        .map_err(|e| with_context(e, format!("read {HOST_BUSYBOX} (install busybox-static)")))?;
    let mut entries = Entries::new();
    dir(&mut entries, "bin", 0o755);
    entries.insert(
        "bin/busybox".to_owned(),
        Entry::File {
            mode: 0o755,
            data: binary,
        },
    );
    for applet in busybox_applets()? {
        entries
            .entry(format!("bin/{applet}"))
            .or_insert(Entry::Symlink {
                target: "busybox".to_owned(),
            });
    }
    dir(&mut entries, "etc", 0o755);
    file(&mut entries, "etc/passwd", PASSWD);
    file(&mut entries, "etc/group", GROUP);
    dir(&mut entries, "root", 0o700);
    dir(&mut entries, "tmp", 0o1777);
    Ok(entries)
}

/// Applet names from `busybox --list`, sorted, without `busybox` itself: the `/bin/<applet>`
/// symlinks of the busybox layer.
pub fn busybox_applets() -> io::Result<Vec<String>> {
    let out = Command::new(HOST_BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|e| with_context(e, format!("run {HOST_BUSYBOX} --list")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{HOST_BUSYBOX} --list failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    applets.sort();
    applets.dedup();
    if !applets.iter().any(|a| a == "sh") {
        return Err(io::Error::other(format!(
            "{HOST_BUSYBOX} --list has no `sh` applet"
        )));
    }
    Ok(applets)
}

fn layered_layer2() -> Entries {
    let mut e = Entries::new();
    dir(&mut e, "data", 0o755);
    file(&mut e, "data/keep", "keep\n");
    file(&mut e, "data/gone", "gone\n");
    dir(&mut e, "dir-gone", 0o755);
    file(&mut e, "dir-gone/a", "a\n");
    dir(&mut e, "opq", 0o755);
    file(&mut e, "opq/old", "old\n");
    e
}

fn layered_layer3() -> Entries {
    let mut e = Entries::new();
    dir(&mut e, "data", 0o755);
    file(&mut e, "data/.wh.gone", "");
    file(&mut e, ".wh.dir-gone", "");
    dir(&mut e, "opq", 0o755);
    file(&mut e, "opq/.wh..wh..opq", "");
    file(&mut e, "opq/new", "new\n");
    e
}

fn layered_layer4() -> Entries {
    let mut e = Entries::new();
    file(&mut e, "layer4", "layer4\n");
    e
}

fn arm64_layer() -> Entries {
    let mut e = Entries::new();
    file(&mut e, "arch", "arm64\n");
    e
}

/// The uncompressed tar of `entries`.
fn tar_bytes(entries: &Entries) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        let res = match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), io::empty())
            }
            Entry::File { mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)
            }
        };
        res.map_err(|e| with_context(e, format!("add {path} to layer tar")))?;
    }
    builder.into_inner()
}

fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    // GzBuilder writes mtime 0, no file name, no comment, no extra field.
    let mut encoder = GzBuilder::new().write(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

fn write_layer(dir: &Path, entries: &Entries) -> io::Result<Layer> {
    let tar = tar_bytes(entries)?;
    let diff_id = sha256_digest(&tar);
    let blob = write_blob(dir, &gzip(&tar)?)?;
    Ok(Layer { blob, diff_id })
}

fn write_image(dir: &Path, architecture: &str, layers: Vec<Layer>) -> io::Result<Image> {
    let config = json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Cmd": ["sh"], "Env": [PATH_ENV] },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
        },
    });
    let config = write_blob(dir, &to_json(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": media_type::OCI_CONFIG,
            "digest": config.digest,
            "size": config.size,
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": media_type::OCI_LAYER_GZIP,
            "digest": l.blob.digest,
            "size": l.blob.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = write_blob(dir, &to_json(&manifest)?)?;
    Ok(Image {
        manifest,
        config,
        layers,
        os: "linux".to_owned(),
        architecture: architecture.to_owned(),
    })
}

/// Compact JSON; `serde_json::Map` is a `BTreeMap`, so keys come out sorted.
fn to_json(value: &Value) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

/// Stores `bytes` as `blobs/sha256/<hex>` unless an identical blob is already there.
fn write_blob(dir: &Path, bytes: &[u8]) -> io::Result<Blob> {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    let path = dir.join("blobs").join("sha256").join(hex);
    let up_to_date = match fs::read(&path) {
        Ok(existing) => existing == bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(with_context(e, format!("read blob {}", path.display()))),
    };
    if !up_to_date {
        write_atomic(&path, bytes)?;
    }
    Ok(Blob {
        digest,
        size: bytes.len() as u64,
    })
}

/// Writes `path` through a temp file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| with_context(e, format!("create temp file in {}", parent.display())))?;
    tmp.write_all(bytes)
        .map_err(|e| with_context(e, format!("write temp file for {}", path.display())))?;
    tmp.persist(path)
        .map_err(|e| with_context(e.error, format!("rename temp file to {}", path.display())))?;
    Ok(())
}

/// `err` with `what` prepended to its message, keeping its kind.
pub(crate) fn with_context(err: io::Error, what: String) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn list(entries: &Entries) -> Vec<(String, tar::EntryType, u32)> {
        let tar = tar_bytes(entries).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                assert_eq!(h.mtime().unwrap(), MTIME);
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn busybox_layer_has_shell_symlink_and_sticky_tmp() {
        let entries = list(&busybox_layer().unwrap());
        let find = |p: &str| entries.iter().find(|(path, ..)| path == p).cloned();
        assert_eq!(find("bin/sh").unwrap().1, tar::EntryType::Symlink);
        assert_eq!(find("bin/busybox").unwrap().1, tar::EntryType::Regular);
        let tmp = find("tmp/").or_else(|| find("tmp")).unwrap();
        assert_eq!((tmp.1, tmp.2), (tar::EntryType::Directory, 0o1777));
        let paths: Vec<&String> = entries.iter().map(|(p, ..)| p).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "tar entries must be sorted");
    }

    #[test]
    fn whiteout_layer_holds_markers() {
        let paths: Vec<String> = list(&layered_layer3())
            .into_iter()
            .map(|(p, ..)| p)
            .collect();
        for marker in [
            ".wh.dir-gone",
            "data/.wh.gone",
            "opq/.wh..wh..opq",
            "opq/new",
        ] {
            assert!(
                paths.iter().any(|p| p == marker),
                "{marker} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn gzip_header_is_fixed() {
        let gz = gzip(b"x").unwrap();
        // magic, CM=deflate, FLG=0 (no name/comment/extra), MTIME=0.
        assert_eq!(&gz[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    }
}
