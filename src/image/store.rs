//! The content-addressed image store under `[state] root/images`.
//!
//! ```text
//! images/blobs/sha256/<hex>   verified blobs: compressed layers and configs
//! images/layers/<chain-hex>/  one unpacked layer per chain ID: an overlayfs lower dir
//! images/tmp/                 downloads and unpacks in progress (emptied at every start)
//! images/trash/               layer dirs and blobs of removed images, deleted in the background
//!                             (and at every start)
//! <root>/image/<id-hex>.json  image records (store::Collection)
//! <root>/layer/<chain>.json   layer records, written after the layer dir is complete and durable
//! ```
//!
//! Owns the records, their invariants (a layer record implies a complete layer dir; an image
//! record implies records for all its layers) and garbage collection. Must not talk to
//! registries: pulls hand it verified content.
//!
//! Removal answers once the records are gone, durably, and the layer dirs and blobs nobody uses
//! any more are renamed into `trash/` (same filesystem: atomic, and it frees their names for the
//! next pull at once). One background task at a time ([`ImageStore::purge_trash_in_background`])
//! fsyncs the directories once and deletes the trash, like containerd's content garbage
//! collection. Until then the image filesystem usage counts the trash.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::reference::Reference;
use super::ImageError;
use crate::store::{Collection, Record};

/// One layer of an image, in order from the base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub chain_id: String,
    pub diff_id: String,
    /// Digest of the (compressed) blob it came from.
    pub digest: String,
    pub media_type: String,
    /// Compressed size.
    pub size: u64,
}

/// A pulled image. Its id is the config digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The image config document as pulled.
    pub config: serde_json::Value,
    pub layers: Vec<ImageLayer>,
    /// Uncompressed size of all layers (what `crictl images` shows).
    pub size: u64,
    pub pulled_at_ns: i64,
}

impl Record for ImageRecord {
    const KIND: &'static str = "image";
    const VERSION: u32 = 1;
}

/// An unpacked layer, shared by every image whose chain contains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub digest: String,
    /// Uncompressed tar size.
    pub size: u64,
}

impl Record for LayerRecord {
    const KIND: &'static str = "layer";
    const VERSION: u32 = 1;
}

/// Strips `sha256:` for use as a file or record name.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The chain ID of a layer: its diff ID for the base, else sha256("<parent chain> <diff id>").
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    use sha2::Digest;
    match parent {
        None => diff_id.to_string(),
        Some(p) => format!(
            "sha256:{:x}",
            sha2::Sha256::digest(format!("{p} {diff_id}"))
        ),
    }
}

/// What `open` cleaned up after an unclean stop.
#[derive(Debug, Default)]
pub struct Recovery {
    pub temp_entries: usize,
    pub trash_entries: usize,
    pub orphan_layer_dirs: usize,
    pub layer_records_without_dir: usize,
    pub images_with_missing_layers: usize,
}

pub struct ImageStore {
    dir: PathBuf,
    pub images: Arc<Collection<ImageRecord>>,
    pub layers: Arc<Collection<LayerRecord>>,
    /// Per-key async locks: one download/unpack per blob or layer at a time.
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes changes to image records (tags move between images).
    pub records: tokio::sync::Mutex<()>,
    /// Pulls hold it shared; garbage collection exclusively, so a layer a pull is about to
    /// reference is never collected under it.
    pub gc: tokio::sync::RwLock<()>,
    /// The background deletion of `trash/`: one at a time.
    purge: Mutex<Purge>,
}

