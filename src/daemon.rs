//! The daemon's shared state: [`Daemon`] composes the domains (config, store, images, pods,
//! containers, metrics, events), restores them behind the startup gate, and carries the
//! cross-domain operations (`crate::lifecycle`).
//!
//! Must not import the CRI server or the streaming server (both use it; `app::run` wires them
//! together), parse flags or install the log subscriber.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Sources};
use crate::container::{Containers, Settings as ContainerSettings};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::image::registry::Credentials;
use crate::image::Images;
use crate::metrics::Metrics;
use crate::runtime::oci::{Monitored, OciRuntime};
use crate::sandbox::network::CniNetwork;
use crate::sandbox::{Sandboxes, Settings as SandboxSettings};
use crate::store::{Collection, Record};
use crius_cni::watch::ConfDir;

/// Node-level runtime state kubelet hands over (`UpdateRuntimeConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeState {
    pub pod_cidr: String,
}

impl Record for RuntimeState {
    const KIND: &'static str = "runtime";
    const VERSION: u32 = 1;
}

const RUNTIME_STATE_ID: &str = "node";

/// Restored state; present once the startup gate opens.
struct State {
    runtime: Arc<Collection<RuntimeState>>,
    images: Images,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
}

/// Why a runtime condition is false.
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
}

/// Everything the handlers share.
pub struct Daemon {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Where the configuration came from, for SIGHUP reloads (None: no reloads).
    sources: Option<Sources>,
    state: OnceLock<State>,
    ready: AtomicBool,
    /// Lifecycle events for `GetContainerEvents`; subscribers may come before the restore.
    pub events: Arc<Events>,
    /// The CNI config dir, watched: `NetworkReady` and pod networks read it.
    cni_conf: Arc<ConfDir>,
    /// Per-pod and per-image locks of the cross-domain operations (`crate::lifecycle`).
    pub(crate) locks: Arc<crate::lifecycle::Locks>,
}

impl Daemon {
    pub fn new(config: Config, metrics: Arc<Metrics>, sources: Option<Sources>) -> Arc<Self> {
        let cni_conf = Arc::new(ConfDir::new(
            config.network.conf_dir.clone(),
            config.network.default_network.clone(),
        ));
        Arc::new(Daemon {
            config: Arc::new(config),
            metrics,
            sources,
            state: OnceLock::new(),
            ready: AtomicBool::new(false),
            events: Events::new(),
            cni_conf,
            locks: Arc::default(),
        })
    }

    /// The image domain, once restored.
    pub fn images(&self) -> Result<&Images> {
        Ok(&self.state()?.images)
    }

    /// The pod sandbox domain, once restored.
    pub fn sandboxes(&self) -> Result<&Arc<Sandboxes>> {
        Ok(&self.state()?.sandboxes)
    }

    /// The container domain, once restored.
    pub fn containers(&self) -> Result<&Arc<Containers>> {
        Ok(&self.state()?.containers)
    }

    /// Re-reads the configuration and applies what can change at runtime (registries).
    pub fn reload(&self) {
        let Some(sources) = &self.sources else { return };
        match crate::config::load(sources) {
            Ok(config) => {
                if let Ok(images) = self.images() {
                    images.reload(&config.image);
                }
                tracing::info!(
                    registries = config.image.registries.len(),
                    "configuration reloaded (registries)"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; keeping the running configuration")
            }
        }
    }

    /// Credentials for `registry` from `[image] auth_file`, if configured and present.
    pub async fn auth_file_credentials(&self, registry: &str) -> Option<Credentials> {
        let path = self.config.image.auth_file.clone();
        if path.as_os_str().is_empty() {
            return None;
        }
        let registry = registry.to_string();
        crate::telemetry::spawn_blocking(move || crate::image::auth_file::lookup(&path, &registry))
            .await
            .ok()
            .flatten()
    }

    /// True once state is restored and every RPC may be served.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn state(&self) -> Result<&State> {
        self.state.get().ok_or(Error::Starting)
    }

