//! `ExecSync`: run a command in a running container, bounded output, honouring the timeout.

use std::time::Duration;

use k8s_cri::v1::{ExecSyncRequest, ExecSyncResponse};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn exec_sync(daemon: &Daemon, req: ExecSyncRequest) -> Result<ExecSyncResponse> {
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    let out = daemon
        .containers()?
        .exec_sync(&req.container_id, &req.cmd, timeout)
        .await?;
    Ok(ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}
