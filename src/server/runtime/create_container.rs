//! `CreateContainer`: rootfs, OCI spec and monitor for a container in a ready pod.

use k8s_cri::v1::{CreateContainerRequest, CreateContainerResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn create_container(
    daemon: &Daemon,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Error::InvalidArgument("pod sandbox id is required".into()));
    }
    let id = daemon.create_container(req).await?;
    Ok(CreateContainerResponse { container_id: id })
}
