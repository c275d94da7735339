//! `CheckpointContainer`: refused with the reason. Checkpointing needs CRIU, and the CRIU of
//! Debian 12 (3.17) cannot initialise on the kernels crius runs on: its vDSO detection fails,
//! so `criu check` and every dump abort before touching the container.

use k8s_cri::v1::{CheckpointContainerRequest, CheckpointContainerResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

/// Why checkpoints are refused (see docs/containers.md, "Checkpoints").
pub const WHY: &str = "checkpoints need CRIU, and Debian 12's criu 3.17 cannot initialise \
     on this kernel (its vDSO detection fails)";

pub async fn checkpoint_container(
    _daemon: &Daemon,
    _req: CheckpointContainerRequest,
) -> Result<CheckpointContainerResponse> {
    Err(Error::Unsupported("CheckpointContainer", WHY))
}
