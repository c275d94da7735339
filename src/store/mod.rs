//! Persistent state: versioned JSON records, written atomically, cached in memory.
//!
//! Owns the on-disk format under `[state] root`/`<kind>/<id>.json`: every record is an envelope
//! `{"version": N, "kind": ..., "id": ..., "data": ...}`. Writes go to a temp file in the same
//! directory, are fsynced, renamed over the record and the directory is fsynced; the in-memory copy
//! changes only after the disk write succeeded, so a crash at any moment leaves either the old or
//! the new record, never a torn one. Changes to an existing record go through
//! [`Collection::modify`] (read-modify-write under that record's own write lock). Must not hold a
//! lock across I/O other than one record's write lock (or, in [`Collection::remove_many`], the
//! locks of its ids, taken in id order), or know about CRI types.
//!
//! File I/O is blocking; async callers use the `*_async` wrappers, which run it on the blocking pool.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// A type stored as records of one kind.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Directory name and envelope `kind`.
    const KIND: &'static str;
    /// Format version written; records with a higher version are refused at load.
    const VERSION: u32;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state record {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state record id {0:?} is not a valid file name")]
    BadId(String),
    #[error("state write task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::BadId(_) => ErrorKind::InvalidArgument,
            StoreError::Io { source, .. } => ErrorKind::of_io(source),
            _ => ErrorKind::Internal,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp files start with this prefix; any found at load time are leftovers of a crash.
const TEMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().ok_or_else(|| StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("no parent directory"),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{name}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` durably; a missing file is fine.
fn remove_durable(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    }
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    version: u32,
    kind: &'a str,
    id: &'a str,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    version: u32,
    kind: String,
    id: String,
    data: serde_json::Value,
}

/// All records of one kind: on disk under `dir`, and in memory.
pub struct Collection<T: Record> {
    dir: PathBuf,
    items: RwLock<BTreeMap<String, Arc<T>>>,
    /// One lock per record id, held across each write of that record (so a read-modify-write
    /// never interleaves with another write of the same record); never across two ids.
    writes: std::sync::Mutex<BTreeMap<String, Arc<std::sync::Mutex<()>>>>,
    _kind: PhantomData<T>,
}

/// What [`Collection::modify`] did.
#[derive(Debug)]
pub enum Modified<T> {
    /// No record with that id.
    Missing,
    /// The change function left the record as it was.
    Unchanged(Arc<T>),
    /// The new record, on disk and in memory.
    Changed(Arc<T>),
}

/// What loading found besides the records: problems reported by the caller, not fatal.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Records that could not be read; left on disk for an operator to inspect.
    pub corrupt: Vec<StoreError>,
    /// Temp files of interrupted writes, removed.
    pub removed_temp_files: usize,
}

impl LoadReport {
    /// Logs what loading `kind` records found wrong.
    pub fn log(&self, kind: &str) {
        for problem in &self.corrupt {
            tracing::error!(kind, error = %problem, "skipping unreadable state record");
        }
        if self.removed_temp_files > 0 {
            tracing::info!(
                kind,
                files = self.removed_temp_files,
                "removed temp files of interrupted writes"
            );
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
}

impl<T: Record> Collection<T> {
    /// Opens (creating) `<root>/<KIND>` and loads every record.
    pub fn open(root: &Path) -> Result<(Arc<Self>, LoadReport), StoreError> {
        let dir = root.join(T::KIND);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut report = LoadReport::default();
        let mut items = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                report.removed_temp_files += 1;
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match Self::read_record(&path, id) {
                Ok(rec) => {
                    items.insert(id.to_string(), Arc::new(rec));
                }
                Err(e) => report.corrupt.push(e),
            }
        }
        let collection = Collection {
            dir,
            items: RwLock::new(items),
            writes: std::sync::Mutex::new(BTreeMap::new()),
            _kind: PhantomData,
        };
        Ok((Arc::new(collection), report))
    }

    fn read_record(path: &Path, id: &str) -> Result<T, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = fs::read(path).map_err(io_err(path))?;
        let env: EnvelopeIn = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if env.kind != T::KIND || env.id != id {
            return Err(corrupt(format!(
                "envelope says {}/{}, file is {}/{id}",
                env.kind,
                env.id,
                T::KIND
            )));
        }
        if env.version > T::VERSION {
            return Err(corrupt(format!(
                "version {} is newer than supported {}",
                env.version,
                T::VERSION
            )));
        }
        serde_json::from_value(env.data).map_err(|e| corrupt(e.to_string()))
    }

    fn path_of(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::BadId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.items.read().ok()?.get(id).cloned()
    }

    /// The record with id `id`, or the only one whose id starts with `id` (kubelet and crictl
    /// pass unique prefixes). `what` names the kind in errors (`"pod sandbox"`).
    pub fn resolve(&self, id: &str, what: &str) -> Result<Arc<T>, crate::error::Error> {
        use crate::error::Error;
        if id.is_empty() {
            return Err(Error::InvalidArgument(format!("{what} id is required")));
        }
        if let Some(rec) = self.get(id) {
            return Ok(rec);
        }
        let mut matches = self.list().into_iter().filter(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, rec)), None) => Ok(rec),
            (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
                "{what} id prefix {id:?} is ambiguous"
            ))),
            _ => Err(Error::NotFound(format!("{what} {id:?} not found"))),
        }
    }

    pub fn list(&self) -> Vec<(String, Arc<T>)> {
        match self.items.read() {
            Ok(items) => items.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The write lock of `id` (idle entries are dropped on the way).
    fn write_lock(&self, id: &str) -> Arc<std::sync::Mutex<()>> {
        let mut locks = match self.writes.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.to_string()).or_default().clone()
    }

    /// Read-modify-write of one record under its write lock (containerd's `Status.Update`):
    /// `change` sees the record as it is now and returns the next one (`None`: unchanged),
    /// which is written to disk, then to memory; `then` runs with the stored record while the
    /// lock is still held, so what it publishes follows the order of the writes. A copy read
    /// earlier is never written back. Blocking.
    pub fn modify<E: From<StoreError>>(
        &self,
        id: &str,
        change: impl FnOnce(&T) -> Result<Option<T>, E>,
        then: impl FnOnce(&Arc<T>),
    ) -> Result<Modified<T>, E> {
        let lock = self.write_lock(id);
        let _held = match lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(current) = self.get(id) else {
            return Ok(Modified::Missing);
        };
        match change(&current)? {
            None => Ok(Modified::Unchanged(current)),
            Some(next) => {
                let stored = self.put_locked(id, next)?;
                then(&stored);
                Ok(Modified::Changed(stored))
            }
        }
    }

    /// Writes the record to disk, then to memory. Blocking.
    pub fn put(&self, id: &str, value: T) -> Result<Arc<T>, StoreError> {
        let lock = self.write_lock(id);
        let _held = match lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.put_locked(id, value)
    }

    fn put_locked(&self, id: &str, value: T) -> Result<Arc<T>, StoreError> {
        let path = self.path_of(id)?;
        let bytes = serde_json::to_vec_pretty(&EnvelopeOut {
            version: T::VERSION,
            kind: T::KIND,
            id,
            data: &value,
        })
        .map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes)?;
        let value = Arc::new(value);
        if let Ok(mut items) = self.items.write() {
            items.insert(id.to_string(), value.clone());
        }
        Ok(value)
    }

    /// Removes the record from disk, then from memory. Missing records are fine. Blocking.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let lock = self.write_lock(id);
        let _held = match lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        remove_durable(&self.path_of(id)?)?;
        if let Ok(mut items) = self.items.write() {
            items.remove(id);
        }
        Ok(())
    }

    /// Removes several records with one fsync of the directory instead of one each: every file
    /// is unlinked, then the directory fsynced, then memory updated, all under the records' write
    /// locks (taken in id order, so two callers never wait on each other). Missing records are
    /// fine. On an error, the records unlinked before it are still made durable and forgotten.
    /// Blocking.
    pub fn remove_many(&self, ids: &[&str]) -> Result<(), StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let locks: Vec<_> = ids.iter().map(|id| self.write_lock(id)).collect();
        let _held: Vec<_> = locks
            .iter()
            .map(|l| match l.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            })
            .collect();
        let mut unlinked = Vec::with_capacity(ids.len());
        let mut failed = None;
        for id in &ids {
            let path = match self.path_of(id) {
                Ok(p) => p,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            match fs::remove_file(&path) {
                Ok(()) => unlinked.push(*id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => unlinked.push(*id),
                Err(e) => {
                    failed = Some(io_err(&path)(e));
                    break;
                }
            }
        }
        if !unlinked.is_empty() {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            if let Ok(mut items) = self.items.write() {
                for id in &unlinked {
                    items.remove(*id);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Collection::put`] on the blocking pool.
    pub async fn put_async(self: &Arc<Self>, id: &str, value: T) -> Result<Arc<T>, StoreError> {
        let this = self.clone();
        let id = id.to_string();
        crate::telemetry::spawn_blocking(move || this.put(&id, value))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// [`Collection::remove`] on the blocking pool.
    pub async fn remove_async(self: &Arc<Self>, id: &str) -> Result<(), StoreError> {
        let this = self.clone();
        let id = id.to_string();
        crate::telemetry::spawn_blocking(move || this.remove(&id))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests;
