//! `RemoveContainer`: kill if running, then remove everything; missing containers succeed.

use k8s_cri::v1::{RemoveContainerRequest, RemoveContainerResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn remove_container(
    daemon: &Daemon,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse> {
    if req.container_id.is_empty() {
        return Err(Error::InvalidArgument("container id is required".into()));
    }
    daemon.containers()?.remove(&req.container_id).await?;
    Ok(RemoveContainerResponse {})
}
