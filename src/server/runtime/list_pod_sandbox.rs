//! `ListPodSandbox`: filter by id (or unique prefix), state and labels.

use k8s_cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse};

use super::pod_sandbox::{state_from_cri, to_cri_pod};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::sandbox::Filter;

pub async fn list_pod_sandbox(
    daemon: &Daemon,
    req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse> {
    let mut filter = Filter::default();
    if let Some(f) = req.filter {
        filter.id = f.id;
        filter.labels = f.label_selector;
        if let Some(s) = f.state {
            filter.state = Some(state_from_cri(s.state).ok_or_else(|| {
                Error::InvalidArgument(format!("unknown pod sandbox state {}", s.state))
            })?);
        }
    }
    let items = daemon
        .sandboxes()?
        .list(&filter)
        .iter()
        .map(|r| to_cri_pod(r))
        .collect();
    Ok(ListPodSandboxResponse { items })
}
