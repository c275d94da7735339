//! The pod network boundary: [`NetworkManager`] with the real CNI implementation
//! ([`CniNetwork`]) and a recording fake for unit tests.
//!
//! Owns the translation of a pod into a CNI attachment (CNI_ARGS, capability args) and of the
//! result into pod IPs. Must not create namespaces or records (the sandbox module does).
//! Everything is blocking.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crius_cni::watch::ConfDir;
use crius_cni::{Attachment, Cni, CniError, CniErrorKind};
use serde_json::{json, Map, Value};

use super::record::PodSpec;
use crate::error::{Error, ErrorKind};

/// The interface name inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// A pod as the network sees it.
pub struct PodNetwork<'a> {
    pub id: &'a str,
    /// The pinned netns; may be gone at teardown.
    pub netns: &'a Path,
    pub spec: &'a PodSpec,
}

/// What setup produced.
#[derive(Debug, Clone)]
pub struct NetworkStatus {
    pub network: String,
    pub ips: Vec<IpAddr>,
    pub result: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no CNI network configuration: {0}")]
    NotConfigured(String),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("{0}")]
    Other(String),
}

impl NetworkError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetworkError::NotConfigured(_) => ErrorKind::FailedPrecondition,
            NetworkError::Cni(e) => match e.kind() {
                CniErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                CniErrorKind::NotFound => ErrorKind::NotFound,
                CniErrorKind::FailedPrecondition => ErrorKind::FailedPrecondition,
                CniErrorKind::DeadlineExceeded => ErrorKind::DeadlineExceeded,
                CniErrorKind::Internal => ErrorKind::Internal,
            },
            NetworkError::Other(_) => ErrorKind::Internal,
        }
    }
}

impl From<NetworkError> for Error {
    fn from(e: NetworkError) -> Error {
        let msg = format!("pod network: {e}");
        match e.kind() {
            ErrorKind::InvalidArgument => Error::InvalidArgument(msg),
            ErrorKind::NotFound => Error::NotFound(msg),
            ErrorKind::FailedPrecondition => Error::FailedPrecondition(msg),
            _ => Error::Internal(msg),
        }
    }
}

/// Attaches pods to and detaches them from the pod network.
pub trait NetworkManager: Send + Sync + 'static {
    /// Attaches the pod; on failure nothing of the attempt remains.
    fn setup(&self, pod: &PodNetwork<'_>) -> Result<NetworkStatus, NetworkError>;
    /// Detaches the pod (idempotent; works from the cache after a restart or without netns).
    fn teardown(&self, pod: &PodNetwork<'_>) -> Result<(), NetworkError>;
    /// Ids with attachment state left (for cleanup of pods that have no record).
    fn attached_ids(&self) -> Vec<String>;
}

/// The real pod network: CNI plugins from `conf_dir`/`bin_dirs`.
pub struct CniNetwork {
    cni: Cni,
    conf: Arc<ConfDir>,
}

impl CniNetwork {
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: PathBuf, conf: Arc<ConfDir>) -> Self {
        CniNetwork {
            cni: Cni::new(bin_dirs, cache_dir),
            conf,
        }
    }

    fn attachment<'a>(pod: &PodNetwork<'a>) -> Attachment<'a> {
        let spec = pod.spec;
        // A pod known only from the CNI cache (no record): args come from the cache.
        let args = if spec.name.is_empty() {
            Vec::new()
        } else {
            vec![
                ("IgnoreUnknown".to_string(), "1".to_string()),
                ("K8S_POD_NAMESPACE".to_string(), spec.namespace.clone()),
                ("K8S_POD_NAME".to_string(), spec.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".to_string(), pod.id.to_string()),
                ("K8S_POD_UID".to_string(), spec.uid.clone()),
            ]
        };
        Attachment {
            container_id: pod.id,
            netns: pod.netns,
            ifname: POD_IFNAME,
            args,
            capabilities: capabilities(spec),
        }
    }
}