    /// Loads persisted state, then opens the startup gate. Each problem record is logged and
    /// skipped: restore is best effort, one object at a time.
    pub async fn restore(self: &Arc<Self>) -> Result<()> {
        let started = Instant::now();
        let root = self.config.state.root.clone();
        let image_config = self.config.image.clone();
        let metrics = self.metrics.clone();
        let config = self.config.clone();
        let events = self.events.clone();
        let conf = self.cni_conf.clone();
        let (runtime, report, images, sandboxes, sandbox_report, containers, container_report) =
            crate::telemetry::spawn_blocking(move || {
                let (runtime, report) = Collection::<RuntimeState>::open(&root)?;
                let images = Images::open(&root, &image_config, metrics.clone())?;
                let network = Arc::new(CniNetwork::new(
                    config.network.bin_dirs.clone(),
                    root.join("cni"),
                    conf,
                ));
                let cgroups = crate::cgroups::Cgroups::discover(Path::new(
                    crate::cgroups::DEFAULT_ROOT,
                ))
                .map_err(|e| tracing::warn!(error = %e, "no cgroup hierarchies; pod cgroup parents are not managed"))
                .ok();
                let monitor = monitor_binary(&config.runtime.monitor_path);
                if !monitor.is_file() {
                    tracing::error!(monitor = %monitor.display(), "the container monitor is not installed: every CreateContainer will fail until it is (set [runtime] monitor_path)");
                }
                let user_namespaces = crate::sandbox::userns::probe(
                    &monitor,
                    &config.state.runroot.join("userns-probe"),
                    &root,
                );
                if let Err(why) = &user_namespaces {
                    tracing::warn!(reason = %why, "pod user namespaces are not available");
                }
                let settings = SandboxSettings {
                    pods_dir: config.state.runroot.join("pods"),
                    shm_size: config.pod.shm_size,
                    monitor,
                    host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
                    user_namespaces,
                };
                let (sandboxes, sandbox_report) =
                    Sandboxes::open(
                        &root,
                        settings,
                        network,
                        cgroups.clone(),
                        metrics.clone(),
                        events.clone(),
                    )?;
                let runtimes = runtimes(&config);
                let container_settings = ContainerSettings {
                    bundles_dir: config.state.runroot.join("containers"),
                    monitors_dir: config.state.runroot.join("m"),
                    storage_dir: root.join("containers"),
                    links_dir: root.join("l"),
                    idmap_dir: root.join("i"),
                    cgroups: cgroups.clone(),
                    host: crate::container::spec::HostView {
                        pids_limit: config.runtime.pids_limit,
                        seccomp_use_default_when_empty: config
                            .runtime
                            .seccomp_use_default_when_empty,
                        ..crate::container::host::detect()
                    },
                };
                let (containers, container_report) = Containers::open(
                    &root,
                    container_settings,
                    runtimes,
                    sandboxes.clone(),
                    images.clone(),
                    metrics,
                    events,
                )?;
                Ok::<_, Error>((
                    runtime,
                    report,
                    images,
                    sandboxes,
                    sandbox_report,
                    containers,
                    container_report,
                ))
            })
            .await
            .map_err(|e| Error::Internal(format!("restore task: {e}")))??;
        report.log("runtime");
        sandbox_report.log("sandbox");
        container_report.log("container");
        if self
            .state
            .set(State {
                runtime,
                images,
                sandboxes,
                containers,
            })
            .is_err()
        {
            return Err(Error::Internal("state restored twice".into()));
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state restored"
        );
        Ok(())
    }

    pub fn pod_cidr(&self) -> String {
        self.state()
            .ok()
            .and_then(|s| s.runtime.get(RUNTIME_STATE_ID))
            .map(|r| r.pod_cidr.clone())
            .unwrap_or_default()
    }

