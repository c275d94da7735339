//! The CNI exec protocol: running a network configuration list's plugins for ADD, DEL and CHECK
//! (spec 0.3.x, 0.4.0 and 1.0.0), chaining `prevResult`, filtering `runtimeConfig` by each
//! plugin's declared capabilities, and caching what ADD did so DEL works after a restart.
//!
//! Blocking by design: the daemon calls it inside `spawn_blocking`. One attachment
//! (network, container id, ifname) must not see concurrent calls; that locking is the caller's.
//!
//! Owns: plugin lookup and invocation (with a per-invocation timeout that kills the plugin's
//! process group), error decoding, the ADD undo, and the result cache under `cache_dir`.
//! Must not: know CRI types or the daemon's store, nor enter namespaces itself (plugins do).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::cache::{self, CacheEntry};
use crate::config::NetworkConfigList;
use crate::process::{run_with_timeout, RunError, RunOutput};
use crate::result::CniResult;

/// How long one plugin invocation may run before it is killed.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where CNI output shown in errors is cut.
const MAX_OUTPUT_IN_ERROR: usize = 2048;

/// The coarse kind of a [`CniError`], for the caller's one error→status mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniErrorKind {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    DeadlineExceeded,
    Internal,
}

/// Errors of plugin execution; messages name the network, plugin or path involved.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid cni network {network}: {reason}")]
    InvalidConfig { network: String, reason: String },
    #[error("cni plugin {plugin} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    /// The plugin reported a CNI error (`{"code","msg","details"}`).
    #[error("plugin {plugin} failed (code {code}): {msg}{}", details_suffix(.details))]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
    },
    /// The plugin failed without a decodable CNI error.
    #[error("plugin {plugin} {command} exited with {status}: {output}")]
    PluginExited {
        network: String,
        plugin: String,
        command: &'static str,
        status: String,
        output: String,
    },
    #[error("plugin {plugin} {command} printed an invalid result: {reason}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("plugin {plugin} {command} timed out after {timeout:?} and was killed")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("run plugin {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cni cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cached result for network {network} container {container_id} ifname {ifname}")]
    NoCachedResult {
        network: String,
        container_id: String,
        ifname: String,
    },
    /// ADD failed and undoing its earlier steps failed too: a later DEL must finish the job.
    #[error("{add}; undoing the add also failed: {undo}")]
    UndoFailed {
        add: Box<CniError>,
        undo: Box<CniError>,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

impl CniError {
    pub fn kind(&self) -> CniErrorKind {
        match self {
            CniError::InvalidArgument(_) => CniErrorKind::InvalidArgument,
            CniError::InvalidConfig { .. } | CniError::PluginNotFound { .. } => {
                CniErrorKind::FailedPrecondition
            }
            CniError::NoCachedResult { .. } => CniErrorKind::NotFound,
            CniError::Timeout { .. } => CniErrorKind::DeadlineExceeded,
            CniError::UndoFailed { add, .. } => add.kind(),
            CniError::Plugin { .. }
            | CniError::PluginExited { .. }
            | CniError::BadResult { .. }
            | CniError::Spawn { .. }
            | CniError::Cache { .. } => CniErrorKind::Internal,
        }
    }
}

/// One pod interface on one network: what the plugins receive besides the config.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    /// The pod's network namespace path (`CNI_NETNS`); may be gone at DEL time.
    pub netns: &'a Path,
    /// The interface inside the pod, usually `eth0`.
    pub ifname: &'a str,
    /// `CNI_ARGS` pairs (e.g. `K8S_POD_NAMESPACE`); `IgnoreUnknown=1` is put first when absent.
    pub args: Vec<(String, String)>,
    /// Capability args (`portMappings`, `dns`, `cgroupPath`, ...): each plugin gets, as
    /// `runtimeConfig`, only those it declares in its `capabilities` map.
    pub capabilities: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Del,
    Check,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
        }
    }
}

