//! The on-disk record of one network attachment: the exact config list, CNI_ARGS and capability
//! args an ADD ran with, and its final result. DEL and CHECK read it so they work after a daemon
//! restart and after the conf file changed or vanished.
//!
//! Layout: `<cache_dir>/results/<network>-<container_id>-<ifname>` (libcni's naming), one JSON
//! document, written atomically (temp file in the same dir, fsync, rename, fsync dir).
//!
//! Owns: that directory. Must not: run plugins or decide when an entry is stale.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The record format written today; readers refuse other versions.
pub(crate) const VERSION: u32 = 1;
const KIND: &str = "cniCacheV1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheEntry {
    pub version: u32,
    pub kind: String,
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
    pub netns: PathBuf,
    /// The config list exactly as ADD used it (`NetworkConfigList` as JSON).
    pub config: Value,
    pub cni_args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
    /// The final ADD result; `None` while ADD runs or after an ADD whose undo failed.
    pub result: Option<Value>,
}

impl CacheEntry {
    pub(crate) fn new(
        network_name: &str,
        container_id: &str,
        if_name: &str,
        netns: &Path,
        config: Value,
        cni_args: Vec<(String, String)>,
        capability_args: Map<String, Value>,
    ) -> Self {
        CacheEntry {
            version: VERSION,
            kind: KIND.to_string(),
            network_name: network_name.to_string(),
            container_id: container_id.to_string(),
            if_name: if_name.to_string(),
            netns: netns.to_path_buf(),
            config,
            cni_args,
            capability_args,
            result: None,
        }
    }
}

pub(crate) fn results_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("results")
}

pub(crate) fn entry_path(
    cache_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> PathBuf {
    results_dir(cache_dir).join(format!("{network}-{container_id}-{ifname}"))
}

/// Reads an entry; a missing file is `Ok(None)`.
pub(crate) fn read(path: &Path) -> io::Result<Option<CacheEntry>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let entry: CacheEntry = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if entry.version != VERSION || entry.kind != KIND {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unsupported cache record version {} kind {:?}",
                entry.version, entry.kind
            ),
        ));
    }
    Ok(Some(entry))
}

/// Every entry of `container_id`/`ifname`, whatever its network (for a DEL without a config).
pub(crate) fn find(
    cache_dir: &Path,
    container_id: &str,
    ifname: &str,
) -> io::Result<Vec<(PathBuf, CacheEntry)>> {
    let dir = results_dir(cache_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let suffix = format!("-{container_id}-{ifname}");
    let mut out = Vec::new();
    for dirent in entries {
        let path = dirent?.path();
        let matches_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(&suffix) && !n.starts_with('.'));
        if !matches_name {
            continue;
        }
        // Unreadable entries cannot drive a DEL; a DEL given the config removes them.
        let entry = match read(&path) {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
            Err(e) => return Err(e),
        };
        if entry.container_id == container_id && entry.if_name == ifname {
            out.push((path, entry));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes `entry` at `path` atomically and durably.
pub(crate) fn write(path: &Path, entry: &CacheEntry) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cache path has no name"))?;
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Deletes an entry; missing is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_find_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = entry_path(dir.path(), "net-a", "abc", "eth0");
        let mut entry = CacheEntry::new(
            "net-a",
            "abc",
            "eth0",
            Path::new("/run/netns/x"),
            serde_json::json!({"name": "net-a"}),
            vec![("K".into(), "V".into())],
            Map::new(),
        );
        entry.result = Some(serde_json::json!({"cniVersion": "1.0.0"}));
        write(&path, &entry).unwrap();
        write(&path, &entry).unwrap();
        let got = read(&path).unwrap().unwrap();
        assert_eq!(got.result, entry.result);
        assert_eq!(got.cni_args, entry.cni_args);
        let other = entry_path(dir.path(), "net-b", "abcd", "eth0");
        write(
            &other,
            &CacheEntry {
                container_id: "abcd".into(),
                ..entry.clone()
            },
        )
        .unwrap();
        let found = find(dir.path(), "abc", "eth0").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, path);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(read(&path).unwrap().is_none());
        let leftovers: Vec<_> = std::fs::read_dir(results_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn unknown_record_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(
            &path,
            r#"{"version":9,"kind":"cniCacheV1","networkName":"n","containerId":"c","ifName":"e",
               "netns":"","config":{},"cniArgs":[],"capabilityArgs":{},"result":null}"#,
        )
        .unwrap();
        assert!(read(&path).is_err());
    }
}
