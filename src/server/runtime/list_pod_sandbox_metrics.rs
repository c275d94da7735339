//! `ListPodSandboxMetrics`: every pod's and container's metrics, from the snapshot the
//! container domain refreshes once a second while metrics are asked for.

use k8s_cri::v1::{ListPodSandboxMetricsRequest, ListPodSandboxMetricsResponse};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn list_pod_sandbox_metrics(
    daemon: &Daemon,
    _req: ListPodSandboxMetricsRequest,
) -> Result<ListPodSandboxMetricsResponse> {
    let usages = daemon.containers()?.pod_metrics().await?;
    Ok(ListPodSandboxMetricsResponse {
        pod_metrics: usages.iter().map(super::pod_metrics::pod_metrics).collect(),
    })
}
