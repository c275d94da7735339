//! Configuration: the typed `Config`, its defaults, and layering.
//!
//! Owns the one place where configuration is assembled: defaults → main file → drop-ins in
//! lexical order → explicit CLI flags, then validation of the merged result. Every error names the
//! file (or flag) and the key. Must not touch sockets, the state dirs or any other side effect:
//! loading is pure so that it can run (and fail) before anything is bound.

mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The effective configuration of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub state: StateConfig,
    pub runtime: RuntimeConfig,
    pub image: ImageConfig,
    pub network: NetworkConfig,
    pub pod: PodConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
}

/// `[api]`: the CRI endpoint and the streaming server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Unix socket kubelet connects to.
    pub listen: PathBuf,
    /// IP address the streaming (exec/attach/port-forward) server binds.
    pub stream_address: String,
    /// Port of the streaming server; 0 picks a free one.
    pub stream_port: u16,
    /// A streaming session with no traffic for this long is closed (`"4h"`, `"30m"`, `"90s"`,
    /// `"1h30m"`); `"0"` never closes one. See [`parse_duration`].
    pub stream_idle_timeout: String,
    /// Most streaming sessions (exec, attach, port-forward) at once; more get HTTP 503.
    pub stream_max_sessions: usize,
    /// PEM certificate chain of the streaming server; with `stream_tls_key`, it serves HTTPS.
    /// Empty: plain HTTP.
    pub stream_tls_cert: PathBuf,
    /// PEM private key of `stream_tls_cert`.
    pub stream_tls_key: PathBuf,
}

/// Parses a duration as a sequence of numbers with units `h`, `m`, `s`, `ms` (`"4h"`,
/// `"1h30m"`, `"90s"`, `"250ms"`); a bare `"0"` is zero.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let per_unit = match &rest[..unit_len] {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err(format!("{text:?}: a unit (h, m, s, ms) is required")),
            other => return Err(format!("{text:?}: unknown unit {other:?}")),
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(per_unit)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{text:?}: too long"))?;
    }
    Ok(std::time::Duration::from_millis(total_ms))
}

/// `[state]`: where state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Persistent state: records, images, layers.
    pub root: PathBuf,
    /// Volatile state (tmpfs): sockets, namespace pins, monitor dirs.
    pub runroot: PathBuf,
}

/// `[runtime]`: OCI runtimes and cgroups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Handler used when a pod names none; empty (the default): `crun` when that handler is
    /// configured and its binary is installed, else `runc` (CRI-O's choice), decided at load.
    pub default_handler: String,
    pub cgroup_driver: CgroupDriver,
    /// RuntimeClass handlers by name.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// The `crius-conmon` binary (monitor and pod infra process): absolute, or a bare name looked
    /// up next to the `crius` binary, then on `PATH`.
    pub monitor_path: PathBuf,
    /// Maximum number of processes per container (the pids cgroup); 0 = no limit.
    pub pids_limit: i64,
    /// A container whose request names no seccomp profile gets `RuntimeDefault`; false: it
    /// runs unconfined (kubelet sends `RuntimeDefault` explicitly when it wants it).
    pub seccomp_use_default_when_empty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// `[runtime.handlers.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// OCI runtime binary: absolute, or a bare name looked up on `PATH`.
    pub path: PathBuf,
    /// The runtime's state dir (`--root`); empty: `<runroot>/runtimes/<name>`.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub root: PathBuf,
    /// Monitor binary for this handler; empty: `[runtime] monitor_path`.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub monitor_path: PathBuf,
}

fn path_is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// `[image] max_layer_size` default: 8 GiB unpacked.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 8 << 30;
/// `[image] max_image_size` default: 32 GiB unpacked.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 32 << 30;
/// `[image] max_layers` default: what the overlay option page holds on kernels before 6.8.
pub const DEFAULT_MAX_LAYERS: usize = 120;
/// The kernel's limit of overlayfs lower layers (`OVL_MAX_STACK`).
pub const MAX_OVERLAY_LAYERS: usize = 500;

