//! `ContainerStats`: CPU, memory and writable layer of one container; unknown → `NotFound`.

use k8s_cri::v1::{ContainerStatsRequest, ContainerStatsResponse};

use super::stats::container_stats as to_cri;
use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn container_stats(
    daemon: &Daemon,
    req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse> {
    if req.container_id.is_empty() {
        return Err(Error::InvalidArgument("container id is required".into()));
    }
    let usage = daemon.containers()?.stats_of(&req.container_id).await?;
    let fs = daemon.images()?.store.dir().display().to_string();
    Ok(ContainerStatsResponse {
        stats: Some(to_cri(&usage, &fs)),
    })
}