/// State of the background trash deletion.
#[derive(Debug, Default)]
struct Purge {
    running: bool,
    /// More was thrown away while it ran: go round once more.
    again: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ImageStore {
    /// Opens the store and repairs what an interrupted pull or removal left. Blocking.
    pub fn open(state_root: &Path) -> Result<(ImageStore, Recovery), ImageError> {
        let dir = state_root.join("images");
        let mut recovery = Recovery::default();
        for sub in ["blobs/sha256", "layers", "tmp", "trash"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tmp = dir.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            remove_path(&path)?;
            recovery.temp_entries += 1;
        }
        recovery.trash_entries = empty_dir(&dir.join("trash"))?;
        let (images, report) = Collection::<ImageRecord>::open(state_root)?;
        report.log("image");
        let (layers, report) = Collection::<LayerRecord>::open(state_root)?;
        report.log("layer");

        // A layer record promises a complete dir; a dir without a record was never finished.
        let layers_dir = dir.join("layers");
        for (id, _) in layers.list() {
            if !layers_dir.join(&id).is_dir() {
                layers.remove(&id)?;
                recovery.layer_records_without_dir += 1;
            }
        }
        for entry in std::fs::read_dir(&layers_dir).map_err(io_err(&layers_dir))? {
            let entry = entry.map_err(io_err(&layers_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if layers.get(&name).is_none() {
                remove_path(&entry.path())?;
                recovery.orphan_layer_dirs += 1;
            }
        }
        for (id, image) in images.list() {
            if image
                .layers
                .iter()
                .any(|l| layers.get(hex_of(&l.chain_id)).is_none())
            {
                tracing::error!(image_id = %image.id, "image lost a layer; forgetting it so a re-pull repairs it");
                images.remove(&id)?;
                recovery.images_with_missing_layers += 1;
            }
        }
        Ok((
            ImageStore {
                dir,
                images,
                layers,
                key_locks: Mutex::new(HashMap::new()),
                records: tokio::sync::Mutex::new(()),
                gc: tokio::sync::RwLock::new(()),
                purge: Mutex::new(Purge::default()),
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex_of(digest))
    }

    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.dir.join("layers").join(hex_of(chain_id))
    }

    /// A fresh unique path under `tmp/`.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.dir.join("tmp").join(unique_name(what))
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.dir.join("trash")
    }

    /// The async lock of blob `digest`: held while it is fetched into `blobs/`. Its own key
    /// space, as a base layer's chain ID is the digest of its blob when uncompressed.
    pub fn blob_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.key_lock(&format!("blob {digest}"))
    }

    /// The async lock for `key` (a chain ID, or a [`ImageStore::blob_lock`] key).
    pub fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.key_locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Drop locks nobody holds any more so the map stays small.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_string()).or_default().clone()
    }

    pub fn has_layer(&self, chain_id: &str) -> bool {
        self.layers.get(hex_of(chain_id)).is_some()
    }

