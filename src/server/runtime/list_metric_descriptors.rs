//! `ListMetricDescriptors`: the metrics `ListPodSandboxMetrics` returns.

use k8s_cri::v1::{ListMetricDescriptorsRequest, ListMetricDescriptorsResponse};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn list_metric_descriptors(
    _daemon: &Daemon,
    _req: ListMetricDescriptorsRequest,
) -> Result<ListMetricDescriptorsResponse> {
    Ok(ListMetricDescriptorsResponse {
        descriptors: super::pod_metrics::descriptors(),
    })
}
