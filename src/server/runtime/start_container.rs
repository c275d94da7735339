//! `StartContainer`: the runtime's start of a created container.

use k8s_cri::v1::{StartContainerRequest, StartContainerResponse};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn start_container(
    daemon: &Daemon,
    req: StartContainerRequest,
) -> Result<StartContainerResponse> {
    daemon.containers()?.start(&req.container_id).await?;
    Ok(StartContainerResponse {})
}