/// Everything a single invocation needs besides the plugin config.
/// Whether `path` is a network namespace file (nsfs), not a plain file or nothing.
fn is_netns(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // `f_type` is i64 on x86_64 and narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let is_nsfs = |s: rustix::fs::StatFs| s.f_type as i64 == NSFS_MAGIC;
    !path.as_os_str().is_empty() && rustix::fs::statfs(path).is_ok_and(is_nsfs)
}

struct Env<'a> {
    network: &'a str,
    container_id: &'a str,
    netns: &'a Path,
    ifname: &'a str,
    args: String,
}

/// The CNI runtime: plugin directories searched in order, and the result cache directory.
#[derive(Debug, Clone)]
pub struct Cni {
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
}

impl Cni {
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Cni {
            bin_dirs,
            cache_dir,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }

    /// Overrides the per-invocation timeout ([`DEFAULT_PLUGIN_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn bin_dirs(&self) -> &[PathBuf] {
        &self.bin_dirs
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Runs ADD for every plugin of `net` in order, chaining `prevResult`.
    ///
    /// The attachment is recorded in the cache before the first plugin runs (so a crash mid-ADD
    /// still leaves DEL the config) and completed with the result at the end. On failure, DEL runs
    /// in reverse for the plugins already invoked (the failing one included) and the cache entry
    /// is dropped; if that undo fails too, the entry stays and [`CniError::UndoFailed`] is returned.
    pub fn add(
        &self,
        net: &NetworkConfigList,
        att: &Attachment<'_>,
    ) -> Result<CniResult, CniError> {
        validate_attachment(att)?;
        validate_network(net)?;
        let path = cache::entry_path(&self.cache_dir, &net.name, att.container_id, att.ifname);
        let mut entry = CacheEntry::new(
            &net.name,
            att.container_id,
            att.ifname,
            att.netns,
            net.to_value(),
            att.args.clone(),
            att.capabilities.clone(),
        );
        cache::write(&path, &entry).map_err(|source| CniError::Cache {
            path: path.clone(),
            source,
        })?;
        let env = Env {
            network: &net.name,
            container_id: att.container_id,
            netns: att.netns,
            ifname: att.ifname,
            args: cni_args(&att.args),
        };
        let mut prev: Option<CniResult> = None;
        for (i, plugin) in net.plugins.iter().enumerate() {
            let step = self
                .invoke(
                    net,
                    plugin,
                    Verb::Add,
                    prev.as_ref().map(|r| &r.raw),
                    &att.capabilities,
                    &env,
                )
                .and_then(|out| {
                    CniResult::from_slice(&out).map_err(|e| CniError::BadResult {
                        plugin: plugin_type(plugin).to_string(),
                        command: Verb::Add.as_str(),
                        reason: e.0,
                    })
                });
            match step {
                Ok(result) => prev = Some(result),
                Err(err) => {
                    return Err(self.undo_add(net, i + 1, prev.as_ref(), att, &env, &path, err))
                }
            }
        }
        let Some(result) = prev else {
            return Err(invalid_config(net, "no plugins"));
        };
        entry.result = Some(result.raw.clone());
        if let Err(source) = cache::write(&path, &entry) {
            let err = CniError::Cache {
                path: path.clone(),
                source,
            };
            let n = net.plugins.len();
            return Err(self.undo_add(net, n, Some(&result), att, &env, &path, err));
        }
        Ok(result)
    }

    /// DEL for `net.plugins[..invoked]` in reverse after a failed ADD; returns the error to report.
    #[allow(clippy::too_many_arguments)]
    fn undo_add(
        &self,
        net: &NetworkConfigList,
        invoked: usize,
        prev: Option<&CniResult>,
        att: &Attachment<'_>,
        env: &Env<'_>,
        path: &Path,
        err: CniError,
    ) -> CniError {
        let plugins = &net.plugins[..invoked.min(net.plugins.len())];
        let undo = self.del_plugins(
            net,
            plugins,
            prev.map(|r| &r.raw),
            &att.capabilities,
            env,
            true,
        );
        match undo {
            Ok(()) => match cache::remove(path) {
                Ok(()) => err,
                Err(source) => CniError::UndoFailed {
                    add: Box::new(err),
                    undo: Box::new(CniError::Cache {
                        path: path.to_path_buf(),
                        source,
                    }),
                },
            },
            Err(undo) => CniError::UndoFailed {
                add: Box::new(err),
                undo: Box::new(undo),
            },
        }
    }

