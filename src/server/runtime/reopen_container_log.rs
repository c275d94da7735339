//! `ReopenContainerLog`: the monitor reopens the CRI log (after kubelet rotated it).

use k8s_cri::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn reopen_container_log(
    daemon: &Daemon,
    req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse> {
    daemon.containers()?.reopen_log(&req.container_id).await?;
    Ok(ReopenContainerLogResponse {})
}
