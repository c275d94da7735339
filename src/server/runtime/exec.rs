//! `Exec`: validates the request and returns a streaming URL; the session runs when the client
//! connects there (`crate::streaming`).

use k8s_cri::v1::{ExecRequest, ExecResponse};

use super::attach::check_streams;
use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::streaming::cache::Pending;

pub async fn exec(daemon: &Ctx, mut req: ExecRequest) -> Result<ExecResponse> {
    if req.container_id.is_empty() {
        return Err(Error::InvalidArgument("container_id is required".into()));
    }
    crate::container::validate::exec_cmd(&req.cmd)?;
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    let rec = daemon.containers()?.running(&req.container_id).await?;
    req.container_id = rec.id.clone();
    let url = daemon.streaming()?.url(Pending::Exec(req))?;
    Ok(ExecResponse { url })
}
