//! `PortForward`: checks that the pod is ready and returns a streaming URL for a port-forward
//! session into its network namespace (`crate::streaming::portforward`).

use k8s_cri::v1::{PortForwardRequest, PortForwardResponse};

use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::streaming::cache::Pending;

pub async fn port_forward(
    daemon: &Ctx,
    mut req: PortForwardRequest,
) -> Result<PortForwardResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Error::InvalidArgument("pod_sandbox_id is required".into()));
    }
    if let Some(port) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Error::InvalidArgument(format!(
            "port {port} is out of range 1-65535"
        )));
    }
    let target = daemon
        .sandboxes()?
        .port_forward_target(&req.pod_sandbox_id)?;
    req.pod_sandbox_id = target.pod_id;
    let url = daemon.streaming()?.url(Pending::PortForward(req))?;
    Ok(PortForwardResponse { url })
}
