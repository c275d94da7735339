//! Loading CNI network configurations (`.conflist`, `.conf`, `.json`) from a directory, as libcni does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors while reading network configurations.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read cni config dir {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read cni config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse cni config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A network configuration list, the unit CNI runs ADD/DEL against.
///
/// A single-plugin `.conf` file is lifted into a list of one, as libcni does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "disableCheck", default)]
    pub disable_check: bool,
    pub plugins: Vec<serde_json::Value>,
    /// The file this configuration was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

impl NetworkConfigList {
    /// Parses the contents of a configuration file; `path` decides between list and single plugin.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
        let mut list: NetworkConfigList = if is_list {
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?
        } else {
            let obj = value
                .as_object()
                .ok_or_else(|| invalid("not a JSON object".into()))?;
            let field = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
            NetworkConfigList {
                cni_version: field("cniVersion").ok_or_else(|| invalid("no cniVersion".into()))?,
                name: field("name").ok_or_else(|| invalid("no name".into()))?,
                disable_check: false,
                plugins: vec![value.clone()],
                source: PathBuf::new(),
            }
        };
        if list.name.is_empty() {
            return Err(invalid("empty network name".into()));
        }
        if list.plugins.is_empty() {
            return Err(invalid("no plugins".into()));
        }
        for (i, plugin) in list.plugins.iter().enumerate() {
            if plugin
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .is_empty()
            {
                return Err(invalid(format!("plugin {i} has no type")));
            }
        }
        list.source = path.to_path_buf();
        Ok(list)
    }
}

impl NetworkConfigList {
    /// The list as CNI JSON (`cniVersion`, `name`, `disableCheck`, `plugins`), without `source`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }

    /// The `type` of each plugin, in order (empty for a plugin without one).
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .map(|p| p.get("type").and_then(|t| t.as_str()).unwrap_or(""))
            .collect()
    }
}

/// What a scan of the conf dir found: valid networks in lexical file order, and the files refused.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub networks: Vec<NetworkConfigList>,
    pub invalid: Vec<ConfigError>,
}

/// Reads every `.conf`, `.conflist` and `.json` file of `dir` in lexical order.
///
/// A missing directory is an empty result (the network is simply not ready yet).
pub fn scan_dir(dir: &Path) -> Result<ScanResult, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ScanResult::default()),
        Err(source) => {
            return Err(ConfigError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            ) && p.is_file()
        })
        .collect();
    files.sort();
    let mut result = ScanResult::default();
    for path in files {
        let parsed = std::fs::read(&path)
            .map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|bytes| NetworkConfigList::parse(&path, &bytes));
        match parsed {
            Ok(list) => result.networks.push(list),
            Err(e) => result.invalid.push(e),
        }
    }
    Ok(result)
}

/// The network pods join: the one named `name`, or with an empty name the first valid file.
pub fn default_network(dir: &Path, name: &str) -> Result<Option<NetworkConfigList>, ConfigError> {
    let scan = scan_dir(dir)?;
    Ok(scan
        .networks
        .into_iter()
        .find(|n| name.is_empty() || n.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str =
        r#"{"cniVersion":"1.0.0","name":"crius","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;

    #[test]
    fn missing_dir_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let got = default_network(&dir.path().join("absent"), "").unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn first_valid_file_in_lexical_order_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{not json").unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            BRIDGE.replace("crius", "b"),
        )
        .unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), BRIDGE).unwrap();
        std::fs::write(dir.path().join("README"), "ignored").unwrap();
        let scan = scan_dir(dir.path()).unwrap();
        assert_eq!(scan.networks.len(), 2);
        assert_eq!(scan.invalid.len(), 1);
        assert_eq!(
            default_network(dir.path(), "").unwrap().unwrap().name,
            "crius"
        );
        assert_eq!(default_network(dir.path(), "b").unwrap().unwrap().name, "b");
        assert!(default_network(dir.path(), "other").unwrap().is_none());
    }

    #[test]
    fn single_plugin_conf_becomes_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("99-lo.conf");
        std::fs::write(
            &path,
            r#"{"cniVersion":"0.4.0","name":"lo","type":"loopback"}"#,
        )
        .unwrap();
        let list = default_network(dir.path(), "").unwrap().unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.source, path);
    }

    #[test]
    fn plugin_without_type_is_refused() {
        let err = NetworkConfigList::parse(
            Path::new("x.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("plugin 0 has no type"), "{err}");
    }

    #[test]
    fn to_value_round_trips_through_parse() {
        let list = NetworkConfigList::parse(Path::new("a.conflist"), BRIDGE.as_bytes()).unwrap();
        let bytes = serde_json::to_vec(&list.to_value()).unwrap();
        let again = NetworkConfigList::parse(Path::new("a.conflist"), &bytes).unwrap();
        assert_eq!(again, list);
        assert_eq!(list.plugin_types(), vec!["bridge", "portmap"]);
    }
}
