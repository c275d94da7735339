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

pub mod exec;
pub mod host;
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

use base64::Engine as _;
use k8s_cri::v1 as cri;
use prost::Message as _;

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
}

fn b64(bytes: Vec<u8>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64<M: prost::Message + Default>(s: &str) -> M {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|b| M::decode(b.as_slice()).ok())
        .unwrap_or_default()
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
        });
        for (id, rec) in this.records.list() {
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
    fn clean_orphans(&self) {
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
            for dir in [&bundle, &monitor_dir, &self.settings.storage_dir.join(&id)] {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(container_id = %id, error = %e, path = %dir.display(), "remove orphan dir");
                    }
                }
            }
        }
    }

    fn runtime(&self, handler: &str) -> Result<&Arc<dyn OciRuntime>> {
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
        tokio::task::spawn_blocking(move || this.refresh_blocking(&id))
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
            tokio::task::spawn_blocking(move || {
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

    /// Learns about an exit from the monitor's exit record; without one, from the node: a
    /// monitor that is gone while the container's init runs on leaves the container Running
    /// (marked `monitor_lost`); once neither runs, the container is Exited.
    fn refresh_blocking(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.refresh_with(id, None)
    }

    /// [`Containers::refresh_blocking`]; `killed_with` is the signal StopContainer sent to a
    /// container without a monitor (its exit code is then 128 + signal).
    fn refresh_with(&self, id: &str, killed_with: Option<i32>) -> Result<Arc<ContainerRecord>> {
        let Some(rec) = self.records.get(id) else {
            return Err(Error::NotFound(format!("container {id:?} not found")));
        };
        if rec.state == ContainerState::Exited {
            return Ok(rec);
        }
        let killed_with = killed_with.or_else(|| lock(&self.signalled).get(id).copied());
        let (exit, lost) = match monitor::read_exit(&rec.monitor_dir) {
            Some(exit) => (exit, false),
            None => {
                if monitor_alive(&rec) {
                    return Ok(rec);
                }
                // A monitor that just exited may still be renaming its exit record into place.
                std::thread::sleep(Duration::from_millis(20));
                if monitor::read_exit(&rec.monitor_dir).is_some() {
                    return self.refresh_with(id, killed_with);
                }
                if self.init_alive(&rec) {
                    return self.mark_monitor_lost(&rec);
                }
                let exit = crius_proto::monitor::ExitRecord {
                    exit_code: killed_with.map_or(255, |s| 128 + s),
                    finished_at_ns: now_ns(),
                    ..Default::default()
                };
                (exit, true)
            }
        };
        let monitor_was_lost = rec.monitor_lost;
        let modified = self.records.modify(
            id,
            |cur| {
                if cur.state == ContainerState::Exited {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.state = cur.state.transition(ContainerState::Exited, id)?;
                next.exit_code = exit.exit_code;
                next.finished_at = exit.finished_at_ns;
                next.reason = if exit.oom_killed {
                    "OOMKilled".into()
                } else if exit.exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
                if lost {
                    next.message = if monitor_was_lost {
                        match killed_with {
                            Some(s) => format!(
                                "the container's monitor was gone; it was stopped with signal {s}"
                            ),
                            None => "the container's monitor was gone; its exit status is unknown"
                                .into(),
                        }
                    } else {
                        "the container's monitor is gone and left no exit record".into()
                    };
                }
                Ok::<_, Error>(Some(next))
            },
            |stored| self.publish(stored, EventKind::Stopped),
        )?;
        let stored = match modified {
            Modified::Changed(stored) => stored,
            Modified::Unchanged(cur) => return Ok(cur),
            Modified::Missing => {
                return Err(Error::NotFound(format!("container {id:?} not found")))
            }
        };
        lock(&self.signalled).remove(id);
        if exit.oom_killed {
            self.metrics.containers_oom_total.inc();
        }
        tracing::info!(container_id = %id, exit_code = stored.exit_code, reason = %stored.reason, "container exited");
        self.update_gauge();
        Ok(stored)
    }

    /// Whether the container's init still runs, by the runtime's account (the node's truth:
    /// the recorded pid alone may have been reused).
    fn init_alive(&self, rec: &ContainerRecord) -> bool {
        if !process_alive(rec.pid) {
            return false;
        }
        let Ok(runtime) = self.runtime(&rec.runtime_handler) else {
            return false;
        };
        match runtime.state(&rec.id) {
            Ok(Some(st)) => st.is_alive() && st.pid == rec.pid,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(container_id = %rec.id, error = %e, "runtime state unknown; trusting the live pid");
                true
            }
        }
    }

    /// Records that the container runs on without its monitor (once, with a warning).
    fn mark_monitor_lost(&self, rec: &ContainerRecord) -> Result<Arc<ContainerRecord>> {
        let modified = self.records.modify(
            &rec.id,
            |cur| {
                if cur.monitor_lost || cur.state == ContainerState::Exited {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.monitor_lost = true;
                next.message = "the container's monitor exited; the container runs on without log capture or attach".into();
                Ok::<_, Error>(Some(next))
            },
            |_| {},
        )?;
        match modified {
            Modified::Changed(stored) => {
                tracing::warn!(container_id = %rec.id, pid = rec.pid, monitor_pid = rec.monitor_pid,
                    "the container's monitor is gone but the container runs on: reported running; its output is no longer logged and its exit status will be unknown");
                Ok(stored)
            }
            Modified::Unchanged(cur) => Ok(cur),
            Modified::Missing => Err(Error::NotFound(format!("container {:?} not found", rec.id))),
        }
    }

    /// At restore: a record that is behind the runtime (the daemon died between the runtime's
    /// start and the record write) is brought up to what the runtime says.
    fn reconcile_blocking(&self, id: &str) {
        let Some(rec) = self.records.get(id) else {
            return;
        };
        if rec.state != ContainerState::Created {
            return;
        }
        let Ok(runtime) = self.runtime(&rec.runtime_handler) else {
            return;
        };
        match runtime.state(id) {
            Ok(Some(st)) if st.status == "running" || st.status == "paused" => {
                tracing::warn!(container_id = %id, "record says created but the runtime says running (interrupted StartContainer): reconciled to running");
                if let Err(e) = self.mark_started(id) {
                    tracing::error!(container_id = %id, error = %e, "reconciling a started container failed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "runtime state unknown at restore")
            }
        }
    }

    /// Publishes a lifecycle event of `rec` with its pod as it is now.
    fn publish(&self, rec: &ContainerRecord, kind: EventKind) {
        self.events
            .publish(&rec.id, kind, self.sandboxes.get(&rec.pod_id));
    }

    /// Learns about the container's exit as soon as its monitor exits (the monitor writes the
    /// exit record, then exits): a pidfd of the monitor, awaited on the reactor. A container
    /// whose monitor is gone is watched through its init's pidfd instead. Without a runtime or
    /// pidfds, exits are still learned on the next status/list/stop.
    fn watch_exit(self: &Arc<Self>, rec: &ContainerRecord) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (watched, owned) = if monitor_alive(rec) {
            (rec.monitor_pid, true)
        } else if rec.monitor_lost && process_alive(rec.pid) {
            (rec.pid, true)
        } else {
            (rec.monitor_pid, false)
        };
        let Some(pid) = rustix::process::Pid::from_raw(watched as i32) else {
            return;
        };
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(container_id = %rec.id, error = %e, "no pidfd to watch the container");
                if owned {
                    return;
                }
                // Already gone: learn about it now.
                let this = self.clone();
                let id = rec.id.clone();
                runtime.spawn_blocking(move || this.refresh_blocking(&id));
                return;
            }
        };
        let this = self.clone();
        let id = rec.id.clone();
        runtime.spawn(async move {
            // A pid reused by another process before pidfd_open: do not wait on it.
            if owned {
                match pollable(pidfd) {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                    }
                    Err(e) => {
                        tracing::debug!(container_id = %id, error = %e, "pidfd not pollable");
                        return;
                    }
                }
            }
            let worker = this.clone();
            let refreshed = tokio::task::spawn_blocking(move || worker.refresh_blocking(&id)).await;
            match refreshed {
                // The monitor died, the container lives on: watch the container itself.
                Ok(Ok(rec))
                    if rec.state != ContainerState::Exited
                        && rec.monitor_lost
                        && watched != rec.pid =>
                {
                    this.watch_exit(&rec);
                }
                Ok(Err(e)) if !matches!(e, Error::NotFound(_)) => {
                    tracing::warn!(error = %e, "learning about a container exit failed");
                }
                _ => {}
            }
        });
    }

    /// CreateContainer.
    pub async fn create(self: &Arc<Self>, req: cri::CreateContainerRequest) -> Result<String> {
        let config = req
            .config
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container config is required".into()))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container metadata is required".into()))?;
        if meta.name.is_empty() || meta.name.contains(['/', '\0']) {
            return Err(Error::InvalidArgument(format!(
                "container name {} is not valid",
                crate::util::quote(&meta.name)
            )));
        }
        validate::container_config(&config, validate::Node::get())?;
        let pod = match self.sandboxes.resolve(&req.pod_sandbox_id) {
            Ok(pod) => pod,
            Err(Error::NotFound(m)) => return Err(Error::NotFound(m)),
            Err(e) => return Err(e),
        };
        if pod.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument("container image is required".into()));
        }
        let image = self.images.lookup(&image_name).ok_or_else(|| {
            Error::NotFound(format!(
                "image {} not found",
                crate::util::quote(&image_name)
            ))
        })?;
        let key = record::name_key(&pod.id, &meta.name, meta.attempt);
        let this = self.clone();
        tokio::spawn(async move {
            let _held = this.creating.lock(&key).await;
            if let Some(existing) = lock(&this.names).get(&key).cloned() {
                return Err(Error::AlreadyExists(format!(
                    "container {:?} (attempt {}) already exists in pod sandbox {} as {existing}",
                    meta.name, meta.attempt, pod.id
                )));
            }
            let started = Instant::now();
            let worker = this.clone();
            let rec =
                tokio::task::spawn_blocking(move || worker.create_blocking(&pod, config, &image))
                    .await
                    .map_err(join_err)??;
            this.metrics
                .container_create_seconds
                .observe(started.elapsed().as_secs_f64());
            lock(&this.names).insert(key, rec.id.clone());
            this.update_gauge();
            this.publish(&rec, EventKind::Created);
            this.watch_exit(&rec);
            Ok(rec.id.clone())
        })
        .await
        .map_err(join_err)?
    }

    fn create_blocking(
        &self,
        pod: &SandboxRecord,
        config: cri::ContainerConfig,
        image: &crate::image::store::ImageRecord,
    ) -> Result<Arc<ContainerRecord>> {
        let mut undo = Rollback::new();
        let result = self.create_steps(pod, config, image, &mut undo);
        if result.is_ok() {
            undo.disarm();
        }
        result
    }

    fn create_steps(
        &self,
        pod: &SandboxRecord,
        config: cri::ContainerConfig,
        image: &crate::image::store::ImageRecord,
        undo: &mut Rollback,
    ) -> Result<Arc<ContainerRecord>> {
        let runtime = self.runtime(&pod.spec.runtime_handler)?.clone();
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
            if !runtime.supports_rro() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: recursive read-only mounts are not supported by runtime handler {:?}",
                    m.container_path,
                    runtime.name()
                )));
            }
        }
        if let Some(m) = config
            .mounts
            .iter()
            .find(|m| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty())
        {
            if !runtime.supports_idmap() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: idmapped mounts with their own mappings are not supported by runtime handler {:?}",
                    m.container_path,
                    runtime.name()
                )));
            }
        }
        let id = new_id()?;
        let meta = config.metadata.clone().unwrap_or_default();

        // Directories: bundle, monitor dir (short), storage.
        let bundle = self.settings.bundles_dir.join(&id);
        let monitor_dir = self.settings.monitors_dir.join(&id[..12]);
        let storage = self.settings.storage_dir.join(&id);
        for dir in [&bundle, &monitor_dir, &storage] {
            std::fs::create_dir(dir).map_err(io_err("create", dir))?;
            let d = dir.clone();
            undo.push("remove container dir", move || {
                std::fs::remove_dir_all(&d).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(format!("{}: {e}", d.display()))
                    }
                })
            });
        }

        // Rootfs. In a pod user namespace the layers (and the volumes, below) are idmapped
        // clones, staged until the runtime has made its own mounts of them.
        let lowers = self.images.store.lower_dirs(image);
        let target = bundle.join("rootfs");
        let (upper, work) = (storage.join("upper"), storage.join("work"));
        let userns = match (&pod.spec.user_namespace, pod.ns_path("user")) {
            (None, _) => None,
            (Some(map), Some(path)) => {
                let file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
                Some((map.host_root(), file))
            }
            (Some(_), None) => {
                return Err(Error::FailedPrecondition(format!(
                    "pod sandbox {} has lost its user namespace",
                    pod.id
                )))
            }
        };
        let mut staging = None;
        match &userns {
            None => rootfs::mount(&lowers, &self.settings.links_dir, &upper, &work, &target)
                .map_err(io_err("mount rootfs at", &target))?,
            Some(((uid, gid), ns)) => {
                let dir = self.settings.idmap_dir.join(&id[..12]);
                let mut st = crate::idmap::Staging::new(&dir).map_err(io_err("create", &dir))?;
                let mut staged = Vec::with_capacity(lowers.len());
                for lower in &lowers {
                    staged.push(
                        st.add(lower, ns.as_fd(), false)
                            .map_err(io_err("idmapped mount of layer", lower))?,
                    );
                }
                // The merged root takes the upper dir's owner: the container's root.
                std::fs::create_dir_all(&upper).map_err(io_err("create", &upper))?;
                std::os::unix::fs::chown(&upper, Some(*uid), Some(*gid))
                    .map_err(io_err("chown", &upper))?;
                rootfs::mount_overlay(&staged, &upper, &work, &target)
                    .map_err(io_err("mount rootfs at", &target))?;
                staging = Some(st);
            }
        }
        {
            let t = target.clone();
            undo.push("unmount rootfs", move || {
                rootfs::unmount(&t).map_err(|e| e.to_string())
            });
        }

        // Image volumes: each image's layers as a read-only overlay at <bundle>/volumes/<n>
        // (idmapped layers in a pod user namespace, like the rootfs), bind-mounted by the
        // runtime as the mount's host path.
        let mut spec_config = config.clone();
        let mut image_volumes = Vec::new();
        let volumes_dir = bundle.join("volumes");
        for m in spec_config
            .mounts
            .iter_mut()
            .filter(|m| spec::is_image_volume(m))
        {
            let name = m.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
            let volume_image = self.images.lookup(name).ok_or_else(|| {
                Error::NotFound(format!(
                    "mount {}: image {name:?} not found",
                    m.container_path
                ))
            })?;
            let mut lowers = self.images.store.lower_dirs(&volume_image);
            let n = image_volumes.len().to_string();
            let vstorage = storage.join("volumes").join(&n);
            let (vupper, vwork) = (vstorage.join("upper"), vstorage.join("work"));
            if let (Some(((uid, gid), ns)), Some(st)) = (&userns, staging.as_mut()) {
                for lower in lowers.iter_mut() {
                    *lower = st
                        .add(lower, ns.as_fd(), false)
                        .map_err(io_err("idmapped mount of layer", lower))?;
                }
                // The volume's root takes the upper dir's owner: the container's root.
                std::fs::create_dir_all(&vupper).map_err(io_err("create", &vupper))?;
                std::os::unix::fs::chown(&vupper, Some(*uid), Some(*gid))
                    .map_err(io_err("chown", &vupper))?;
            }
            let vtarget = volumes_dir.join(&n);
            rootfs::mount_overlay_readonly(&lowers, &vupper, &vwork, &vtarget)
                .map_err(io_err("mount image volume at", &vtarget))?;
            {
                let t = vtarget.clone();
                undo.push("unmount image volume", move || {
                    rootfs::unmount(&t).map_err(|e| e.to_string())
                });
            }
            m.host_path = vtarget.to_string_lossy().into_owned();
            image_volumes.push(record::ImageVolume {
                container_path: m.container_path.clone(),
                image_id: volume_image.id.clone(),
                image_ref: volume_image
                    .repo_digests
                    .first()
                    .cloned()
                    .unwrap_or_else(|| volume_image.id.clone()),
            });
        }

        // The OCI spec.
        for m in &spec_config.mounts {
            if !Path::new(&m.host_path).exists() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: host path {:?} does not exist",
                    m.container_path, m.host_path
                )));
            }
        }
        if let (Some((_, ns)), Some(st)) = (&userns, staging.as_mut()) {
            // A mount with its own mappings is the runtime's to idmap; an image volume is made
            // of idmapped layers already.
            for m in spec_config
                .mounts
                .iter_mut()
                .filter(|m| m.uid_mappings.is_empty() && !spec::is_image_volume(m))
            {
                match st.add(Path::new(&m.host_path), ns.as_fd(), true) {
                    Ok(p) => m.host_path = p.to_string_lossy().into_owned(),
                    // E.g. a filesystem without idmap support: the volume still works, its
                    // files show the overflow id inside.
                    Err(e) => tracing::warn!(
                        container_id = %id, host_path = %m.host_path, error = %e,
                        "volume is not idmapped"
                    ),
                }
            }
        }
        let spec_config = &spec_config;
        let pod_config: cri::PodSandboxConfig = unb64(&pod.config_pb);
        let view = image_view(&image.config);
        let seccomp_localhost = localhost_seccomp(&config);
        let target_pidns = self.target_pidns(&config)?;
        let mut host = self.settings.host.clone();
        let privileged = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if privileged || !config.devices.is_empty() {
            host.devices = host::host_devices();
        }
        let input = spec::SpecInput {
            container_id: &id,
            config: spec_config,
            pod: spec::PodView {
                sandbox_id: &pod.id,
                config: &pod_config,
                netns: pod.ns_path("net"),
                ipcns: pod.ns_path("ipc"),
                utsns: pod.ns_path("uts"),
                pidns: pod
                    .infra
                    .as_ref()
                    .map(|i| PathBuf::from(format!("/proc/{}/ns/pid", i.pid))),
                userns: pod.ns_path("user"),
                hostname: pod.spec.hostname.clone(),
                resolv_conf: Some(pod.run_dir.join("resolv.conf")),
                hosts: Some(pod.run_dir.join("hosts")),
                hostname_file: Some(pod.run_dir.join("hostname")),
                shm: pod
                    .spec
                    .namespaces
                    .ipc
                    .ne(&crate::sandbox::record::NsMode::Node)
                    .then(|| pod.shm_path()),
                cgroup_parent: pod.spec.cgroup_parent.clone(),
            },
            image: &view,
            rootfs: target.clone(),
            etc_passwd: rootfs::read_small(&target, "etc/passwd"),
            etc_group: rootfs::read_small(&target, "etc/group"),
            seccomp_localhost,
            target_pidns,
            host: &host,
        };
        let generated = spec::generate(&input).map_err(Error::from)?;
        let spec_json = spec::config_json(&generated.spec).map_err(Error::from)?;
        let config_path = bundle.join("config.json");
        std::fs::write(&config_path, spec_json).map_err(io_err("write", &config_path))?;

        // The CRI log file: inside the pod's log directory (both checked: an absolute
        // directory, a relative path without `..`; pods restored from before the check too).
        let log_path = if pod.spec.log_directory.is_empty() || config.log_path.is_empty() {
            monitor_dir.join("container.log")
        } else {
            validate::log_directory(&pod.spec.log_directory)?;
            validate::log_path(&config.log_path)?;
            Path::new(&pod.spec.log_directory).join(&config.log_path)
        };
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create log dir", parent))?;
        }
        // A symlink, fifo or directory there is refused here with a clear error; the monitor
        // opens with O_NOFOLLOW as well, so a link planted after this check fails the create.
        if let Ok(meta) = std::fs::symlink_metadata(&log_path) {
            if !meta.file_type().is_file() {
                return Err(Error::InvalidArgument(format!(
                    "log path {} exists and is not a regular file",
                    log_path.display()
                )));
            }
        }

        // Create through the monitor.
        let created = runtime
            .create(&CreateRequest {
                id: &id,
                bundle: &bundle,
                monitor_dir: &monitor_dir,
                log_path: &log_path,
                terminal: config.tty,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
        // The runtime has its own mounts of the staged ones now.
        drop(staging);
        {
            let (rt, cid) = (runtime.clone(), id.clone());
            undo.push("delete runtime container", move || {
                rt.delete(&cid).map_err(|e| e.to_string())
            });
        }

        let user = UserRecord {
            uid: i64::from(generated.user.uid),
            gid: i64::from(generated.user.gid),
            supplemental_groups: generated
                .user
                .additional_gids
                .iter()
                .map(|g| i64::from(*g))
                .collect(),
        };
        let resources = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            image: config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: created.pid,
            monitor_pid: created.monitor_pid,
            runtime_handler: pod.spec.runtime_handler.clone(),
            bundle,
            monitor_dir,
            storage,
            log_path,
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            user,
            stop_signal: generated.stop_signal,
            tty: config.tty,
            config_pb: b64(config.encode_to_vec()),
            resources_pb: b64(resources.encode_to_vec()),
            monitor_lost: false,
            image_volumes,
        };
        let stored = self.records.put(&id, rec)?;
        tracing::info!(container_id = %id, pod_id = %pod.id, pid = created.pid, "container created");
        Ok(stored)
    }

    fn target_pidns(&self, config: &cri::ContainerConfig) -> Result<Option<PathBuf>> {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let Some(ns) = ns else { return Ok(None) };
        if ns.pid != cri::NamespaceMode::Target as i32 {
            return Ok(None);
        }
        let target = self.resolve(&ns.target_id).map_err(|_| {
            Error::NotFound(format!(
                "target container {:?} of the pid namespace not found",
                ns.target_id
            ))
        })?;
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
    }

    /// StartContainer.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = self.resolve(id)?;
        let _held = self.locks.lock(&rec.id).await;
        let rec = self.resolve(&rec.id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not created",
                rec.id,
                rec.state.name()
            )));
        }
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let this = self.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = runtime.start(&rec.id) {
                // A start the runtime already did (the daemon died before recording it, and
                // restore could not tell): the node is the truth.
                match runtime.state(&rec.id) {
                    Ok(Some(st)) if st.status == "running" && st.pid == rec.pid => {
                        tracing::warn!(container_id = %rec.id, "the runtime had already started the container; recording it");
                    }
                    _ => return Err(e.into()),
                }
            }
            this.mark_started(&rec.id)?;
            Ok::<_, Error>(())
        })
        .await
        .map_err(join_err)??;
        self.metrics
            .container_start_seconds
            .observe(started.elapsed().as_secs_f64());
        self.update_gauge();
        Ok(())
    }

    /// Records a start (Created → Running; a container that already exited stays Exited) and
    /// publishes it, in record order.
    fn mark_started(&self, id: &str) -> Result<()> {
        let modified = self.records.modify(
            id,
            |cur| {
                let mut next = cur.clone();
                // The exit watcher may have seen a short-lived process exit already: it
                // stays Exited, and it started no later than it finished.
                next.started_at = now_ns();
                if cur.state == ContainerState::Created {
                    next.state = ContainerState::Running;
                } else if cur.state == ContainerState::Exited && cur.finished_at > 0 {
                    next.started_at = next.started_at.min(cur.finished_at);
                }
                Ok::<_, Error>(Some(next))
            },
            |stored| self.publish(stored, EventKind::Started),
        )?;
        if let Modified::Changed(stored) = modified {
            tracing::info!(container_id = %stored.id, "container started");
        }
        Ok(())
    }

    /// StopContainer: the stop signal, `timeout` to exit, then SIGKILL. Missing or stopped
    /// containers succeed.
    pub async fn stop(self: &Arc<Self>, id: &str, timeout: Duration) -> Result<()> {
        let rec = match self.resolve(id) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _held = self.locks.lock(&rec.id).await;
        let this = self.clone();
        let id = rec.id.clone();
        tokio::task::spawn_blocking(move || this.stop_blocking(&id, timeout))
            .await
            .map_err(join_err)??;
        self.update_gauge();
        Ok(())
    }

    fn stop_blocking(&self, id: &str, timeout: Duration) -> Result<()> {
        let rec = self.refresh_blocking(id)?;
        if rec.state == ContainerState::Exited {
            return Ok(());
        }
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        if rec.state == ContainerState::Created {
            // Never started: nothing runs but the init waiting for start; kill it.
            let _ = runtime.kill(id, SIGKILL, true);
            self.wait_exit(&rec, Duration::from_secs(10));
            self.refresh_with(id, Some(SIGKILL))?;
            return Ok(());
        }
        let note_signal = |signal: i32| {
            if rec.monitor_lost {
                lock(&self.signalled).insert(id.to_string(), signal);
            }
        };
        if !timeout.is_zero() {
            note_signal(rec.stop_signal);
            if let Err(e) = runtime.kill(id, rec.stop_signal, false) {
                tracing::debug!(container_id = %id, error = %e, "stop signal not delivered");
            }
            if self.wait_exit(&rec, timeout) {
                self.refresh_with(id, Some(rec.stop_signal))?;
                return Ok(());
            }
        }
        note_signal(SIGKILL);
        if let Err(e) = runtime.kill(id, SIGKILL, true) {
            tracing::debug!(container_id = %id, error = %e, "SIGKILL not delivered");
        }
        if !self.wait_exit(&rec, Duration::from_secs(10)) {
            return Err(Error::DeadlineExceeded(format!(
                "container {id} did not exit after SIGKILL"
            )));
        }
        self.refresh_with(id, Some(SIGKILL))?;
        tracing::info!(container_id = %id, "container stopped");
        Ok(())
    }

    /// Waits for the monitor's exit record, or — the monitor being gone — for the container's
    /// init to be gone.
    fn wait_exit(&self, rec: &ContainerRecord, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if monitor::read_exit(&rec.monitor_dir).is_some()
                || (!monitor_alive(rec) && !process_alive(rec.pid))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// RemoveContainer: kills a running container first; missing containers succeed.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = match self.resolve(id) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _held = self.locks.lock(&rec.id).await;
        let this = self.clone();
        let id = rec.id.clone();
        tokio::task::spawn_blocking(move || {
            this.stop_blocking(&id, Duration::ZERO)?;
            this.remove_blocking(&id)
        })
        .await
        .map_err(join_err)??;
        self.update_gauge();
        Ok(())
    }

    fn remove_blocking(&self, id: &str) -> Result<()> {
        let Some(rec) = self.records.get(id) else {
            return Ok(());
        };
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        runtime.delete(id).map_err(Error::from)?;
        if monitor_alive(&rec) {
            kill_pid(rec.monitor_pid);
        }
        rootfs::unmount(&rec.rootfs()).map_err(io_err("unmount", &rec.rootfs()))?;
        rootfs::unmount_children(&rec.volumes_dir())
            .map_err(io_err("unmount image volumes under", &rec.volumes_dir()))?;
        for dir in [&rec.bundle, &rec.monitor_dir, &rec.storage] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", dir)(e)),
            }
        }
        self.records.remove(id)?;
        lock(&self.names).remove(&rec.name_key());
        lock(&self.signalled).remove(id);
        self.forget_samples(id);
        tracing::info!(container_id = %id, "container removed");
        self.publish(&rec, EventKind::Deleted);
        Ok(())
    }

    /// Stops every container of a pod (StopPodSandbox).
    pub async fn stop_pod(self: &Arc<Self>, pod_id: &str) -> Result<()> {
        for id in self.in_pod(pod_id) {
            self.stop(&id, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Removes every container of a pod (RemovePodSandbox).
    pub async fn remove_pod(self: &Arc<Self>, pod_id: &str) -> Result<()> {
        for id in self.in_pod(pod_id) {
            self.remove(&id).await?;
        }
        Ok(())
    }

    /// ExecSync: the command runs as the container's own process would (see [`exec`]), without
    /// stdin; a timeout, or the caller going away, kills it with everything it started.
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        exec::validate_cmd(cmd)?;
        let rec = self.running(id).await?;
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let files = Self::prepare_exec(&rec, cmd, false).await?;
        let command = runtime.exec_command(&rec.id, &files);
        Ok(crate::runtime::oci::exec_sync(&rec.id, command, files, timeout).await?)
    }

    /// The process file of one exec of `cmd` in `rec` (off the async workers).
    async fn prepare_exec(
        rec: &ContainerRecord,
        cmd: &[String],
        tty: bool,
    ) -> Result<exec::ExecFiles> {
        let token = new_id()?;
        let bundle = rec.bundle.clone();
        let monitor_dir = rec.monitor_dir.clone();
        let cmd = cmd.to_vec();
        tokio::task::spawn_blocking(move || {
            exec::prepare(&bundle, &monitor_dir, &token[..12], &cmd, tty)
        })
        .await
        .map_err(join_err)?
    }

    /// A running container, or `FailedPrecondition` naming its state.
    pub async fn running(self: &Arc<Self>, id: &str) -> Result<Arc<ContainerRecord>> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not running",
                rec.id,
                rec.state.name()
            )));
        }
        Ok(rec)
    }

    /// Starts a streaming exec (the `Exec` session) in a running container.
    pub async fn spawn_exec(
        self: &Arc<Self>,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<crate::runtime::oci::ExecProcess> {
        exec::validate_cmd(cmd)?;
        let rec = self.running(id).await?;
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let files = Self::prepare_exec(&rec, cmd, tty).await?;
        let command = runtime.exec_command(&rec.id, &files);
        Ok(crate::runtime::oci::spawn_exec(
            &rec.id, command, files, tty, stdin, stdout, stderr,
        )?)
    }

    /// Where an `Attach` session joins a container: its monitor's attach socket.
    pub fn attach_target(&self, id: &str) -> Result<AttachTarget> {
        let rec = self.resolve(id)?;
        Ok(AttachTarget {
            socket: monitor::attach_socket(&rec.monitor_dir),
            monitor_dir: rec.monitor_dir.clone(),
            tty: rec.tty,
            stdin_once: unb64::<cri::ContainerConfig>(&rec.config_pb).stdin_once,
        })
    }

    /// UpdateContainerResources.
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<()> {
        let rec = self.resolve(id)?;
        let _held = self.locks.lock(&rec.id).await;
        // Read under the lock: a stop that held it may have just ended the container.
        let rec = self.status(&rec.id).await?;
        if rec.state == ContainerState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited",
                rec.id
            )));
        }
        validate::resources("linux", &resources, validate::Node::get())?;
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let json = resources::resources_json(&resources, self.settings.host.cgroup_v2);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = runtime.update(&rec.id, &json) {
                // The container exited on its own meanwhile: say so, not "internal".
                if this.refresh_blocking(&rec.id)?.state == ContainerState::Exited {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} has exited",
                        rec.id
                    )));
                }
                return Err(e.into());
            }
            let resources_pb = b64(resources.encode_to_vec());
            this.records.modify(
                &rec.id,
                |cur| {
                    let mut next = cur.clone();
                    next.resources_pb = resources_pb;
                    Ok::<_, Error>(Some(next))
                },
                |_| {},
            )?;
            Ok::<_, Error>(())
        })
        .await
        .map_err(join_err)?
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let dir = rec.monitor_dir.clone();
        tokio::task::spawn_blocking(move || monitor::reopen_log(&dir))
            .await
            .map_err(join_err)?
            .map_err(|e| Error::Internal(format!("reopen log of container {}: {e}", rec.id)))
    }

    fn update_gauge(&self) {
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
    unb64(&rec.config_pb)
}

/// The resources a record currently has.
pub fn resources_of(rec: &ContainerRecord) -> cri::LinuxContainerResources {
    unb64(&rec.resources_pb)
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
