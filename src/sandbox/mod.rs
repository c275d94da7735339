//! Pod sandboxes: pinned namespaces, the pod network, pod files, cgroup parent, sysctls and the
//! optional infra process, with their records.
//!
//! Owns `<runroot>/pods/<id>` (namespace pins under `ns/`, `resolv.conf`, `hostname`, `hosts`,
//! the `shm` tmpfs, `infra.pid`) and the `sandbox` records. [`Sandboxes`] is the domain API the
//! handlers call. Must not build CRI responses (handlers do) or run containers.
//!
//! Create runs as one blocking task with a [`Rollback`] stack: every step pushes its undo, and a
//! failure unwinds them in reverse, so nothing of a failed attempt survives. The record is
//! written last; a crash before that leaves only the run directory (and a CNI cache entry),
//! which [`Sandboxes::open`] cleans at the next start. Retries of the same pod (name, namespace,
//! uid, attempt) serialize on a per-name lock and return the first pod's id.

pub mod files;
pub mod infra;
pub mod network;
pub mod port_forward;
pub mod record;
pub mod rollback;
pub mod spec;
pub mod sysctl;
pub mod userns;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crius_cni::NsKind;

use crate::cgroups::Cgroups;
use crate::error::{Error, Result};
use crate::events::{EventKind, Events};
use crate::keyed::KeyedLocks;
use crate::metrics::Metrics;
use crate::store::{Collection, LoadReport};
use crate::util::{io_err, join_err, lock, new_id, now_ns};
use network::{NetworkManager, PodNetwork};
use record::NsMode;
pub use record::{PodSpec, SandboxRecord, SandboxState};
use rollback::Rollback;

/// Settings the sandbox domain needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<runroot>/pods`.
    pub pods_dir: PathBuf,
    pub shm_size: u64,
    /// The `crius-conmon` binary (pod infra process).
    pub monitor: PathBuf,
    /// Host `resolv.conf`, used when a pod has no DNS config.
    pub host_resolv_conf: PathBuf,
    /// Whether pods may have a user namespace (the startup probe's verdict, see `userns::probe`).
    pub user_namespaces: std::result::Result<(), String>,
}

/// A `ListPodSandbox` filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: String,
    pub state: Option<SandboxState>,
    pub labels: HashMap<String, String>,
}

/// The pod sandbox domain.
pub struct Sandboxes {
    records: Arc<Collection<SandboxRecord>>,
    network: Arc<dyn NetworkManager>,
    cgroups: Option<Cgroups>,
    settings: Settings,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
    /// Name key → id of every pod with a record.
    names: Mutex<HashMap<String, String>>,
    /// Serializes creates of one name key.
    creating: KeyedLocks,
    /// Serializes stop/remove of one id.
    locks: KeyedLocks,
}

