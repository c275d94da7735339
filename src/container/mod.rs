//! Containers: create (rootfs, OCI spec, monitor), start, stop, remove, status, exec, update,
//! log reopen, and restart re-adoption.
//!
//! Owns `<runroot>/containers/<id>` (bundle: `config.json`, `rootfs/`), `<runroot>/m/<short id>`
//! (the monitor's dir: sockets, pid files, exit record), `<root>/containers/<id>` (overlay upper
//! and work) and the `container` records. [`Containers`] is the domain API the handlers call.
//! Must not build CRI responses (handlers do) or build runtime argv (`runtime::oci` does).
//!
//! Create runs as one blocking task with a rollback stack (like pods); the record is written
//! last. The monitor, not the daemon, is the container's parent, so a daemon restart leaves
//! containers running; exits are learned from the monitor's exit record, as soon as the monitor
//! exits (a pidfd per live container, see [`Containers::watch_exit`]) and again on every
//! status/list/stop. Every state change is a read-modify-write of that container's record
//! (`Collection::modify`, under the record's own lock) and publishes its lifecycle event
//! (`crate::events`) before the lock is released, so each transition happens, and is
//! published, once and in record order; no lock is shared between containers.
//!
//! One file per job: this one holds the domain type, its opening (restore, orphan cleanup)
//! and queries; `create.rs` CreateContainer; `lifecycle.rs` start, stop, remove, update and
//! log reopening; `exit.rs` exit learning and reconciliation with the node; `exec_ops.rs` the
//! container side of exec and attach, with `exec.rs` building each exec's process.

mod create;
pub mod exec;
mod exec_ops;
mod exit;
pub mod host;
mod lifecycle;
pub mod record;
pub mod resources;
pub mod rootfs;
pub mod spec;
pub mod stats;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::error::{Error, Result};
use crate::events::{EventKind, Events};
use crate::image::Images;
use crate::keyed::KeyedLocks;
use crate::metrics::Metrics;
use crate::runtime::monitor;
use crate::runtime::oci::{CreateRequest, ExecOutput, OciRuntime};
use crate::sandbox::rollback::Rollback;
use crate::sandbox::{SandboxRecord, SandboxState, Sandboxes};
use crate::store::{Collection, LoadReport, Modified};
use crate::util::{io_err, join_err, lock, new_id, now_ns};
pub use record::{ContainerRecord, ContainerState, UserRecord};

/// Image names a CreateContainer resolved and locked, to the image ids they resolved to.
pub type ImagePins = HashMap<String, String>;

/// Paths and host facts the container domain needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<runroot>/containers`.
    pub bundles_dir: PathBuf,
    /// `<runroot>/m`: monitor dirs (kept short for socket paths).
    pub monitors_dir: PathBuf,
    /// `<root>/containers`.
    pub storage_dir: PathBuf,
    /// `<root>/l`: short links to layer dirs.
    pub links_dir: PathBuf,
    /// `<root>/i`: idmapped layers and volumes staged while a container of a pod with a user
    /// namespace is created (see `crate::idmap`).
    pub idmap_dir: PathBuf,
    /// The host's cgroup hierarchies, for stats; `None` when none were found.
    pub cgroups: Option<crate::cgroups::Cgroups>,
    pub host: spec::HostView,
}

/// Where an attach session connects.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    pub socket: PathBuf,
    pub monitor_dir: PathBuf,
    pub tty: bool,
    /// The container's stdin closes when the first attach client's input ends.
    pub stdin_once: bool,
}

/// A `ListContainers` filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: String,
    pub pod_id: String,
    pub state: Option<ContainerState>,
    pub labels: HashMap<String, String>,
}

pub struct Containers {
    records: Arc<Collection<ContainerRecord>>,
    runtimes: BTreeMap<String, Arc<dyn OciRuntime>>,
    sandboxes: Arc<Sandboxes>,
    images: Images,
    settings: Settings,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
    names: Mutex<HashMap<String, String>>,
    /// The last signal StopContainer sent to a container whose monitor is gone (its exit code
    /// is then 128 + that signal, whoever learns about the exit first).
    signalled: Mutex<HashMap<String, i32>>,
    creating: KeyedLocks,
    locks: KeyedLocks,
    /// Last `(time, cumulative CPU ns)` per container (and `pod:<id>`), for CPU rates.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// Every pod's figures for ListPodSandboxMetrics.
    metrics_snapshot: stats::MetricsSnapshot,
    /// Removed containers whose teardown is still running, by id.
    teardowns: Mutex<HashMap<String, Teardown>>,
}

