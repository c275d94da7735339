//! `StopContainer`: stop signal, timeout, SIGKILL; stopped or missing containers succeed.

use std::time::Duration;

use k8s_cri::v1::{StopContainerRequest, StopContainerResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn stop_container(
    daemon: &Daemon,
    req: StopContainerRequest,
) -> Result<StopContainerResponse> {
    if req.container_id.is_empty() {
        return Err(Error::InvalidArgument("container id is required".into()));
    }
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    daemon
        .containers()?
        .stop(&req.container_id, timeout)
        .await?;
    Ok(StopContainerResponse {})
}
