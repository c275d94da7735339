//! `ContainerStatus`: the record as CRI status; `verbose` adds what `crictl inspect` shows.

use k8s_cri::v1::{ContainerStatusRequest, ContainerStatusResponse};
use serde_json::json;

use super::container::to_cri_status;
use crate::daemon::Daemon;
use crate::error::Result;

pub async fn container_status(
    daemon: &Daemon,
    req: ContainerStatusRequest,
) -> Result<ContainerStatusResponse> {
    let rec = daemon.containers()?.status(&req.container_id).await?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let spec: serde_json::Value = tokio::fs::read(rec.bundle.join("config.json"))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let value = json!({
            "sandboxID": rec.pod_id,
            "pid": rec.pid,
            "monitorPid": rec.monitor_pid,
            "runtimeHandler": rec.runtime_handler,
            "bundle": rec.bundle,
            "monitorDir": rec.monitor_dir,
            "runtimeSpec": spec,
        });
        info.insert("info".to_string(), value.to_string());
    }
    Ok(ContainerStatusResponse {
        status: Some(to_cri_status(&rec)),
        info,
    })
}