/// A removed container's teardown, in progress or failed.
struct Teardown {
    /// The container's record as it was removed.
    rec: Arc<ContainerRecord>,
    /// Becomes `true` when the teardown ended (done or failed).
    done: tokio::sync::watch::Receiver<bool>,
    /// It failed: [`Containers::wait_teardowns`] retries it (the record is gone, so nothing
    /// else would before the next start).
    failed: bool,
}

/// Upgrades a version 1 record (config and resources as base64 protobuf) to typed fields.
/// `None` when there is nothing to upgrade; an error names what could not be decoded.
fn upgrade_record(rec: &ContainerRecord) -> Option<std::result::Result<ContainerRecord, String>> {
    if rec.config_pb.is_empty() && rec.resources_pb.is_empty() {
        return None;
    }
    let mut next = rec.clone();
    let upgraded = (|| {
        if !rec.config_pb.is_empty() {
            next.config = crate::util::decode_legacy_pb(&rec.config_pb)
                .map_err(|e| format!("config: {e}"))?;
        }
        if !rec.resources_pb.is_empty() {
            next.resources = crate::util::decode_legacy_pb(&rec.resources_pb)
                .map_err(|e| format!("resources: {e}"))?;
        }
        next.config_pb.clear();
        next.resources_pb.clear();
        Ok(next)
    })();
    Some(upgraded)
}

/// The image config fields a container spec needs.
fn image_view(config: &serde_json::Value) -> spec::ImageView {
    let c = &config["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let string = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    spec::ImageView {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: string(&c["WorkingDir"]),
        user: string(&c["User"]),
        stop_signal: string(&c["StopSignal"]),
    }
}

impl Containers {
    /// Loads records and re-adopts running containers. Blocking.
    pub fn open(
        state_root: &Path,
        settings: Settings,
        runtimes: BTreeMap<String, Arc<dyn OciRuntime>>,
        sandboxes: Arc<Sandboxes>,
        images: Images,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Result<(Arc<Self>, LoadReport)> {
        let (records, report) = Collection::<ContainerRecord>::open(state_root)?;
        for dir in [
            &settings.bundles_dir,
            &settings.monitors_dir,
            &settings.storage_dir,
        ] {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let this = Arc::new(Containers {
            records,
            runtimes,
            sandboxes,
            images,
            settings,
            metrics,
            events,
            names: Mutex::new(HashMap::new()),
            signalled: Mutex::new(HashMap::new()),
            creating: KeyedLocks::default(),
            locks: KeyedLocks::default(),
            cpu_samples: Mutex::new(HashMap::new()),
            metrics_snapshot: stats::MetricsSnapshot::default(),
            teardowns: Mutex::new(HashMap::new()),
        });
        for (id, rec) in this.records.list() {
            match upgrade_record(&rec) {
                None => {}
                Some(Ok(next)) => match this.records.put(&id, next) {
                    Ok(_) => {
                        tracing::info!(container_id = %id, "container record upgraded to typed config")
                    }
                    Err(e) => {
                        tracing::error!(container_id = %id, error = %e, "container record not upgraded")
                    }
                },
                Some(Err(e)) => {
                    tracing::error!(container_id = %id, error = %e, "container record from version 1 cannot be decoded; its config is empty")
                }
            }
            lock(&this.names).insert(rec.name_key(), id.clone());
            this.reconcile_blocking(&id);
            match this.refresh_blocking(&id) {
                Ok(rec) if rec.state != ContainerState::Exited => this.watch_exit(&rec),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(container_id = %id, error = %e, "container state refresh failed")
                }
            }
        }
        this.clean_orphans();
        // Read the node's CPUs and memory nodes here, not on an async worker later.
        validate::Node::get();
        match crate::idmap::clean_leftovers(&this.settings.idmap_dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "released idmapped mounts of interrupted creates"),
            Err(e) => tracing::warn!(error = %e, "releasing idmapped staging mounts failed"),
        }
        this.update_gauge();
        Ok((this, report))
    }

