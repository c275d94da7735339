//! `UpdateContainerResources`: the runtime's update; the new values show in ContainerStatus.

use k8s_cri::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn update_container_resources(
    daemon: &Daemon,
    req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse> {
    let linux = req
        .linux
        .ok_or_else(|| Error::InvalidArgument("linux resources are required".into()))?;
    daemon
        .containers()?
        .update(&req.container_id, linux)
        .await?;
    Ok(UpdateContainerResourcesResponse {})
}