    /// Runs DEL for every plugin in reverse order and drops the cache entry.
    ///
    /// Uses the cached config list (and the cached result as `prevResult`, for cniVersion >=
    /// 0.4.0) when ADD recorded one, so it works after the conf file changed or vanished; `net`
    /// is the fallback. With `net == None`, every cached network of this container/ifname is
    /// deleted. Idempotent: nothing cached and no `net` is success. `CNI_NETNS` is the path when
    /// it still is a network namespace, and empty when it is not (gone, or a pin whose mount went
    /// away, as after a reboot): the CNI spec has plugins treat that as a namespace already
    /// cleaned, so IPAM still releases the address (an unmounted pin given as-is made the
    /// loopback plugin fail with "unknown FS magic" forever). CNI_ARGS
    /// and capabilities come from `att` unless empty, then from the cache.
    pub fn del(
        &self,
        net: Option<&NetworkConfigList>,
        att: &Attachment<'_>,
    ) -> Result<(), CniError> {
        validate_attachment(att)?;
        let netns: &Path = if is_netns(att.netns) {
            att.netns
        } else {
            Path::new("")
        };
        let targets: Vec<(PathBuf, Option<CacheEntry>, Option<NetworkConfigList>)> = match net {
            Some(net) => {
                validate_network(net)?;
                let path =
                    cache::entry_path(&self.cache_dir, &net.name, att.container_id, att.ifname);
                // An unreadable entry must not block DEL forever: fall back to `net`, and the
                // entry is removed once DEL succeeded.
                let entry = match cache::read(&path) {
                    Ok(entry) => entry,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => None,
                    Err(source) => return Err(CniError::Cache { path, source }),
                };
                vec![(path, entry, Some(net.clone()))]
            }
            None => cache::find(&self.cache_dir, att.container_id, att.ifname)
                .map_err(|source| CniError::Cache {
                    path: cache::results_dir(&self.cache_dir),
                    source,
                })?
                .into_iter()
                .map(|(path, entry)| (path, Some(entry), None))
                .collect(),
        };
        for (path, entry, fallback) in targets {
            let cached_list = match &entry {
                Some(entry) => Some(list_from_cache(&path, entry)?),
                None => None,
            };
            let Some(list) = cached_list.or(fallback) else {
                continue;
            };
            let args = match &entry {
                Some(e) if att.args.is_empty() => e.cni_args.clone(),
                _ => att.args.clone(),
            };
            let caps = match &entry {
                Some(e) if att.capabilities.is_empty() => e.capability_args.clone(),
                _ => att.capabilities.clone(),
            };
            let env = Env {
                network: &list.name,
                container_id: att.container_id,
                netns,
                ifname: att.ifname,
                args: cni_args(&args),
            };
            let prev = entry.as_ref().and_then(|e| e.result.as_ref());
            self.del_plugins(&list, &list.plugins, prev, &caps, &env, false)?;
            cache::remove(&path).map_err(|source| CniError::Cache { path, source })?;
        }
        Ok(())
    }

