//! `Attach`: validates the request and returns a streaming URL for the container's monitor
//! attach socket (`crate::streaming`).

use k8s_cri::v1::{AttachRequest, AttachResponse};

use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::streaming::cache::Pending;

/// The stream flags kubelet's streaming server accepts.
pub fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}

pub async fn attach(daemon: &Ctx, mut req: AttachRequest) -> Result<AttachResponse> {
    if req.container_id.is_empty() {
        return Err(Error::InvalidArgument("container_id is required".into()));
    }
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    let rec = daemon.containers()?.running(&req.container_id).await?;
    if req.tty && !rec.tty {
        return Err(Error::InvalidArgument(format!(
            "container {} has no terminal: attach with tty=false",
            rec.id
        )));
    }
    req.container_id = rec.id.clone();
    let url = daemon.streaming()?.url(Pending::Attach(req))?;
    Ok(AttachResponse { url })
}