impl Sandboxes {
    /// Loads the records and cleans what crashed or rebooted away. Blocking.
    pub fn open(
        state_root: &Path,
        settings: Settings,
        network: Arc<dyn NetworkManager>,
        cgroups: Option<Cgroups>,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Result<(Arc<Self>, LoadReport)> {
        let (records, report) = Collection::<SandboxRecord>::open(state_root)?;
        std::fs::create_dir_all(&settings.pods_dir)
            .map_err(io_err("create", &settings.pods_dir))?;
        let this = Arc::new(Sandboxes {
            records,
            network,
            cgroups,
            settings,
            metrics,
            events,
            names: Mutex::new(HashMap::new()),
            creating: KeyedLocks::default(),
            locks: KeyedLocks::default(),
        });
        this.recover();
        this.update_gauge();
        Ok((this, report))
    }

    /// Restart recovery, best effort and one pod at a time: index names; a Ready pod whose
    /// namespaces or infra process are gone (reboot, crash) is torn down and marked NotReady;
    /// run directories and CNI attachments without a record are released.
    fn recover(&self) {
        for (id, rec) in self.records.list() {
            if !rec.config_pb.is_empty() {
                match crate::util::decode_legacy_pb::<k8s_cri::v1::PodSandboxConfig>(&rec.config_pb)
                {
                    Ok(config) => {
                        let mut next = (*rec).clone();
                        next.config = config;
                        next.config_pb.clear();
                        match self.records.put(&id, next) {
                            Ok(_) => {
                                tracing::info!(pod_id = %id, "pod record upgraded to typed config")
                            }
                            Err(e) => {
                                tracing::error!(pod_id = %id, error = %e, "pod record not upgraded")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(pod_id = %id, error = %e, "pod record from version 1 cannot be decoded; its config is empty")
                    }
                }
            }
            lock(&self.names).insert(rec.spec.name_key(), id.clone());
            if rec.state == SandboxState::Ready && !self.still_ready(&rec) {
                tracing::warn!(pod_id = %id, "pod sandbox lost its namespaces or infra process; stopping it");
                if let Err(e) = self.stop_blocking(&id) {
                    tracing::error!(pod_id = %id, error = %e, "stopping a broken pod sandbox failed");
                }
            }
        }
        let mut orphans: Vec<String> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.settings.pods_dir) {
            for dirent in entries.flatten() {
                let name = dirent.file_name().to_string_lossy().into_owned();
                if self.records.get(&name).is_none() {
                    orphans.push(name);
                }
            }
        }
        for id in self.network.attached_ids() {
            if self.records.get(&id).is_none() && !orphans.contains(&id) {
                orphans.push(id);
            }
        }
        for id in orphans {
            tracing::info!(pod_id = %id, "cleaning up a pod sandbox without a record");
            if let Err(e) = self.cleanup_orphan(&id) {
                tracing::error!(pod_id = %id, error = %e, "cleanup of a pod sandbox without a record failed");
            }
        }
    }

    fn still_ready(&self, rec: &SandboxRecord) -> bool {
        let pins_ok = rec.pinned.iter().all(|k| is_ns_pin(&rec.ns_dir().join(k)));
        let infra_ok = rec.infra.as_ref().is_none_or(infra::is_alive);
        pins_ok && infra_ok
    }

    /// Releases everything a create may have left for `id` when there is no record.
    fn cleanup_orphan(&self, id: &str) -> Result<()> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Ok(());
        }
        let run_dir = self.settings.pods_dir.join(id);
        if let Some(infra) = infra::from_pid_file(&run_dir.join("infra.pid")) {
            // Only a process that is really our infra: its cmdline names the monitor's mode.
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", infra.pid)).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == b"infra") {
                infra::kill(&infra)?;
            }
        }
        if let (Some(cg), Ok(text)) = (
            &self.cgroups,
            std::fs::read_to_string(run_dir.join(CGROUPS_INTENT)),
        ) {
            let dirs: Vec<PathBuf> = serde_json::from_str(&text).unwrap_or_default();
            if let Err(e) = cg.remove_created(&dirs) {
                tracing::warn!(pod_id = %id, error = %e, "cgroup of a pod without a record not removed");
            }
        }
        let netns = run_dir.join("ns/net");
        let spec = orphan_spec();
        self.network.teardown(&PodNetwork {
            id,
            netns: &netns,
            spec: &spec,
        })?;
        crius_cni::remove_pinned(&run_dir.join("ns"))
            .map_err(|e| Error::Internal(e.to_string()))?;
        files::unmount_shm(&run_dir.join("shm")).map_err(io_err("unmount", &run_dir))?;
        match std::fs::remove_dir_all(&run_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &run_dir)(e)),
        }
    }

    /// Whether pods may have a user namespace on this node (the startup probe passed).
    pub fn supports_user_namespaces(&self) -> bool {
        self.settings.user_namespaces.is_ok()
    }

    pub fn get(&self, id: &str) -> Option<Arc<SandboxRecord>> {
        self.records.get(id)
    }

    /// Resolves an id or a unique id prefix.
    pub fn resolve(&self, id: &str) -> Result<Arc<SandboxRecord>> {
        self.records.resolve(id, "pod sandbox")
    }

    pub fn list(&self, filter: &Filter) -> Vec<Arc<SandboxRecord>> {
        let by_id: Vec<Arc<SandboxRecord>> = if filter.id.is_empty() {
            self.records.list().into_iter().map(|(_, r)| r).collect()
        } else {
            match self.resolve(&filter.id) {
                Ok(rec) => vec![rec],
                Err(_) => Vec::new(),
            }
        };
        let mut out: Vec<Arc<SandboxRecord>> = by_id
            .into_iter()
            .filter(|r| filter.state.is_none_or(|s| s == r.state))
            .filter(|r| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| r.spec.labels.get(k) == Some(v))
            })
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// RunPodSandbox: creates the pod, or returns the id of the pod this retry belongs to.
    pub async fn run(
        self: &Arc<Self>,
        spec: PodSpec,
        config: k8s_cri::v1::PodSandboxConfig,
    ) -> Result<String> {
        let key = spec.name_key();
        let this = self.clone();
        // The create runs in its own task holding the name lock: a client that gives up does
        // not cancel it, and its retry waits for it and gets its id.
        crate::telemetry::spawn(async move {
            let _held = this.creating.lock(&key).await;
            if let Some(id) = lock(&this.names).get(&key).cloned() {
                tracing::info!(pod_id = %id, "RunPodSandbox retry: returning the existing pod");
                return Ok(id);
            }
            let worker = this.clone();
            let rec =
                crate::telemetry::spawn_blocking(move || worker.create_blocking(spec, config))
                    .await
                    .map_err(join_err)??;
            lock(&this.names).insert(key, rec.id.clone());
            this.update_gauge();
            this.events
                .publish(&rec.id, EventKind::Created, Some(rec.clone()));
            this.events
                .publish(&rec.id, EventKind::Started, Some(rec.clone()));
            Ok(rec.id.clone())
        })
        .await
        .map_err(join_err)?
    }

    fn create_blocking(
        &self,
        spec: PodSpec,
        config: k8s_cri::v1::PodSandboxConfig,
    ) -> Result<Arc<SandboxRecord>> {
        let mut undo = Rollback::new();
        let result = self.create_steps(spec, config, &mut undo);
        if result.is_err() {
            undo.unwind();
        }
        result
    }

    fn create_steps(
        &self,
        spec: PodSpec,
        config: k8s_cri::v1::PodSandboxConfig,
        undo: &mut Rollback,
    ) -> Result<Arc<SandboxRecord>> {
        let id = new_id()?;
        let run_dir = self.settings.pods_dir.join(&id);
        std::fs::create_dir(&run_dir).map_err(io_err("create pod dir", &run_dir))?;
        {
            let dir = run_dir.clone();
            undo.push("remove pod dir", move || {
                std::fs::remove_dir_all(&dir).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e.to_string())
                    }
                })
            });
        }

        // Namespaces: net and uts unless hostNetwork, ipc unless host IPC.
        let host_network = spec.host_network();
        let mut kinds = Vec::new();
        if !host_network {
            kinds.push(NsKind::Net);
            kinds.push(NsKind::Uts);
        }
        if spec.namespaces.ipc != NsMode::Node {
            kinds.push(NsKind::Ipc);
        }
        let ns_dir = run_dir.join("ns");
        let hostname =
            (!host_network && !spec.hostname.is_empty()).then_some(spec.hostname.as_str());
        let pinned = match &spec.user_namespace {
            None => crius_cni::create_pinned(&kinds, &ns_dir, hostname)
                .map_err(|e| Error::Internal(format!("pod namespaces: {e}")))?,
            Some(userns) => {
                if let Err(why) = &self.settings.user_namespaces {
                    return Err(Error::FailedPrecondition(format!(
                        "pod user namespaces are not available on this node: {why}"
                    )));
                }
                userns::create_pinned(&self.settings.monitor, &ns_dir, &kinds, hostname, userns)?
            }
        };
        {
            let dir = ns_dir.clone();
            undo.push("unpin namespaces", move || {
                crius_cni::remove_pinned(&dir).map_err(|e| e.to_string())
            });
        }
        let netns = pinned.net();
        let ipcns = pinned.path(NsKind::Ipc);
        if let Some(net) = &netns {
            crius_cni::loopback_up(net).map_err(|e| Error::Internal(e.to_string()))?;
        }

        // Cgroup parent with the pod's limits.
        let mut cgroups_created = Vec::new();
        if !spec.cgroup_parent.is_empty() {
            if let Some(cg) = &self.cgroups {
                // What is about to be created is written down first: a daemon killed before the
                // record exists leaves this file for the restart's orphan cleanup.
                let missing = cg
                    .missing(&spec.cgroup_parent)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                let intent = run_dir.join(CGROUPS_INTENT);
                let text = serde_json::to_string(&missing)
                    .map_err(|e| Error::Internal(format!("pod cgroups: {e}")))?;
                files::write_file(&intent, &text).map_err(io_err("write", &intent))?;
                cgroups_created = cg
                    .ensure(&spec.cgroup_parent)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let created = cgroups_created.clone();
                let cg2 = cg.clone();
                undo.push("remove pod cgroup", move || {
                    cg2.remove_created(&created).map_err(|e| e.to_string())
                });
                if !spec.limits.is_empty() {
                    cg.apply(&spec.cgroup_parent, &spec.limits)
                        .map_err(|e| Error::InvalidArgument(format!("pod resources: {e}")))?;
                }
            }
        }

        // /dev/shm of the pod.
        if spec.namespaces.ipc != NsMode::Node {
            let shm = run_dir.join("shm");
            files::mount_shm(&shm, self.settings.shm_size)
                .map_err(io_err("mount pod shm at", &shm))?;
            undo.push("unmount pod shm", move || {
                files::unmount_shm(&shm).map_err(|e| e.to_string())
            });
        }

        // PID 1 of a pod-level PID namespace.
        let mut infra_proc = None;
        if spec.namespaces.pid == NsMode::Pod {
            let mut ns_args: Vec<(&str, PathBuf)> = Vec::new();
            for (flag, kind) in [
                ("--userns", NsKind::User),
                ("--netns", NsKind::Net),
                ("--ipcns", NsKind::Ipc),
                ("--utsns", NsKind::Uts),
            ] {
                if let Some(p) = pinned.path(kind) {
                    ns_args.push((flag, p));
                }
            }
            let args: Vec<(&str, &Path)> = ns_args.iter().map(|(f, p)| (*f, p.as_path())).collect();
            let started = tracing::info_span!("monitor.start", pod_id = %id, mode = "infra")
                .in_scope(|| {
                    infra::start(&self.settings.monitor, &run_dir.join("infra.pid"), &args)
                })?;
            undo.push("kill pod infra process", move || {
                infra::kill(&started).map_err(|e| e.to_string())
            });
            if spec.oom_score_adj != 0 {
                infra::set_oom_score_adj(started.pid, spec.oom_score_adj)?;
            }
            infra_proc = Some(started);
        }

        // The pod network.
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut network_name = String::new();
        let mut cni_result = None;
        if let Some(net) = &netns {
            let started = Instant::now();
            let pod = PodNetwork {
                id: &id,
                netns: net,
                spec: &spec,
            };
            let status = self.network.setup(&pod)?;
            self.metrics
                .pod_network_setup_seconds
                .observe(started.elapsed().as_secs_f64());
            let network = self.network.clone();
            let (uid, net2, spec2) = (id.clone(), net.clone(), spec.clone());
            undo.push("tear down pod network", move || {
                network
                    .teardown(&PodNetwork {
                        id: &uid,
                        netns: &net2,
                        spec: &spec2,
                    })
                    .map_err(|e| e.to_string())
            });
            ips = status.ips;
            network_name = status.network;
            cni_result = Some(status.result);
        }

        sysctl::apply(&spec.sysctls, netns.as_deref(), ipcns.as_deref())?;

        // Pod files.
        let host_resolv =
            std::fs::read_to_string(&self.settings.host_resolv_conf).unwrap_or_default();
        let resolv = files::resolv_conf(spec.dns.as_ref(), &host_resolv);
        let hostname_value = if spec.hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        } else {
            spec.hostname.clone()
        };
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            files::hosts(&hostname_value, &ips)
        };
        for (name, contents) in [
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname_value}\n")),
            ("hosts", hosts),
        ] {
            let path = run_dir.join(name);
            files::write_file(&path, &contents).map_err(io_err("write", &path))?;
        }
        // In a user namespace the pod's files belong to its root, as they would on the host.
        if let Some(userns) = &spec.user_namespace {
            let (uid, gid) = userns.host_root();
            let mut owned = vec!["resolv.conf", "hostname", "hosts"];
            if spec.namespaces.ipc != NsMode::Node {
                owned.push("shm");
            }
            for name in owned {
                let path = run_dir.join(name);
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io_err("chown", &path))?;
            }
        }

        let rec = SandboxRecord {
            id: id.clone(),
            state: SandboxState::Ready,
            created_at: now_ns(),
            run_dir,
            pinned: pinned
                .kinds()
                .iter()
                .map(|k| k.name().to_string())
                .collect(),
            network: network_name,
            ips: ips.iter().map(|ip| ip.to_string()).collect(),
            cni_result,
            infra: infra_proc,
            cgroups_created,
            config,
            config_pb: String::new(),
            spec,
        };
        let stored = self.records.put(&id, rec)?;
        undo.disarm();
        tracing::info!(pod_id = %id, ips = ?stored.ips, "pod sandbox ready");
        Ok(stored)
    }

    /// StopPodSandbox: releases the network, namespaces, shm and infra process; idempotent.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = match self.resolve(id) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _held = self.locks.lock(&rec.id).await;
        let this = self.clone();
        let id = rec.id.clone();
        crate::telemetry::spawn_blocking(move || this.stop_blocking(&id))
            .await
            .map_err(join_err)??;
        self.update_gauge();
        Ok(())
    }

    fn stop_blocking(&self, id: &str) -> Result<()> {
        let Some(rec) = self.records.get(id) else {
            return Ok(());
        };
        if rec.state == SandboxState::NotReady {
            return Ok(());
        }
        // Containers of the pod are stopped here once they exist (issue 5).
        let t0 = Instant::now();
        if let Some(infra_proc) = &rec.infra {
            infra::kill(infra_proc)?;
        }
        let t_infra = t0.elapsed();
        if let Some(net) = rec.ns_path("net") {
            let started = Instant::now();
            self.network.teardown(&PodNetwork {
                id,
                netns: &net,
                spec: &rec.spec,
            })?;
            self.metrics
                .pod_network_teardown_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let t_network = t0.elapsed();
        crius_cni::remove_pinned(&rec.ns_dir()).map_err(|e| Error::Internal(e.to_string()))?;
        files::unmount_shm(&rec.shm_path()).map_err(io_err("unmount", &rec.shm_path()))?;
        let t_namespaces = t0.elapsed();
        let mut next = (*rec).clone();
        next.state = rec.state.transition(SandboxState::NotReady, id)?;
        next.pinned.clear();
        next.ips.clear();
        let stored = self.records.put(id, next)?;
        // Where the time went (microseconds, each phase on its own).
        let us = |d: std::time::Duration| d.as_micros() as u64;
        tracing::info!(
            pod_id = %id,
            infra_us = us(t_infra),
            network_us = us(t_network - t_infra),
            namespaces_us = us(t_namespaces - t_network),
            record_us = us(t0.elapsed() - t_namespaces),
            "pod sandbox stopped"
        );
        self.events.publish(id, EventKind::Stopped, Some(stored));
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed, then removes its directories, cgroups and
    /// record; idempotent.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = match self.resolve(id) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _held = self.locks.lock(&rec.id).await;
        let this = self.clone();
        let id = rec.id.clone();
        crate::telemetry::spawn_blocking(move || {
            this.stop_blocking(&id)?;
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
        // Containers of the pod are removed here once they exist (issue 5).
        if let Some(cg) = &self.cgroups {
            if let Err(e) = cg.remove_created(&rec.cgroups_created) {
                tracing::warn!(pod_id = %id, error = %e, "pod cgroup not removed");
            }
        }
        match std::fs::remove_dir_all(&rec.run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &rec.run_dir)(e)),
        }
        self.records.remove(id)?;
        lock(&self.names).remove(&rec.spec.name_key());
        tracing::info!(pod_id = %id, "pod sandbox removed");
        self.events.publish(id, EventKind::Deleted, Some(rec));
        Ok(())
    }

    fn update_gauge(&self) {
        let (mut ready, mut not_ready) = (0i64, 0i64);
        for (_, r) in self.records.list() {
            match r.state {
                SandboxState::Ready => ready += 1,
                SandboxState::NotReady => not_ready += 1,
            }
        }
        self.metrics.pods.with_label_values(&["ready"]).set(ready);
        self.metrics
            .pods
            .with_label_values(&["notready"])
            .set(not_ready);
    }
}

/// In a pod's run dir: the cgroup directories its create was about to make (JSON list).
const CGROUPS_INTENT: &str = "cgroups.json";

/// Whether `path` is a namespace pin (a bind mount of an nsfs file), not a plain file.
fn is_ns_pin(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(file), Some(Ok(dir))) => file.dev() != dir.dev(),
        _ => false,
    }
}

/// A placeholder spec for the network teardown of a pod without a record (CNI_ARGS and
/// capabilities then come from the CNI cache).
fn orphan_spec() -> PodSpec {
    PodSpec {
        name: String::new(),
        namespace: String::new(),
        uid: String::new(),
        attempt: 0,
        hostname: String::new(),
        log_directory: String::new(),
        dns: None,
        port_mappings: Vec::new(),
        labels: Default::default(),
        annotations: Default::default(),
        namespaces: record::NamespaceModes {
            network: NsMode::Pod,
            pid: NsMode::Container,
            ipc: NsMode::Pod,
            target_id: String::new(),
        },
        cgroup_parent: String::new(),
        limits: Default::default(),
        oom_score_adj: 0,
        sysctls: Default::default(),
        runtime_handler: String::new(),
        privileged: false,
        user_namespace: None,
    }
}

#[cfg(test)]
mod tests;
