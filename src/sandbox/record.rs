//! The persisted pod sandbox record and its state machine.
//!
//! ```text
//!   RunPodSandbox ──► Ready ──StopPodSandbox──► NotReady ──RemovePodSandbox──► (gone)
//!                       └────────────RemovePodSandbox (stops first)───────────────┘
//! ```
//! A record is written only once every step of the create succeeded, so a record always
//! describes a pod whose resources exist (Ready) or were released (NotReady). Transitions go
//! through [`SandboxState::transition`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::Limits;
use crate::error::Error;
use crate::store::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

impl SandboxState {
    /// The only way a state changes: `Ready → NotReady`; anything else is refused.
    pub fn transition(self, to: SandboxState, id: &str) -> Result<SandboxState, Error> {
        match (self, to) {
            (SandboxState::Ready, SandboxState::NotReady) => Ok(to),
            (from, to) => Err(Error::FailedPrecondition(format!(
                "pod sandbox {id}: cannot go from {from:?} to {to:?}"
            ))),
        }
    }
}

/// How a pod-level namespace is provided (the CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsMode {
    /// One namespace for the whole pod.
    Pod,
    /// One per container.
    Container,
    /// The host's.
    Node,
    /// Another container's (`target_id`).
    Target,
}

impl NsMode {
    pub fn from_cri(mode: i32) -> Option<NsMode> {
        Some(match mode {
            0 => NsMode::Pod,
            1 => NsMode::Container,
            2 => NsMode::Node,
            3 => NsMode::Target,
            _ => return None,
        })
    }

    pub fn to_cri(self) -> i32 {
        match self {
            NsMode::Pod => 0,
            NsMode::Container => 1,
            NsMode::Node => 2,
            NsMode::Target => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceModes {
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub target_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The pod's PID 1 when it has its own PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Infra {
    pub pid: u32,
    /// Start time in clock ticks (`/proc/<pid>/stat` field 22), to tell a reused pid apart.
    pub start_time: u64,
}

/// One line of a user namespace mapping: ids `container_id..+length` inside are
/// `host_id..+length` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

/// The pod's user namespace (`userns_options` mode POD with the kubelet's mappings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
}

impl UserNamespace {
    /// The host uid and gid of the namespace's root (validated to be mapped).
    pub fn host_root(&self) -> (u32, u32) {
        let root = |maps: &[IdMap]| {
            maps.iter()
                .find(|m| m.container_id == 0)
                .map_or(u32::MAX, |m| m.host_id)
        };
        (root(&self.uids), root(&self.gids))
    }

    /// `C:H:L` arguments for `crius-conmon userns`.
    pub fn args(maps: &[IdMap]) -> Vec<String> {
        maps.iter()
            .map(|m| format!("{}:{}:{}", m.container_id, m.host_id, m.length))
            .collect()
    }
}

/// What a RunPodSandbox asked for, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub namespaces: NamespaceModes,
    /// The pod's cgroup parent as a cgroupfs path (systemd slices already expanded); may be empty.
    pub cgroup_parent: String,
    /// Pod resources plus overhead, applied to the cgroup parent.
    pub limits: Limits,
    pub oom_score_adj: i64,
    pub sysctls: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub privileged: bool,
    /// A pod user namespace; `None` = the host's.
    #[serde(default)]
    pub user_namespace: Option<UserNamespace>,
}

impl PodSpec {
    /// The key a retried RunPodSandbox for the same pod has in common with the first.
    pub fn name_key(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }

    pub fn host_network(&self) -> bool {
        self.namespaces.network == NsMode::Node
    }
}

/// A pod sandbox as stored in `<root>/sandbox/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub spec: PodSpec,
    pub state: SandboxState,
    /// Unix time in nanoseconds.
    pub created_at: i64,
    /// `<runroot>/pods/<id>`: namespace pins, resolv.conf, hostname, hosts, shm.
    pub run_dir: PathBuf,
    /// Pinned namespaces (`net`, `ipc`, `uts`, `user`), under `run_dir/ns`; empty once stopped.
    pub pinned: Vec<String>,
    /// The CNI network joined (empty for hostNetwork pods).
    pub network: String,
    /// Pod IPs, the first one primary; empty once stopped.
    pub ips: Vec<String>,
    /// The CNI ADD result, for `verbose` status.
    pub cni_result: Option<serde_json::Value>,
    pub infra: Option<Infra>,
    /// Cgroup directories this pod created (removed with it).
    pub cgroups_created: Vec<PathBuf>,
    /// The CRI `PodSandboxConfig` as received, typed, for the container side (version 1 stored
    /// it as base64 protobuf in `config_pb`, migrated at load).
    #[serde(default)]
    pub config: k8s_cri::v1::PodSandboxConfig,
    /// Version 1 only: the config as base64 protobuf. Never written.
    #[serde(default, skip_serializing)]
    pub config_pb: String,
}

impl Record for SandboxRecord {
    const KIND: &'static str = "sandbox";
    const VERSION: u32 = 2;
}

impl SandboxRecord {
    pub fn ns_dir(&self) -> PathBuf {
        self.run_dir.join("ns")
    }

    /// Path of a pinned namespace (`net`, `ipc`, `uts`, `user`) while the pod holds it.
    pub fn ns_path(&self, kind: &str) -> Option<PathBuf> {
        self.pinned
            .iter()
            .any(|k| k == kind)
            .then(|| self.ns_dir().join(kind))
    }

    pub fn shm_path(&self) -> PathBuf {
        self.run_dir.join("shm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_to_not_ready_is_allowed() {
        assert_eq!(
            SandboxState::Ready
                .transition(SandboxState::NotReady, "p")
                .unwrap(),
            SandboxState::NotReady
        );
        let err = SandboxState::NotReady
            .transition(SandboxState::Ready, "p1")
            .unwrap_err();
        assert!(err.to_string().contains("p1"), "{err}");
        assert!(SandboxState::Ready
            .transition(SandboxState::Ready, "p")
            .is_err());
    }

    #[test]
    fn namespace_modes_round_trip_through_cri_numbers() {
        for m in [NsMode::Pod, NsMode::Container, NsMode::Node, NsMode::Target] {
            assert_eq!(NsMode::from_cri(m.to_cri()), Some(m));
        }
        assert_eq!(NsMode::from_cri(9), None);
    }
}