    /// Lower dirs of an image, top layer first (overlayfs `lowerdir` order).
    pub fn lower_dirs(&self, image: &ImageRecord) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_dir(&l.chain_id))
            .collect()
    }

    /// Finds an image by id, unique id prefix, tag or digest reference.
    pub fn lookup(&self, query: &str, default_registry: &str) -> Option<Arc<ImageRecord>> {
        let query = query.trim();
        if query.is_empty() {
            return None;
        }
        let images = self.images.list();
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Some((_, img)) = images.iter().find(|(id, _)| id == hex) {
                return Some(img.clone());
            }
        }
        if let Ok(r) = Reference::parse(query, default_registry) {
            let found = images
                .iter()
                .find(|(_, img)| match (&r.digest, r.tagged()) {
                    (Some(d), _) => img.repo_digests.contains(&r.digested(d)),
                    (None, Some(tag)) => img.repo_tags.contains(&tag),
                    (None, None) => false,
                });
            if let Some((_, img)) = found {
                return Some(img.clone());
            }
        }
        // A unique id prefix, as crictl users type them.
        if hex.len() >= 3 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = images.iter().filter(|(id, _)| id.starts_with(hex));
            if let (Some((_, img)), None) = (matches.next(), matches.next()) {
                return Some(img.clone());
            }
        }
        None
    }

    /// Saves `image` (merging names with an existing record of the same id) and moves its tags
    /// away from other images. Caller holds `records`. Blocking.
    pub fn commit_image(&self, mut image: ImageRecord) -> Result<Arc<ImageRecord>, ImageError> {
        let id = hex_of(&image.id).to_string();
        if let Some(existing) = self.images.get(&id) {
            for tag in &existing.repo_tags {
                if !image.repo_tags.contains(tag) {
                    image.repo_tags.push(tag.clone());
                }
            }
            for digest in &existing.repo_digests {
                if !image.repo_digests.contains(digest) {
                    image.repo_digests.push(digest.clone());
                }
            }
        }
        image.repo_tags.sort();
        image.repo_digests.sort();
        let saved = self.images.put(&id, image)?;
        for (other_id, other) in self.images.list() {
            if other_id == id || !other.repo_tags.iter().any(|t| saved.repo_tags.contains(t)) {
                continue;
            }
            let mut moved = (*other).clone();
            moved.repo_tags.retain(|t| !saved.repo_tags.contains(t));
            tracing::info!(image_id = %other.id, "tag moved to a newer image");
            self.images.put(&other_id, moved)?;
        }
        Ok(saved)
    }

    /// Removes an image record, then the records of the layers no remaining image uses (with one
    /// fsync), then moves their dirs and the blobs nobody uses into `trash/` (see the module
    /// doc; the caller schedules [`ImageStore::purge_trash_in_background`]). Caller holds
    /// `records` and `gc` (write). Blocking. Returns the layers freed.
    pub fn remove_image(&self, id: &str) -> Result<usize, ImageError> {
        let id = hex_of(id).to_string();
        let Some(image) = self.images.get(&id) else {
            return Ok(0);
        };
        // What stays once this image is gone (the caller holds `records`: nothing else changes).
        let remaining: Vec<_> = self
            .images
            .list()
            .into_iter()
            .filter(|(other, _)| *other != id)
            .collect();
        let used_layers: BTreeSet<String> = remaining
            .iter()
            .flat_map(|(_, img)| img.layers.iter().map(|l| l.chain_id.clone()))
            .collect();
        let mut used_blobs: BTreeSet<String> = remaining
            .iter()
            .flat_map(|(_, img)| img.layers.iter().map(|l| l.digest.clone()))
            .collect();
        used_blobs.extend(remaining.iter().map(|(_, img)| img.id.clone()));
        let freed: Vec<&str> = image
            .layers
            .iter()
            .map(|l| l.chain_id.as_str())
            .filter(|chain| !used_layers.contains(*chain) && self.has_layer(chain))
            .collect();
        let ids: Vec<&str> = freed.iter().map(|c| hex_of(c)).collect();
        let mut garbage: Vec<PathBuf> = freed.iter().map(|c| self.layer_dir(c)).collect();
        garbage.extend(
            image
                .layers
                .iter()
                .map(|l| &l.digest)
                .chain([&image.id])
                .filter(|d| !used_blobs.contains(*d))
                .map(|d| self.blob_path(d)),
        );
        // The image record and the layer records live in two directories: removed side by side,
        // their two fsyncs wait for one journal commit instead of two in a row. Whatever part of
        // this a crash keeps, the next start ends up with the image gone or intact, never a
        // record naming a missing dir: layer records without their dir are dropped, and so are
        // images that lost a layer record. Layer records go before their dirs move (a crash in
        // between leaves orphan dirs, removed at start).
        let (image_removed, layers_removed) = std::thread::scope(|scope| {
            let layers = scope.spawn(|| -> Result<(), ImageError> {
                self.layers.remove_many(&ids)?;
                self.discard(&garbage)
            });
            let image_removed = self.images.remove(&id);
            let layers_removed = layers
                .join()
                .unwrap_or_else(|_| Err(ImageError::Internal("layer removal panicked".into())));
            (image_removed, layers_removed)
        });
        image_removed?;
        layers_removed?;
        Ok(freed.len())
    }

    /// Moves `paths` (layer dirs, blobs) into `trash/` under fresh names. Missing paths are
    /// fine. Blocking. No fsync: a rename a power loss undoes brings back a layer dir without
    /// a record (an orphan, removed at start) or a complete, verified blob (reused by a pull);
    /// the background purge fsyncs the directories once before it deletes anything.
    fn discard(&self, paths: &[PathBuf]) -> Result<(), ImageError> {
        let trash = self.trash_dir();
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = trash.join(unique_name(&name));
            match std::fs::rename(path, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Not renamable (never expected: same directory tree): delete it here.
                    tracing::warn!(path = %path.display(), error = %e, "moving to the image trash; deleting in place");
                    remove_path(path)?;
                }
            }
        }
        Ok(())
    }

    /// Makes the moves into `trash/` durable (one fsync of each directory involved, so a
    /// power loss cannot bring back a blob deleted from the trash), then deletes everything in
    /// it. Blocking; returns the entries deleted.
    pub fn empty_trash(&self) -> Result<usize, ImageError> {
        for dir in [
            self.dir.join("layers"),
            self.dir.join("blobs/sha256"),
            self.trash_dir(),
        ] {
            crate::image::durable::sync_dir(&dir).map_err(io_err(&dir))?;
        }
        empty_dir(&self.trash_dir())
    }

    /// Empties `trash/` on the blocking pool, one deletion at a time: a call while one runs
    /// makes it go round once more. Needs a tokio runtime.
    pub fn purge_trash_in_background(self: &Arc<Self>) {
        {
            let mut purge = lock(&self.purge);
            if purge.running {
                purge.again = true;
                return;
            }
            purge.running = true;
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || loop {
            let started = std::time::Instant::now();
            match store.empty_trash() {
                Ok(n) => tracing::debug!(
                    entries = n,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "image trash emptied"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "emptying the image trash (retried at the next removal or start)")
                }
            }
            let mut purge = lock(&store.purge);
            if purge.again {
                purge.again = false;
                continue;
            }
            purge.running = false;
            break;
        });
    }

    /// Whether a background deletion of the trash is running or scheduled.
    pub fn purging(&self) -> bool {
        lock(&self.purge).running
    }

    /// Removes the layers among `chains` (chain IDs) that no image uses: what a failed pull
    /// unpacked. Caller holds `records` and `gc` (write). Blocking. Returns the layers freed.
    pub fn remove_unused_layers(&self, chains: &[String]) -> Result<usize, ImageError> {
        let images = self.images.list();
        let used: BTreeSet<&str> = images
            .iter()
            .flat_map(|(_, img)| img.layers.iter().map(|l| l.chain_id.as_str()))
            .collect();
        let used_blobs: BTreeSet<&str> = images
            .iter()
            .flat_map(|(_, img)| img.layers.iter().map(|l| l.digest.as_str()))
            .collect();
        let freed: Vec<(&str, Arc<LayerRecord>)> = chains
            .iter()
            .filter(|chain| !used.contains(chain.as_str()))
            .filter_map(|chain| Some((chain.as_str(), self.layers.get(hex_of(chain))?)))
            .collect();
        // Records first: a crash before the renames leaves orphan dirs, removed at start.
        let ids: Vec<&str> = freed.iter().map(|(c, _)| hex_of(c)).collect();
        self.layers.remove_many(&ids)?;
        let mut garbage: Vec<PathBuf> = freed.iter().map(|(c, _)| self.layer_dir(c)).collect();
        garbage.extend(
            freed
                .iter()
                .filter(|(_, l)| !used_blobs.contains(l.digest.as_str()))
                .map(|(_, l)| self.blob_path(&l.digest)),
        );
        self.discard(&garbage)?;
        Ok(freed.len())
    }

    /// Bytes and inodes used under the image store. Blocking: walks the tree.
    pub fn usage(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let mut bytes = 0u64;
        let mut inodes = 0u64;
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if !seen.insert((meta.dev(), meta.ino())) {
                    continue; // hard links count once
                }
                inodes += 1;
                bytes += meta.blocks() * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        (bytes, inodes)
    }
}

