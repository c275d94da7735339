//! `ListContainerStats`: stats of the containers selected by id prefix, pod and labels.

use k8s_cri::v1::{ListContainerStatsRequest, ListContainerStatsResponse};

use super::stats::container_stats as to_cri;
use crate::container::Filter;
use crate::daemon::Daemon;
use crate::error::Result;

pub async fn list_container_stats(
    daemon: &Daemon,
    req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse> {
    let mut filter = Filter::default();
    if let Some(f) = req.filter {
        filter.id = f.id;
        filter.pod_id = f.pod_sandbox_id;
        filter.labels = f.label_selector;
    }
    let usages = daemon.containers()?.stats(&filter).await?;
    let fs = daemon.images()?.store.dir().display().to_string();
    Ok(ListContainerStatsResponse {
        stats: usages.iter().map(|u| to_cri(u, &fs)).collect(),
    })
}