/// `[image]`: pulling and storing images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Registry used for references without a host (`busybox`).
    pub default_registry: String,
    /// Images never garbage collected and reported `pinned`.
    pub pinned_images: Vec<String>,
    /// Layers downloaded at once, across all pulls.
    pub max_concurrent_downloads: usize,
    /// Most bytes one layer may unpack to (its uncompressed tar); 0 = unlimited. Refuses
    /// decompression bombs before they fill the disk.
    pub max_layer_size: u64,
    /// Most bytes all layers of one image may unpack to together; 0 = unlimited.
    pub max_image_size: u64,
    /// Most layers an image may have (checked at pull). The overlay of a container stacks them
    /// all: at most 500 for the kernel, about 120 through the mount option page before Linux 6.8.
    pub max_layers: usize,
    /// Docker-style credentials file (`{"auths": {"HOST": {"auth": "base64(user:pass)"}}}`),
    /// used when a pull carries no credentials. Empty: none.
    pub auth_file: PathBuf,
    /// Registries on loopback (`localhost`, `127.0.0.0/8`, `::1`) without a `ca_file` are
    /// `insecure` (TLS without verification, then plain HTTP), as in containerd.
    pub insecure_loopback: bool,
    /// Per-registry settings by host (`"docker.io"`, `"registry.k8s.io"`, `"127.0.0.1:5000"`).
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// `[image.registries."HOST"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Tried in order before the host itself: `host[:port][/path/prefix]`.
    pub mirrors: Vec<String>,
    /// Only the mirrors are tried, never the host itself.
    pub mirror_only: bool,
    /// Plain HTTP and no TLS verification for this host and its mirrors.
    pub insecure: bool,
    /// PEM file of CA certificates trusted, besides the built-in roots, when talking TLS to
    /// this host (also when it serves as another registry's mirror). Empty: none.
    pub ca_file: PathBuf,
}

/// `[network]`: CNI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Directory of `.conflist`/`.conf` files.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Network name pods join; empty means the first file in lexical order.
    pub default_network: String,
}

/// `[pod]`: pod sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodConfig {
    /// Size of each pod's `/dev/shm` tmpfs in bytes.
    pub shm_size: u64,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// `IP:PORT` serving `/metrics` and `/healthz`.
    pub address: String,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or a `tracing` filter directive (`info,crius::server=debug`).
    pub level: String,
    pub format: LogFormat,
}

/// `[tracing]`: OpenTelemetry spans of every RPC and its main steps, exported over OTLP/gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, `http://HOST:PORT` (`http://127.0.0.1:4317`). Empty: tracing is off,
    /// no exporter is built and nothing is exported.
    pub endpoint: String,
    /// Root spans sampled per million (CRI-O's key); 0..=1_000_000. A span whose parent
    /// (kubelet's `traceparent`) is sampled is always sampled, an unsampled parent never.
    pub sampling_rate_per_million: u32,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl TracingConfig {
    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }
}

/// `[tracing] sampling_rate_per_million` upper bound: every root span.
pub const SAMPLING_ALL: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: PathBuf::from("/run/crius/crius.sock"),
            stream_address: "127.0.0.1".into(),
            stream_port: 0,
            stream_idle_timeout: "4h".into(),
            stream_max_sessions: 1000,
            stream_tls_cert: PathBuf::new(),
            stream_tls_key: PathBuf::new(),
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            root: PathBuf::from("/var/lib/crius"),
            runroot: PathBuf::from("/run/crius"),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let handler = |name: &str| {
            (
                name.to_string(),
                HandlerConfig {
                    path: PathBuf::from(name),
                    root: PathBuf::new(),
                    monitor_path: PathBuf::new(),
                },
            )
        };
        RuntimeConfig {
            default_handler: String::new(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            handlers: [handler("runc"), handler("crun")].into_iter().collect(),
            monitor_path: PathBuf::from("crius-conmon"),
            pids_limit: 0,
            seccomp_use_default_when_empty: false,
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            default_registry: "docker.io".into(),
            pinned_images: Vec::new(),
            max_concurrent_downloads: 3,
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            max_layers: DEFAULT_MAX_LAYERS,
            auth_file: PathBuf::new(),
            insecure_loopback: true,
            registries: BTreeMap::new(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            default_network: String::new(),
        }
    }
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            shm_size: 64 * 1024 * 1024,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            address: "127.0.0.1:9090".into(),
        }
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: String::new(),
            sampling_rate_per_million: SAMPLING_ALL,
            service_name: "crius".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

