//! `ListPodSandboxStats`: stats of the pods selected by id prefix and labels.

use k8s_cri::v1::{ListPodSandboxStatsRequest, ListPodSandboxStatsResponse};

use super::stats::pod_stats as to_cri;
use crate::daemon::Daemon;
use crate::error::Result;
use crate::sandbox::Filter;

pub async fn list_pod_sandbox_stats(
    daemon: &Daemon,
    req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse> {
    let mut filter = Filter::default();
    if let Some(f) = req.filter {
        filter.id = f.id;
        filter.labels = f.label_selector;
    }
    let pods = daemon.sandboxes()?.list(&filter);
    let usages = daemon.containers()?.pod_stats(pods).await?;
    let fs = daemon.images()?.store.dir().display().to_string();
    Ok(ListPodSandboxStatsResponse {
        stats: usages.iter().map(|u| to_cri(u, &fs)).collect(),
    })
}
