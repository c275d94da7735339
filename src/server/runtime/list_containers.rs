//! `ListContainers`: filter by id prefix, pod, state and labels.

use k8s_cri::v1::{ListContainersRequest, ListContainersResponse};

use super::container::{state_from_cri, to_cri_container};
use crate::container::Filter;
use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn list_containers(
    daemon: &Daemon,
    req: ListContainersRequest,
) -> Result<ListContainersResponse> {
    let mut filter = Filter::default();
    if let Some(f) = req.filter {
        filter.id = f.id;
        filter.pod_id = f.pod_sandbox_id;
        filter.labels = f.label_selector;
        if let Some(s) = f.state {
            match state_from_cri(s.state) {
                Some(Some(state)) => filter.state = Some(state),
                Some(None) => return Ok(ListContainersResponse::default()),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown container state {}",
                        s.state
                    )))
                }
            }
        }
    }
    let containers = daemon
        .containers()?
        .list(&filter)
        .await?
        .iter()
        .map(|r| to_cri_container(r))
        .collect();
    Ok(ListContainersResponse { containers })
}
