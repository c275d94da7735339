//! `RemovePodSandbox`: remove the pod's containers, stop the pod if needed, then remove
//! everything of it; unknown ids succeed.

use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn remove_pod_sandbox(
    daemon: &Daemon,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Error::InvalidArgument("pod sandbox id is required".into()));
    }
    daemon.remove_pod(&req.pod_sandbox_id).await?;
    Ok(RemovePodSandboxResponse {})
}