    pub async fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        let state = self.state()?;
        if self.pod_cidr() == cidr {
            return Ok(());
        }
        state
            .runtime
            .put_async(
                RUNTIME_STATE_ID,
                RuntimeState {
                    pod_cidr: cidr.to_string(),
                },
            )
            .await?;
        tracing::info!(pod_cidr = cidr, "pod cidr updated");
        Ok(())
    }

    /// Where `handler`'s runtime binary is now (looked up on the blocking pool: it stats the
    /// `PATH` dirs); `None` when the handler is not configured or its binary is not installed.
    pub async fn handler_binary(&self, handler: &str) -> Option<PathBuf> {
        let path = self.config.runtime.handlers.get(handler)?.path.clone();
        crate::telemetry::spawn_blocking(move || crate::runtime::find_binary(&path))
            .await
            .ok()
            .flatten()
    }

    /// RuntimeReady: state restored and the default handler's binary present.
    pub async fn runtime_condition(&self) -> Result<(), NotReady> {
        if !self.is_ready() {
            return Err(NotReady {
                reason: "RuntimeStarting",
                message: "crius is restoring its state".into(),
            });
        }
        let name = self.config.runtime.default_handler.clone();
        let path: PathBuf = self
            .config
            .runtime
            .handlers
            .get(&name)
            .map(|h| h.path.clone())
            .unwrap_or_default();
        match self.handler_binary(&name).await {
            Some(_) => Ok(()),
            None => Err(NotReady {
                reason: "RuntimeBinaryNotFound",
                message: format!(
                    "default handler {name:?}: runtime binary {} not found",
                    path.display()
                ),
            }),
        }
    }

    /// NetworkReady: a usable CNI network configuration is present (the watched conf dir:
    /// re-read only after a change).
    pub async fn network_condition(&self) -> Result<(), NotReady> {
        let conf = self.cni_conf.clone();
        let scan = crate::telemetry::spawn_blocking(move || conf.default_network())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let conf_dir = self.config.network.conf_dir.display();
        match scan {
            Ok(Some(_)) => Ok(()),
            Ok(None) if self.config.network.default_network.is_empty() => Err(NotReady {
                reason: "NetworkPluginNotReady",
                message: format!(
                    "Network plugin returns error: no CNI configuration file in {conf_dir}"
                ),
            }),
            Ok(None) => Err(NotReady {
                reason: "NetworkPluginNotReady",
                message: format!(
                    "Network plugin returns error: CNI network {:?} not found in {conf_dir}",
                    self.config.network.default_network
                ),
            }),
            Err(e) => Err(NotReady {
                reason: "NetworkPluginNotReady",
                message: format!("Network plugin returns error: {e}"),
            }),
        }
    }
}

/// One monitored OCI runtime per configured handler.
fn runtimes(config: &Config) -> std::collections::BTreeMap<String, Arc<dyn OciRuntime>> {
    config
        .runtime
        .handlers
        .iter()
        .map(|(name, h)| {
            let binary = crate::runtime::find_binary(&h.path).unwrap_or_else(|| h.path.clone());
            let root = if h.root.as_os_str().is_empty() {
                config.state.runroot.join("runtimes").join(name)
            } else {
                h.root.clone()
            };
            let monitor = if h.monitor_path.as_os_str().is_empty() {
                monitor_binary(&config.runtime.monitor_path)
            } else {
                monitor_binary(&h.monitor_path)
            };
            let options = crate::runtime::oci::probe_mount_options(&binary);
            let has = |o: &str| options.iter().any(|x| x == o);
            let rt: Arc<dyn OciRuntime> = Arc::new(Monitored {
                name: name.clone(),
                rro: has("rro"),
                idmap: has("idmap"),
                binary,
                root,
                monitor,
            });
            (name.clone(), rt)
        })
        .collect()
}

/// Resolves the monitor binary: absolute as given; a bare name next to the running `crius`
/// binary first, then on `PATH`; unresolved names are kept (the error names them at use).
pub fn monitor_binary(configured: &Path) -> PathBuf {
    if configured.is_absolute() || configured.components().count() > 1 {
        return configured.to_path_buf();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(configured)))
        .filter(|p| p.is_file());
    beside
        .or_else(|| crate::runtime::find_binary(configured))
        .unwrap_or_else(|| configured.to_path_buf())
}
