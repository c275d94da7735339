//! `RunPodSandbox`: validate the request, then create the pod (or join a retry of it).

use k8s_cri::v1::{RunPodSandboxRequest, RunPodSandboxResponse};

use crate::daemon::Daemon;
use crate::error::Result;
use crate::sandbox::spec::pod_spec;

pub async fn run_pod_sandbox(
    daemon: &Daemon,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse> {
    let spec = pod_spec(&req, &daemon.config)?;
    let config = req.config.clone().unwrap_or_default();
    let id = daemon.sandboxes()?.run(spec, config).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}
