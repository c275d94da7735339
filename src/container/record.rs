//! The persisted container record and its state machine.
//!
//! ```text
//!  CreateContainer ──► Created ──StartContainer──► Running ──(exit, Stop)──► Exited
//!                         └──────────(Stop, exit before start)─────────────────┘
//! ```
//! Exits are learned from the monitor's exit record. Transitions go through
//! [`ContainerState::transition`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

impl ContainerState {
    /// The only way a state changes; anything but forward moves is FailedPrecondition.
    pub fn transition(self, to: ContainerState, id: &str) -> Result<ContainerState, Error> {
        use ContainerState::*;
        match (self, to) {
            (Created, Running) | (Created, Exited) | (Running, Exited) => Ok(to),
            (from, to) => Err(Error::FailedPrecondition(format!(
                "container {id}: cannot go from {from:?} to {to:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
        }
    }
}

/// The effective user of the container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub uid: i64,
    pub gid: i64,
    pub supplemental_groups: Vec<i64>,
}

/// A container as stored in `<root>/container/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it.
    pub image: String,
    /// Image id (config digest).
    pub image_id: String,
    /// A repo digest of the image (what kubelet calls image_ref), else the id.
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
    pub monitor_pid: u32,
    pub runtime_handler: String,
    /// `<runroot>/containers/<id>`: `config.json` and `rootfs/`.
    pub bundle: PathBuf,
    /// The monitor's dir (short path: sockets).
    pub monitor_dir: PathBuf,
    /// `<root>/containers/<id>`: overlay upper and work dirs.
    pub storage: PathBuf,
    /// Absolute log path (pod log dir + container log path).
    pub log_path: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub user: UserRecord,
    pub stop_signal: i32,
    pub tty: bool,
    /// The CRI `ContainerConfig` as received, typed (version 2; version 1 stored it as base64
    /// protobuf in `config_pb`, migrated at load).
    #[serde(default)]
    pub config: k8s_cri::v1::ContainerConfig,
    /// Current `LinuxContainerResources`, updated by UpdateContainerResources (version 1:
    /// `resources_pb`).
    #[serde(default)]
    pub resources: k8s_cri::v1::LinuxContainerResources,
    /// Version 1 only: the config as base64 protobuf. Never written.
    #[serde(default, skip_serializing)]
    pub config_pb: String,
    /// Version 1 only: the resources as base64 protobuf. Never written.
    #[serde(default, skip_serializing)]
    pub resources_pb: String,
    /// The monitor died while the container ran on (found at a status check): output is no
    /// longer captured, attach is gone, and the exit status cannot be learned from it.
    #[serde(default)]
    pub monitor_lost: bool,
    /// The images mounted as image volumes (`Mount.image`), in the order of the config's mounts.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
}

/// An image mounted read-only into the container (`Mount.image`, KEP-4639), at
/// `<bundle>/volumes/<n>`; the image is in use while the container exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageVolume {
    pub container_path: String,
    /// Image id (config digest).
    pub image_id: String,
    /// A repo digest of the image, else the id (reported in `ContainerStatus.mounts`).
    pub image_ref: String,
}

impl Record for ContainerRecord {
    const KIND: &'static str = "container";
    const VERSION: u32 = 2;
}

impl ContainerRecord {
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Where the image volumes are mounted: `<bundle>/volumes/<n>`.
    pub fn volumes_dir(&self) -> PathBuf {
        self.bundle.join("volumes")
    }

    /// Whether the container's image or one of its image volumes is `image_id`.
    pub fn uses_image(&self, image_id: &str) -> bool {
        self.image_id == image_id || self.image_volumes.iter().any(|v| v.image_id == image_id)
    }

    /// The name reservation key: one container per name and attempt in a pod.
    pub fn name_key(&self) -> String {
        name_key(&self.pod_id, &self.name, self.attempt)
    }
}

pub fn name_key(pod_id: &str, name: &str, attempt: u32) -> String {
    format!("{pod_id}/{name}/{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_transitions() {
        use ContainerState::*;
        assert!(Created.transition(Running, "c").is_ok());
        assert!(Running.transition(Exited, "c").is_ok());
        assert!(Created.transition(Exited, "c").is_ok());
        let err = Exited.transition(Running, "c9").unwrap_err();
        assert!(err.to_string().contains("c9"));
        assert!(Running.transition(Created, "c").is_err());
    }
}
