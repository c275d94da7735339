//! `RunPodSandbox`: validate the request, then create the pod (or join a retry of it).

use k8s_cri::v1::{RunPodSandboxRequest, RunPodSandboxResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::sandbox::spec::pod_spec;

pub async fn run_pod_sandbox(
    daemon: &Daemon,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse> {
    let spec = pod_spec(&req, &daemon.config)?;
    handler_installed(daemon, &spec.runtime_handler).await?;
    let config = req.config.clone().unwrap_or_default();
    let id = daemon.sandboxes()?.run(spec, config).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}

/// A pod whose handler's runtime is not installed could never run a container: it is refused
/// now, not at its first CreateContainer (as CRI-O, which will not start with such a runtime).
async fn handler_installed(daemon: &Daemon, handler: &str) -> Result<()> {
    let Some(h) = daemon.config.runtime.handlers.get(handler) else {
        return Ok(()); // pod_spec refused it already
    };
    match daemon.handler_binary(handler).await {
        Some(_) => Ok(()),
        None => Err(Error::FailedPrecondition(format!(
            "runtime handler {handler:?}: its runtime {} is not installed (looked up on PATH \
             unless absolute; set [runtime.handlers.{handler}] path)",
            h.path.display()
        ))),
    }
}