    /// DEL in reverse order. `keep_going` (the ADD undo) runs every plugin and reports the first
    /// error; otherwise the first error stops the run, as libcni does, and a retry finishes it.
    fn del_plugins(
        &self,
        net: &NetworkConfigList,
        plugins: &[Value],
        prev: Option<&Value>,
        caps: &Map<String, Value>,
        env: &Env<'_>,
        keep_going: bool,
    ) -> Result<(), CniError> {
        let prev = if version_at_least(net, (0, 4, 0))? {
            prev
        } else {
            None
        };
        let mut first_err = None;
        for plugin in plugins.iter().rev() {
            if let Err(e) = self.invoke(net, plugin, Verb::Del, prev, caps, env) {
                if !keep_going {
                    return Err(e);
                }
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Runs CHECK for every plugin in order with the cached ADD result as `prevResult`.
    ///
    /// A no-op for cniVersion < 0.4.0 (CHECK does not exist there) and for `disableCheck`.
    pub fn check(&self, net: &NetworkConfigList, att: &Attachment<'_>) -> Result<(), CniError> {
        validate_attachment(att)?;
        validate_network(net)?;
        if net.disable_check || !version_at_least(net, (0, 4, 0))? {
            return Ok(());
        }
        let path = cache::entry_path(&self.cache_dir, &net.name, att.container_id, att.ifname);
        let entry = cache::read(&path).map_err(|source| CniError::Cache {
            path: path.clone(),
            source,
        })?;
        let Some((entry, prev)) = entry.and_then(|e| e.result.clone().map(|r| (e, r))) else {
            return Err(CniError::NoCachedResult {
                network: net.name.clone(),
                container_id: att.container_id.to_string(),
                ifname: att.ifname.to_string(),
            });
        };
        let caps = if att.capabilities.is_empty() {
            &entry.capability_args
        } else {
            &att.capabilities
        };
        let args = if att.args.is_empty() {
            &entry.cni_args
        } else {
            &att.args
        };
        let env = Env {
            network: &net.name,
            container_id: att.container_id,
            netns: att.netns,
            ifname: att.ifname,
            args: cni_args(args),
        };
        for plugin in &net.plugins {
            self.invoke(net, plugin, Verb::Check, Some(&prev), caps, &env)?;
        }
        Ok(())
    }

    /// The result ADD cached for this attachment, if any (and if still readable).
    pub fn cached_result(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<CniResult> {
        if [network, container_id, ifname]
            .iter()
            .any(|s| !is_safe_component(s))
        {
            return None;
        }
        let path = cache::entry_path(&self.cache_dir, network, container_id, ifname);
        let raw = cache::read(&path).ok()??.result?;
        CniResult::from_value(raw).ok()
    }

    /// The container ids that have a cache entry (complete or not), for cleanup at start.
    pub fn cached_container_ids(&self) -> Result<Vec<String>, CniError> {
        let dir = cache::results_dir(&self.cache_dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CniError::Cache { path: dir, source }),
        };
        let mut ids = Vec::new();
        for dirent in entries.flatten() {
            if let Ok(Some(entry)) = cache::read(&dirent.path()) {
                if !ids.contains(&entry.container_id) {
                    ids.push(entry.container_id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The first executable named `plugin` in `bin_dirs`.
    pub fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if !is_safe_component(plugin) {
            return Err(CniError::InvalidArgument(format!(
                "invalid plugin type {plugin:?}"
            )));
        }
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| {
                std::fs::metadata(path)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_string(),
                dirs: if self.bin_dirs.is_empty() {
                    "no plugin directories".to_string()
                } else {
                    self.bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    fn invoke(
        &self,
        net: &NetworkConfigList,
        plugin: &Value,
        verb: Verb,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
        env: &Env<'_>,
    ) -> Result<Vec<u8>, CniError> {
        let name = plugin_type(plugin);
        let path = self.find_plugin(name)?;
        let conf = plugin_config(net, plugin, prev, caps)?;
        let stdin = serde_json::to_vec(&conf).map_err(|e| invalid_config(net, &e.to_string()))?;
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| CniError::InvalidArgument(format!("plugin dirs: {e}")))?;
        let mut cmd = Command::new(&path);
        cmd.env("CNI_COMMAND", verb.as_str())
            .env("CNI_CONTAINERID", env.container_id)
            .env("CNI_NETNS", env.netns)
            .env("CNI_IFNAME", env.ifname)
            .env("CNI_ARGS", &env.args)
            .env("CNI_PATH", cni_path)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a timeout kills the plugin and anything it started.
            .process_group(0);
        let out = run_with_timeout(cmd, stdin, self.timeout).map_err(|e| match e {
            RunError::Spawn(source) => CniError::Spawn {
                path: path.clone(),
                source,
            },
            RunError::Timeout => CniError::Timeout {
                plugin: name.to_string(),
                command: verb.as_str(),
                timeout: self.timeout,
            },
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(decode_failure(env.network, name, verb, &out))
    }
}

fn decode_failure(network: &str, plugin: &str, verb: Verb, out: &RunOutput) -> CniError {
    #[derive(serde::Deserialize)]
    struct WireError {
        code: u64,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    // Spec: the error goes to stdout; some older plugins used stderr.
    for stream in [&out.stdout, &out.stderr] {
        if let Ok(e) = serde_json::from_slice::<WireError>(stream) {
            return CniError::Plugin {
                network: network.to_string(),
                plugin: plugin.to_string(),
                command: verb.as_str(),
                code: e.code,
                msg: e.msg,
                details: e.details,
            };
        }
    }
    let text = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &out.stderr
    } else {
        &out.stdout
    };
    CniError::PluginExited {
        network: network.to_string(),
        plugin: plugin.to_string(),
        command: verb.as_str(),
        status: out.status.to_string(),
        output: truncate(&String::from_utf8_lossy(text)),
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_OUTPUT_IN_ERROR {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT_IN_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The config one plugin reads on stdin: its own object plus `name` and `cniVersion` of the list,
/// `prevResult` when given, and `runtimeConfig` with only the capabilities it declares.
pub fn plugin_config(
    net: &NetworkConfigList,
    plugin: &Value,
    prev: Option<&Value>,
    caps: &Map<String, Value>,
) -> Result<Value, CniError> {
    let mut obj = plugin
        .as_object()
        .cloned()
        .ok_or_else(|| invalid_config(net, "plugin config is not an object"))?;
    obj.insert("name".into(), Value::String(net.name.clone()));
    obj.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    if let Some(prev) = prev {
        obj.insert("prevResult".into(), prev.clone());
    }
    let runtime: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, enabled)| enabled.as_bool() == Some(true))
        .filter_map(|(cap, _)| caps.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !runtime.is_empty() {
        obj.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Ok(Value::Object(obj))
}

/// `CNI_ARGS`: `IgnoreUnknown=1` first (unless given), then the pairs as `K=V` joined by `;`.
pub fn cni_args(args: &[(String, String)]) -> String {
    let mut parts: Vec<String> = Vec::with_capacity(args.len() + 1);
    if !args.is_empty() && !args.iter().any(|(k, _)| k == "IgnoreUnknown") {
        parts.push("IgnoreUnknown=1".into());
    }
    parts.extend(args.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(";")
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

fn invalid_config(net: &NetworkConfigList, reason: &str) -> CniError {
    CniError::InvalidConfig {
        network: net.name.clone(),
        reason: reason.to_string(),
    }
}

/// Safe as a file name component: no separators, not `.`/`..`, no NUL.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

fn validate_attachment(att: &Attachment<'_>) -> Result<(), CniError> {
    if !is_safe_component(att.container_id) {
        return Err(CniError::InvalidArgument(format!(
            "invalid container id {:?}",
            att.container_id
        )));
    }
    if !is_safe_component(att.ifname) || att.ifname.len() > 15 {
        return Err(CniError::InvalidArgument(format!(
            "invalid interface name {:?}",
            att.ifname
        )));
    }
    for (k, v) in &att.args {
        if k.is_empty() || k.contains(['=', ';']) || v.contains(';') {
            return Err(CniError::InvalidArgument(format!(
                "invalid cni arg {k:?}={v:?}"
            )));
        }
    }
    Ok(())
}

fn validate_network(net: &NetworkConfigList) -> Result<(), CniError> {
    if !is_safe_component(&net.name) {
        return Err(invalid_config(net, "network name is not a valid file name"));
    }
    if net.plugins.is_empty() {
        return Err(invalid_config(net, "no plugins"));
    }
    for (i, plugin) in net.plugins.iter().enumerate() {
        if !is_safe_component(plugin_type(plugin)) {
            return Err(invalid_config(
                net,
                &format!("plugin {i} has no valid type"),
            ));
        }
    }
    parse_version(&net.cni_version).map_err(|r| invalid_config(net, &r))?;
    Ok(())
}

fn parse_version(v: &str) -> Result<(u64, u64, u64), String> {
    let mut parts = v.split('.').map(str::parse::<u64>);
    let bad = || format!("invalid cniVersion {v:?}");
    let major = parts.next().and_then(Result::ok).ok_or_else(bad)?;
    let minor = parts.next().and_then(Result::ok).ok_or_else(bad)?;
    let patch = match parts.next() {
        None => 0,
        Some(p) => p.map_err(|_| bad())?,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((major, minor, patch))
}

fn version_at_least(net: &NetworkConfigList, min: (u64, u64, u64)) -> Result<bool, CniError> {
    parse_version(&net.cni_version)
        .map(|v| v >= min)
        .map_err(|r| invalid_config(net, &r))
}

fn list_from_cache(path: &Path, entry: &CacheEntry) -> Result<NetworkConfigList, CniError> {
    let mut list: NetworkConfigList =
        serde_json::from_value(entry.config.clone()).map_err(|e| CniError::Cache {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
    list.source = path.to_path_buf();
    validate_network(&list)?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(plugins: Value) -> NetworkConfigList {
        serde_json::from_value(json!({"cniVersion": "1.0.0", "name": "n", "plugins": plugins}))
            .unwrap()
    }

    #[test]
    fn runtime_config_holds_only_declared_capabilities() {
        let net = list(
            json!([{"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}]),
        );
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 8080}]));
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));
        caps.insert("dns".into(), json!({}));
        let conf = plugin_config(&net, &net.plugins[0], Some(&json!({"ips": []})), &caps).unwrap();
        assert_eq!(conf["name"], "n");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["prevResult"], json!({"ips": []}));
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        let bare = plugin_config(&net, &json!({"type": "bridge"}), None, &caps).unwrap();
        assert!(bare.get("runtimeConfig").is_none());
        assert!(bare.get("prevResult").is_none());
    }

    #[test]
    fn cni_args_format() {
        assert_eq!(cni_args(&[]), "");
        let args = vec![
            ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
            ("K8S_POD_NAME".to_string(), "web".to_string()),
        ];
        assert_eq!(
            cni_args(&args),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("0.3.1"), Ok((0, 3, 1)));
        assert_eq!(parse_version("1.0"), Ok((1, 0, 0)));
        assert!(parse_version("one").is_err());
        assert!(parse_version("1.0.0.0").is_err());
        assert!((0, 10, 0) > (0, 4, 0));
    }

    #[test]
    fn plugin_error_message_carries_code_msg_and_details() {
        let err = CniError::Plugin {
            network: "n".into(),
            plugin: "bridge".into(),
            command: "ADD",
            code: 7,
            msg: "msg".into(),
            details: "details".into(),
        };
        assert_eq!(
            err.to_string(),
            "plugin bridge failed (code 7): msg: details"
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        let att = Attachment {
            container_id: "../x",
            netns: Path::new("/x"),
            ifname: "eth0",
            args: vec![],
            capabilities: Map::new(),
        };
        let cni = Cni::new(vec![], PathBuf::from("/nonexistent"));
        let err = cni.del(None, &att).unwrap_err();
        assert_eq!(err.kind(), CniErrorKind::InvalidArgument);
        assert!(cni.find_plugin("../bridge").is_err());
    }
}
