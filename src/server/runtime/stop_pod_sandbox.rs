//! `StopPodSandbox`: stop the pod's containers, then release its network and namespaces;
//! unknown ids succeed.

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn stop_pod_sandbox(
    daemon: &Daemon,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Error::InvalidArgument("pod sandbox id is required".into()));
    }
    daemon.stop_pod(&req.pod_sandbox_id).await?;
    Ok(StopPodSandboxResponse {})
}