    /// Releases what a create interrupted by a crash left without a record: the monitor and
    /// the runtime's container, the rootfs mount, the bundle, monitor and storage dirs.
    pub(super) fn clean_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.settings.bundles_dir) else {
            return;
        };
        for dirent in entries.flatten() {
            let id = dirent.file_name().to_string_lossy().into_owned();
            if id.len() != 64 || self.records.get(&id).is_some() {
                continue;
            }
            tracing::info!(container_id = %id, "cleaning up a container without a record");
            let monitor_dir = self.settings.monitors_dir.join(&id[..12]);
            if let Some(pid) = std::fs::read_to_string(monitor_dir.join("monitor.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                if cmdline_names(pid, &id) {
                    kill_pid(pid);
                }
            }
            for rt in self.runtimes.values() {
                let _ = rt.kill(&id, SIGKILL, true);
                let _ = rt.delete(&id);
            }
            let bundle = dirent.path();
            if let Err(e) = rootfs::unmount(&bundle.join("rootfs"))
                .and_then(|()| rootfs::unmount_children(&bundle.join("volumes")))
            {
                tracing::warn!(container_id = %id, error = %e, "unmount orphan rootfs or image volumes");
                continue;
            }
            // The bundle last: it is how an unfinished cleanup is found again.
            for dir in [&self.settings.storage_dir.join(&id), &monitor_dir, &bundle] {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(container_id = %id, error = %e, path = %dir.display(), "remove orphan dir");
                    }
                }
            }
        }
    }

    pub(super) fn runtime(&self, handler: &str) -> Result<&Arc<dyn OciRuntime>> {
        self.runtimes.get(handler).ok_or_else(|| {
            Error::FailedPrecondition(format!("runtime handler {handler:?} is not configured"))
        })
    }

    /// Resolves an id or a unique prefix.
    pub fn resolve(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.records.resolve(id, "container")
    }

    /// The record after learning about an exit, if any.
    pub async fn status(self: &Arc<Self>, id: &str) -> Result<Arc<ContainerRecord>> {
        let rec = self.resolve(id)?;
        if rec.state == ContainerState::Exited {
            return Ok(rec);
        }
        let this = self.clone();
        let id = rec.id.clone();
        crate::telemetry::spawn_blocking(move || this.refresh_blocking(&id))
            .await
            .map_err(join_err)?
    }

    pub async fn list(self: &Arc<Self>, filter: &Filter) -> Result<Vec<Arc<ContainerRecord>>> {
        let candidates: Vec<Arc<ContainerRecord>> = if filter.id.is_empty() {
            self.records.list().into_iter().map(|(_, r)| r).collect()
        } else {
            self.resolve(&filter.id)
                .map(|r| vec![r])
                .unwrap_or_default()
        };
        // Learn about exits first (cheap: one stat per live container).
        let live: Vec<String> = candidates
            .iter()
            .filter(|r| r.state != ContainerState::Exited)
            .map(|r| r.id.clone())
            .collect();
        if !live.is_empty() {
            let this = self.clone();
            crate::telemetry::spawn_blocking(move || {
                for id in live {
                    let _ = this.refresh_blocking(&id);
                }
            })
            .await
            .map_err(join_err)?;
        }
        let mut out: Vec<Arc<ContainerRecord>> = candidates
            .iter()
            .filter_map(|r| self.records.get(&r.id))
            .filter(|r| filter.pod_id.is_empty() || r.pod_id.starts_with(&filter.pod_id))
            .filter(|r| filter.state.is_none_or(|s| s == r.state))
            .filter(|r| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
            })
            .collect();
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }

    /// Whether `handler` supports recursive read-only mounts (reported in `Status`).
    pub fn handler_supports_rro(&self, handler: &str) -> bool {
        self.runtimes.get(handler).is_some_and(|r| r.supports_rro())
    }

    /// Ids of the containers of a pod.
    pub fn in_pod(&self, pod_id: &str) -> Vec<String> {
        self.records
            .list()
            .into_iter()
            .filter(|(_, r)| r.pod_id == pod_id)
            .map(|(id, _)| id)
            .collect()
    }

    /// The records of a pod's containers, oldest first, as they are (no exit check).
    pub fn records_in_pod(&self, pod_id: &str) -> Vec<Arc<ContainerRecord>> {
        let mut out: Vec<_> = self
            .records
            .list()
            .into_iter()
            .filter(|(_, r)| r.pod_id == pod_id)
            .map(|(_, r)| r)
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// Whether any container uses the image `image_id`, as its image or an image volume (for
    /// RemoveImage).
    pub fn image_in_use(&self, image_id: &str) -> Option<String> {
        self.records
            .list()
            .into_iter()
            .find(|(_, r)| r.uses_image(image_id))
            .map(|(id, _)| id)
    }

    /// Publishes a lifecycle event of `rec` with its pod as it is now.
    pub(super) fn publish(&self, rec: &ContainerRecord, kind: EventKind) {
        self.events
            .publish(&rec.id, kind, self.sandboxes.get(&rec.pod_id));
    }

    pub(super) fn update_gauge(&self) {
        let mut counts = [0i64; 3];
        for (_, r) in self.records.list() {
            counts[r.state as usize] += 1;
        }
        for (state, n) in [
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Exited,
        ]
        .iter()
        .zip(counts)
        {
            self.metrics
                .containers
                .with_label_values(&[state.name()])
                .set(n);
        }
    }
}