/// The CNI capability args of a pod (`portMappings`, `dns`, `cgroupPath`).
pub fn capabilities(spec: &PodSpec) -> Map<String, Value> {
    let mut caps = Map::new();
    if !spec.port_mappings.is_empty() {
        let ports: Vec<Value> = spec
            .port_mappings
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = json!(p.host_ip);
                }
                m
            })
            .collect();
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(dns) = &spec.dns {
        caps.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    if !spec.cgroup_parent.is_empty() {
        caps.insert("cgroupPath".into(), json!(spec.cgroup_parent));
    }
    caps
}

impl NetworkManager for CniNetwork {
    fn setup(&self, pod: &PodNetwork<'_>) -> Result<NetworkStatus, NetworkError> {
        let net = self
            .conf
            .default_network()
            .map_err(|e| NetworkError::NotConfigured(e.to_string()))?
            .ok_or_else(|| {
                NetworkError::NotConfigured(if self.conf.name().is_empty() {
                    format!(
                        "no network configuration file in {}",
                        self.conf.dir().display()
                    )
                } else {
                    format!(
                        "network {:?} not found in {}",
                        self.conf.name(),
                        self.conf.dir().display()
                    )
                })
            })?;
        let att = Self::attachment(pod);
        let span = tracing::info_span!(
            "cni.add",
            pod_id = %pod.id,
            network = %net.name,
            ips = tracing::field::Empty,
        );
        let _in_span = span.enter();
        let result = self.cni.add(&net, &att)?;
        let mut ips = result.pod_ips();
        if ips.is_empty() {
            // Some plugins report no IPs; read what the interface carries.
            match crius_cni::interface_addrs(pod.netns, POD_IFNAME) {
                Ok(found) => ips = found,
                Err(e) => {
                    let _ = self.cni.del(Some(&net), &att);
                    return Err(NetworkError::Other(e.to_string()));
                }
            }
        }
        span.record("ips", tracing::field::debug(&ips));
        Ok(NetworkStatus {
            network: net.name.clone(),
            ips,
            result: result.raw,
        })
    }

    fn teardown(&self, pod: &PodNetwork<'_>) -> Result<(), NetworkError> {
        let att = Self::attachment(pod);
        let _in_span = tracing::info_span!("cni.del", pod_id = %pod.id).entered();
        self.cni.del(None, &att)?;
        Ok(())
    }

    fn attached_ids(&self) -> Vec<String> {
        self.cni.cached_container_ids().unwrap_or_default()
    }
}

/// A recording fake: hands out addresses from 10.99.0.0/24, can be told to fail.
#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct FakeNetwork {
        pub calls: Mutex<Vec<String>>,
        pub attached: Mutex<Vec<String>>,
        pub fail_setup: Mutex<Option<String>>,
    }

    impl NetworkManager for FakeNetwork {
        fn setup(&self, pod: &PodNetwork<'_>) -> Result<NetworkStatus, NetworkError> {
            self.calls.lock().unwrap().push(format!("setup {}", pod.id));
            if let Some(msg) = self.fail_setup.lock().unwrap().clone() {
                return Err(NetworkError::Other(msg));
            }
            let mut attached = self.attached.lock().unwrap();
            attached.push(pod.id.to_string());
            let ip: IpAddr = format!("10.99.0.{}", attached.len() + 1).parse().unwrap();
            Ok(NetworkStatus {
                network: "fake".into(),
                ips: vec![ip],
                result: json!({"ips": [{"address": format!("{ip}/24")}]}),
            })
        }

        fn teardown(&self, pod: &PodNetwork<'_>) -> Result<(), NetworkError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("teardown {}", pod.id));
            self.attached.lock().unwrap().retain(|id| id != pod.id);
            Ok(())
        }

        fn attached_ids(&self) -> Vec<String> {
            self.attached.lock().unwrap().clone()
        }
    }
}