/// `<what>-<pid>-<n>`, unique in this store.
fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Deletes every entry of `dir`; returns how many there were.
fn empty_dir(dir: &Path) -> Result<usize, ImageError> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        remove_path(&entry.map_err(io_err(dir))?.path())?;
        n += 1;
    }
    Ok(n)
}

/// Removes a file or a directory tree; missing is fine.
pub fn remove_path(path: &Path) -> Result<(), ImageError> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(chain: &str, digest: &str) -> ImageLayer {
        ImageLayer {
            chain_id: chain.into(),
            diff_id: chain.into(),
            digest: digest.into(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 1,
        }
    }

    fn image(id: &str, tags: &[&str], layers: Vec<ImageLayer>) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![format!("docker.io/library/x@{id}")],
            manifest_digest: id.into(),
            manifest_media_type: String::new(),
            config: serde_json::json!({}),
            layers,
            size: 1,
            pulled_at_ns: 0,
        }
    }

    fn sha(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn add_layer(store: &ImageStore, chain: &str) {
        std::fs::create_dir_all(store.layer_dir(chain)).unwrap();
        store
            .layers
            .put(
                hex_of(chain),
                LayerRecord {
                    chain_id: chain.into(),
                    diff_id: chain.into(),
                    parent: None,
                    digest: chain.into(),
                    size: 1,
                },
            )
            .unwrap();
    }

    #[test]
    fn chain_ids_follow_the_oci_formula() {
        let base = sha('a');
        assert_eq!(chain_id(None, &base), base);
        let expected = {
            use sha2::Digest;
            format!(
                "sha256:{:x}",
                sha2::Sha256::digest(format!("{} {}", sha('a'), sha('b')))
            )
        };
        assert_eq!(chain_id(Some(&base), &sha('b')), expected);
    }

    #[test]
    fn remove_frees_unshared_layers_and_keeps_shared_ones() {
        let root = tempfile::tempdir().unwrap();
        let (store, _) = ImageStore::open(root.path()).unwrap();
        for c in ['1', '2', '3'] {
            add_layer(&store, &sha(c));
        }
        store
            .commit_image(image(
                &sha('a'),
                &["docker.io/library/a:latest"],
                vec![layer(&sha('1'), &sha('1')), layer(&sha('2'), &sha('2'))],
            ))
            .unwrap();
        store
            .commit_image(image(
                &sha('b'),
                &["docker.io/library/b:latest"],
                vec![layer(&sha('1'), &sha('1')), layer(&sha('3'), &sha('3'))],
            ))
            .unwrap();
        assert_eq!(store.remove_image(&sha('a')).unwrap(), 1);
        assert!(store.has_layer(&sha('1')) && store.layer_dir(&sha('1')).exists());
        assert!(!store.has_layer(&sha('2')) && !store.layer_dir(&sha('2')).exists());
        assert_eq!(store.remove_image(&sha('a')).unwrap(), 0, "idempotent");
        assert_eq!(store.remove_image(&sha('b')).unwrap(), 2);
        assert!(store.layers.list().is_empty());
    }

    fn trash_entries(store: &ImageStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.trash_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Polls `cond` every 10 ms for up to 10 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn remove_moves_layers_and_blobs_to_the_trash_and_the_background_purge_empties_it() {
        let root = tempfile::tempdir().unwrap();
        let (store, _) = ImageStore::open(root.path()).unwrap();
        let store = Arc::new(store);
        for c in ['1', '2'] {
            add_layer(&store, &sha(c));
            std::fs::write(store.layer_dir(&sha(c)).join("file"), b"content").unwrap();
            std::fs::write(store.blob_path(&sha(c)), b"blob").unwrap();
        }
        std::fs::write(store.blob_path(&sha('a')), b"config").unwrap();
        store
            .commit_image(image(
                &sha('a'),
                &["docker.io/library/a:latest"],
                vec![layer(&sha('1'), &sha('1')), layer(&sha('2'), &sha('2'))],
            ))
            .unwrap();
        assert_eq!(store.remove_image(&sha('a')).unwrap(), 2);
        // Answered with the records gone and the names free; the content waits in the trash.
        assert!(store.layers.list().is_empty() && store.images.list().is_empty());
        for c in ['1', '2', 'a'] {
            assert!(!store.blob_path(&sha(c)).exists(), "blob {c}");
        }
        assert!(!store.layer_dir(&sha('1')).exists() && !store.layer_dir(&sha('2')).exists());
        let trashed = trash_entries(&store);
        assert_eq!(trashed.len(), 5, "2 layer dirs + 3 blobs: {trashed:?}");
        let layer_in_trash = trashed
            .iter()
            .filter(|n| std::fs::read(store.trash_dir().join(n).join("file")).is_ok())
            .count();
        assert_eq!(layer_in_trash, 2, "the layer dirs moved whole");

        store.purge_trash_in_background();
        eventually("trash emptied", || {
            !store.purging() && trash_entries(&store).is_empty()
        })
        .await;
    }

    #[tokio::test]
    async fn a_purge_requested_while_one_runs_is_not_lost() {
        let root = tempfile::tempdir().unwrap();
        let (store, _) = ImageStore::open(root.path()).unwrap();
        let store = Arc::new(store);
        for i in 0..20 {
            let dir = store.trash_dir().join(format!("t{i}"));
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("sub/f"), b"x").unwrap();
            store.purge_trash_in_background();
        }
        eventually("trash emptied", || {
            !store.purging() && trash_entries(&store).is_empty()
        })
        .await;
    }

    #[test]
    fn open_empties_the_trash() {
        let root = tempfile::tempdir().unwrap();
        {
            let (store, _) = ImageStore::open(root.path()).unwrap();
            std::fs::create_dir_all(store.trash_dir().join("layer-1/usr/bin")).unwrap();
            std::fs::write(store.trash_dir().join("layer-1/usr/bin/sh"), b"x").unwrap();
            std::fs::write(store.trash_dir().join("blob-1"), b"x").unwrap();
        }
        let (store, rec) = ImageStore::open(root.path()).unwrap();
        assert_eq!(rec.trash_entries, 2);
        assert!(trash_entries(&store).is_empty());
    }

    #[test]
    fn a_layer_pulled_again_right_after_removal_is_published_under_its_old_name() {
        let root = tempfile::tempdir().unwrap();
        let (store, _) = ImageStore::open(root.path()).unwrap();
        let chain = sha('1');
        add_layer(&store, &chain);
        std::fs::write(store.layer_dir(&chain).join("old"), b"old").unwrap();
        store
            .commit_image(image(
                &sha('a'),
                &["docker.io/library/a:latest"],
                vec![layer(&chain, &chain)],
            ))
            .unwrap();
        assert_eq!(store.remove_image(&sha('a')).unwrap(), 1);
        assert_eq!(trash_entries(&store).len(), 1, "not purged yet");
        // What a pull does: unpack into tmp/, publish under the chain ID, then the records.
        let tmp = store.temp_path("layer");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("new"), b"new").unwrap();
        crate::image::durable::publish(&tmp, &store.layer_dir(&chain)).unwrap();
        store
            .layers
            .put(
                hex_of(&chain),
                LayerRecord {
                    chain_id: chain.clone(),
                    diff_id: chain.clone(),
                    parent: None,
                    digest: chain.clone(),
                    size: 1,
                },
            )
            .unwrap();
        store
            .commit_image(image(
                &sha('a'),
                &["docker.io/library/a:latest"],
                vec![layer(&chain, &chain)],
            ))
            .unwrap();
        assert_eq!(
            std::fs::read(store.layer_dir(&chain).join("new")).unwrap(),
            b"new"
        );
        assert!(!store.layer_dir(&chain).join("old").exists());
        // A purge after the re-pull only deletes the old copy.
        assert_eq!(store.empty_trash().unwrap(), 1);
        assert!(store.layer_dir(&chain).join("new").exists());
        drop(store);
        let (store, rec) = ImageStore::open(root.path()).unwrap();
        assert_eq!(rec.orphan_layer_dirs + rec.layer_records_without_dir, 0);
        assert!(store
            .lookup("docker.io/library/a:latest", "docker.io")
            .is_some());
    }

    #[test]
    fn remove_unused_layers_trashes_only_what_no_image_uses() {
        let root = tempfile::tempdir().unwrap();
        let (store, _) = ImageStore::open(root.path()).unwrap();
        for c in ['1', '2'] {
            add_layer(&store, &sha(c));
        }
        store
            .commit_image(image(
                &sha('a'),
                &["docker.io/library/a:latest"],
                vec![layer(&sha('1'), &sha('1'))],
            ))
            .unwrap();
        let freed = store
            .remove_unused_layers(&[sha('1'), sha('2'), sha('9')])
            .unwrap();
        assert_eq!(freed, 1);
        assert!(store.has_layer(&sha('1')) && store.layer_dir(&sha('1')).exists());
        assert!(!store.has_layer(&sha('2')) && !store.layer_dir(&sha('2')).exists());
        assert_eq!(trash_entries(&store).len(), 1);
    }

    #[test]
    fn a_tag_moves_to_the_newest_image_and_lookup_finds_all_names() {
        let root = tempfile::tempdir().unwrap();
        let (store, _) = ImageStore::open(root.path()).unwrap();
        store
            .commit_image(image(&sha('a'), &["docker.io/library/x:latest"], vec![]))
            .unwrap();
        store
            .commit_image(image(&sha('b'), &["docker.io/library/x:latest"], vec![]))
            .unwrap();
        assert!(store
            .images
            .get(hex_of(&sha('a')))
            .unwrap()
            .repo_tags
            .is_empty());
        let found = store.lookup("x", "docker.io").unwrap();
        assert_eq!(found.id, sha('b'));
        assert_eq!(store.lookup(&sha('a'), "docker.io").unwrap().id, sha('a'));
        assert_eq!(
            store
                .lookup(&hex_of(&sha('a'))[..12], "docker.io")
                .unwrap()
                .id,
            sha('a')
        );
        let by_digest = format!("docker.io/library/x@{}", sha('b'));
        assert_eq!(store.lookup(&by_digest, "docker.io").unwrap().id, sha('b'));
        assert!(store.lookup("y", "docker.io").is_none());
    }

    #[test]
    fn open_repairs_interrupted_work() {
        let root = tempfile::tempdir().unwrap();
        {
            let (store, _) = ImageStore::open(root.path()).unwrap();
            add_layer(&store, &sha('1'));
            add_layer(&store, &sha('2'));
            store
                .commit_image(image(
                    &sha('a'),
                    &["docker.io/library/a:latest"],
                    vec![layer(&sha('2'), &sha('2'))],
                ))
                .unwrap();
            std::fs::create_dir_all(store.temp_path("layer")).unwrap();
            std::fs::create_dir_all(store.layer_dir(&sha('9'))).unwrap(); // unfinished
            std::fs::remove_dir_all(store.layer_dir(&sha('2'))).unwrap(); // lost
        }
        let (store, rec) = ImageStore::open(root.path()).unwrap();
        assert_eq!(rec.temp_entries, 1);
        assert_eq!(rec.orphan_layer_dirs, 1);
        assert_eq!(rec.layer_records_without_dir, 1);
        assert_eq!(rec.images_with_missing_layers, 1);
        assert!(store.images.list().is_empty());
        assert!(store.has_layer(&sha('1')));
    }
}
