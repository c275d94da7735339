//! Shared conversions of container records to CRI messages (status and list handlers).

use k8s_cri::v1 as cri;

use crate::container::{config_of, resources_of, ContainerRecord, ContainerState};

pub fn state_to_cri(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

pub fn state_from_cri(state: i32) -> Option<Option<ContainerState>> {
    Some(match cri::ContainerState::try_from(state).ok()? {
        cri::ContainerState::ContainerCreated => Some(ContainerState::Created),
        cri::ContainerState::ContainerRunning => Some(ContainerState::Running),
        cri::ContainerState::ContainerExited => Some(ContainerState::Exited),
        // Nothing is ever unknown to crius: the filter matches nothing.
        cri::ContainerState::ContainerUnknown => None,
    })
}

pub fn metadata(rec: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: rec.name.clone(),
        attempt: rec.attempt,
    }
}

fn image_spec(rec: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: rec.image.clone(),
        ..Default::default()
    }
}

pub fn to_cri_container(rec: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.pod_id.clone(),
        metadata: Some(metadata(rec)),
        image: Some(image_spec(rec)),
        image_ref: rec.image_ref.clone(),
        state: state_to_cri(rec.state),
        created_at: rec.created_at,
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
        image_id: rec.image_id.clone(),
    }
}

/// The CRI mounts as requested; an image volume's `image` names the resolved image ref, the
/// image as requested is its `user_specified_image`.
fn status_mounts(rec: &ContainerRecord, mounts: Vec<cri::Mount>) -> Vec<cri::Mount> {
    let mut volumes = rec.image_volumes.iter();
    mounts
        .into_iter()
        .map(|mut m| {
            if crate::container::spec::is_image_volume(&m) {
                if let (Some(v), Some(image)) = (volumes.next(), m.image.as_mut()) {
                    if image.user_specified_image.is_empty() {
                        image.user_specified_image = image.image.clone();
                    }
                    image.image = v.image_ref.clone();
                }
            }
            m
        })
        .collect()
}

pub fn to_cri_status(rec: &ContainerRecord) -> cri::ContainerStatus {
    let config = config_of(rec);
    cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: state_to_cri(rec.state),
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(image_spec(rec)),
        image_ref: rec.image_ref.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
        mounts: status_mounts(rec, config.mounts),
        log_path: rec.log_path.to_string_lossy().into_owned(),
        resources: Some(cri::ContainerResources {
            linux: Some(resources_of(rec)),
            windows: None,
        }),
        image_id: rec.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: rec.user.uid,
                gid: rec.user.gid,
                supplemental_groups: rec.user.supplemental_groups.clone(),
            }),
        }),
    }
}