// `Config: Default` is derived from the section defaults above.
#[allow(clippy::derivable_impls)]
impl Default for Config {
    fn default() -> Self {
        Config {
            api: ApiConfig::default(),
            state: StateConfig::default(),
            runtime: RuntimeConfig::default(),
            image: ImageConfig::default(),
            network: NetworkConfig::default(),
            pod: PodConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

/// A configuration that cannot be used; the daemon stops before binding anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("config {source_name}: key `{key}`: {message}")]
    Key {
        source_name: String,
        key: String,
        message: String,
    },
    #[error("config: invalid value for `{key}` (set by {source_name}): {message}")]
    Invalid {
        key: String,
        source_name: String,
        message: String,
    },
}

/// Where configuration comes from, besides the built-in defaults.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Main file.
    pub file: PathBuf,
    /// A missing main file is an error only when it was named explicitly.
    pub file_required: bool,
    /// Drop-in directory: `*.toml` applied in lexical order.
    pub dir: PathBuf,
    /// Explicit CLI flags: (dotted key, value, flag name).
    pub overrides: Vec<Override>,
}

/// One explicit CLI flag, applied last.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: &'static str,
    pub value: toml::Value,
    pub flag: &'static str,
}

/// Which source last set each dotted key; used to name the culprit of an invalid value.
#[derive(Debug, Default)]
struct Provenance(BTreeMap<String, String>);

impl Provenance {
    fn record(&mut self, prefix: &str, table: &toml::Table, source: &str) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => self.record(&key, t, source),
                _ => {
                    self.0.insert(key, source.to_string());
                }
            }
        }
    }

    /// The source of `key` or of its nearest recorded parent/child; defaults otherwise.
    fn source_of(&self, key: &str) -> String {
        let mut probe = key;
        loop {
            if let Some(s) = self.0.get(probe) {
                return s.clone();
            }
            // A key below `probe` (a handler table set in a file, say).
            let child = format!("{probe}.");
            if let Some((_, s)) = self.0.iter().rev().find(|(k, _)| k.starts_with(&child)) {
                return s.clone();
            }
            match probe.rfind('.') {
                Some(i) => probe = &probe[..i],
                None => return "defaults".into(),
            }
        }
    }
}

/// Checks one TOML text against the schema (unknown keys, types), naming the key on failure.
fn check_schema(source_name: &str, text: &str) -> Result<toml::Table, ConfigError> {
    let de = toml::Deserializer::new(text);
    if let Err(e) = serde_path_to_error::deserialize::<_, Config>(de) {
        let key = e.path().to_string();
        let message = e.into_inner().message().to_string();
        return Err(if key.is_empty() || key == "." {
            ConfigError::Parse {
                source_name: source_name.to_string(),
                message,
            }
        } else {
            ConfigError::Key {
                source_name: source_name.to_string(),
                key,
                message,
            }
        });
    }
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        source_name: source_name.to_string(),
        message: e.message().to_string(),
    })
}

/// Merges `overlay` into `base`: tables recursively, every other value replaced.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The `*.toml` files of the drop-in directory in lexical order; a missing directory has none.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Sets `value` at dotted `key` in `table`, creating intermediate tables.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => unreachable!("replaced by a table above"),
        }
    }
    cur.insert(last.to_string(), value);
}

/// Loads, layers and validates the configuration.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let mut merged = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
        source_name: "defaults".into(),
        message: e.to_string(),
    })?;
    let mut provenance = Provenance::default();

    let mut files = Vec::new();
    match read_optional(&sources.file)? {
        Some(text) => files.push((sources.file.clone(), text)),
        None if sources.file_required => {
            return Err(ConfigError::Read {
                path: sources.file.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        None => {}
    }
    for path in drop_ins(&sources.dir)? {
        if let Some(text) = read_optional(&path)? {
            files.push((path, text));
        }
    }
    for (path, text) in files {
        let name = path.display().to_string();
        let table = check_schema(&name, &text)?;
        provenance.record("", &table, &name);
        merge(&mut merged, table);
    }
    for o in &sources.overrides {
        set_dotted(&mut merged, o.key, o.value.clone());
        provenance.0.insert(o.key.to_string(), o.flag.to_string());
    }

    let config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key {
                source_name: provenance.source_of(&key),
                key,
                message: e.into_inner().to_string(),
            }
        })?;
    let mut config = config;
    config.runtime.pick_default_handler();
    config
        .validate()
        .map_err(|(key, message)| ConfigError::Invalid {
            source_name: provenance.source_of(&key),
            key,
            message,
        })?;
    Ok(config)
}

impl RuntimeConfig {
    /// Fills an empty `default_handler`: `crun` when configured and installed (faster to start
    /// containers and execs), else `runc`. Blocking (looks on `PATH`).
    pub fn pick_default_handler(&mut self) {
        if !self.default_handler.is_empty() {
            return;
        }
        let crun_installed = self
            .handlers
            .get("crun")
            .is_some_and(|h| crate::runtime::find_binary(&h.path).is_some());
        self.default_handler = if crun_installed { "crun" } else { "runc" }.into();
    }
}

impl Config {
    /// The configuration as TOML, as `crius config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
