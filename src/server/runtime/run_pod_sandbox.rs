//! `RunPodSandbox`: validate the request, then create the pod (or join a retry of it).

use base64::Engine as _;
use k8s_cri::v1::{RunPodSandboxRequest, RunPodSandboxResponse};
use prost::Message as _;

use crate::daemon::Daemon;
use crate::error::Result;
use crate::sandbox::spec::pod_spec;

pub async fn run_pod_sandbox(
    daemon: &Daemon,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse> {
    let spec = pod_spec(&req, &daemon.config)?;
    let config_pb = req
        .config
        .as_ref()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.encode_to_vec()))
        .unwrap_or_default();
    let id = daemon.sandboxes()?.run(spec, config_pb).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}
