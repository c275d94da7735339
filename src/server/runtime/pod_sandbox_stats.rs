//! `PodSandboxStats`: CPU, memory, network and processes of one pod, with its containers';
//! unknown → `NotFound`.

use k8s_cri::v1::{PodSandboxStatsRequest, PodSandboxStatsResponse};

use super::stats::pod_stats as to_cri;
use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn pod_sandbox_stats(
    daemon: &Daemon,
    req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Error::InvalidArgument("pod sandbox id is required".into()));
    }
    let pod = daemon.sandboxes()?.resolve(&req.pod_sandbox_id)?;
    let usage = daemon.containers()?.pod_stats(vec![pod]).await?;
    let fs = daemon.images()?.store.dir().display().to_string();
    Ok(PodSandboxStatsResponse {
        stats: usage.first().map(|u| to_cri(u, &fs)),
    })
}