/// The CRI config a record was created from.
pub fn config_of(rec: &ContainerRecord) -> cri::ContainerConfig {
    rec.config.clone()
}

/// The resources a record currently has.
pub fn resources_of(rec: &ContainerRecord) -> cri::LinuxContainerResources {
    rec.resources.clone()
}

/// The Localhost seccomp profile's contents, when the container asks for one (None if the file
/// cannot be read: the generator then refuses with NotFound naming it).
fn localhost_seccomp(config: &cri::ContainerConfig) -> Option<String> {
    spec::localhost_profile_path(config).and_then(|p| std::fs::read_to_string(p).ok())
}

const SIGKILL: i32 = 9;

/// Whether the container's monitor still runs: the recorded pid is alive *and* its command line
/// names this container (after a reboot or a long downtime the pid may be anybody's).
fn monitor_alive(rec: &ContainerRecord) -> bool {
    process_alive(rec.monitor_pid) && cmdline_names(rec.monitor_pid, &rec.id)
}

/// Whether `/proc/<pid>/cmdline` contains `id`.
fn cmdline_names(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(id.len()).any(|w| w == id.as_bytes()))
        .unwrap_or(false)
}

fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z ") && !s.contains(") X "),
        Err(_) => false,
    }
}

/// A pidfd registered with the reactor (readable once the process exits).
#[allow(unsafe_code)]
fn pollable(
    pidfd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and refers to the
    // same pidfd until the AsyncFd is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

fn kill_pid(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container record as version 1 wrote it: config and resources as base64 protobuf.
    fn v1_record(config_pb: &str, resources_pb: &str) -> ContainerRecord {
        let json = serde_json::json!({
            "id": "c1", "pod_id": "p1", "name": "app", "attempt": 0, "image": "busybox",
            "image_id": "sha256:1", "image_ref": "sha256:1", "state": "Running",
            "created_at": 1, "started_at": 2, "finished_at": 0, "exit_code": 0, "reason": "",
            "message": "", "pid": 10, "monitor_pid": 9, "runtime_handler": "runc",
            "bundle": "/b", "monitor_dir": "/m", "storage": "/s", "log_path": "/l",
            "labels": {}, "annotations": {}, "user": {"uid": 0, "gid": 0, "supplemental_groups": []},
            "stop_signal": 15, "tty": false, "config_pb": config_pb, "resources_pb": resources_pb
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn version_1_records_are_upgraded_to_typed_config_and_corrupt_ones_are_reported() {
        use base64::Engine as _;
        use prost::Message as _;
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let config = cri::ContainerConfig {
            args: vec!["sleep".into(), "1".into()],
            stdin_once: true,
            ..Default::default()
        };
        let resources = cri::LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        };
        let old = v1_record(
            &b64(config.encode_to_vec()),
            &b64(resources.encode_to_vec()),
        );
        assert_eq!(old.config, cri::ContainerConfig::default());
        let new = upgrade_record(&old).unwrap().unwrap();
        assert_eq!(new.config, config);
        assert_eq!(new.resources, resources);
        assert!(new.config_pb.is_empty() && new.resources_pb.is_empty());
        // Written back, the legacy fields are gone and the typed ones are JSON.
        let text = serde_json::to_value(&new).unwrap();
        assert!(text.get("config_pb").is_none());
        assert_eq!(text["config"]["stdin_once"], true);
        assert!(upgrade_record(&new).is_none());
        // Corrupt: an error naming the field, not an empty config.
        let err = upgrade_record(&v1_record("!!not base64", ""))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("config"), "{err}");
    }

    #[test]
    fn a_live_pid_is_our_monitor_only_if_its_command_line_names_the_container() {
        let me = std::process::id();
        assert!(process_alive(me));
        let argv0 = std::env::args().next().unwrap_or_default();
        assert!(cmdline_names(me, &argv0));
        // After a reboot the recorded pid may be anybody's: not ours unless it names the id.
        assert!(!cmdline_names(me, &"ab".repeat(32)));
        assert!(!cmdline_names(u32::MAX, &argv0));
    }
}
