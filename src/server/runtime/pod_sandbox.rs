//! Shared conversions of pod sandbox records to CRI messages (used by the status and list
//! handlers). No domain logic.

use k8s_cri::v1 as cri;

use crate::sandbox::record::SandboxRecord;
use crate::sandbox::SandboxState;

pub fn state_to_cri(state: SandboxState) -> i32 {
    match state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub fn state_from_cri(state: i32) -> Option<SandboxState> {
    match cri::PodSandboxState::try_from(state).ok()? {
        cri::PodSandboxState::SandboxReady => Some(SandboxState::Ready),
        cri::PodSandboxState::SandboxNotready => Some(SandboxState::NotReady),
    }
}

pub fn metadata(rec: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: rec.spec.name.clone(),
        uid: rec.spec.uid.clone(),
        namespace: rec.spec.namespace.clone(),
        attempt: rec.spec.attempt,
    }
}

pub fn to_cri_pod(rec: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: state_to_cri(rec.state),
        created_at: rec.created_at,
        labels: rec.spec.labels.clone().into_iter().collect(),
        annotations: rec.spec.annotations.clone().into_iter().collect(),
        runtime_handler: rec.spec.runtime_handler.clone(),
    }
}

pub fn to_cri_status(rec: &SandboxRecord) -> cri::PodSandboxStatus {
    let ns = &rec.spec.namespaces;
    let network = (!rec.spec.host_network()).then(|| cri::PodSandboxNetworkStatus {
        ip: rec.ips.first().cloned().unwrap_or_default(),
        additional_ips: rec
            .ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    });
    cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: state_to_cri(rec.state),
        created_at: rec.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: ns.network.to_cri(),
                    pid: ns.pid.to_cri(),
                    ipc: ns.ipc.to_cri(),
                    target_id: ns.target_id.clone(),
                    userns_options: None,
                }),
            }),
        }),
        labels: rec.spec.labels.clone().into_iter().collect(),
        annotations: rec.spec.annotations.clone().into_iter().collect(),
        runtime_handler: rec.spec.runtime_handler.clone(),
    }
}
