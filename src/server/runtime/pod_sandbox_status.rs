//! `PodSandboxStatus`: the record as CRI status; `verbose` adds the `info` JSON crictl shows.

use k8s_cri::v1::{PodSandboxStatusRequest, PodSandboxStatusResponse};
use serde_json::json;

use super::pod_sandbox::to_cri_status;
use crate::daemon::Daemon;
use crate::error::Result;

pub async fn pod_sandbox_status(
    daemon: &Daemon,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse> {
    let rec = daemon.sandboxes()?.resolve(&req.pod_sandbox_id)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let value = json!({
            "id": rec.id,
            "runDir": rec.run_dir,
            "netns": rec.ns_path("net"),
            "ipcns": rec.ns_path("ipc"),
            "utsns": rec.ns_path("uts"),
            "network": rec.network,
            "cniResult": rec.cni_result,
            "infraPid": rec.infra.map(|i| i.pid),
            "runtimeHandler": rec.spec.runtime_handler,
            "cgroupParent": rec.spec.cgroup_parent,
            "config": rec.spec,
        });
        info.insert("info".to_string(), value.to_string());
    }
    let timestamp = crate::util::now_ns();
    Ok(PodSandboxStatusResponse {
        status: Some(to_cri_status(&rec)),
        info,
        containers_statuses: Vec::new(),
        timestamp,
    })
}
