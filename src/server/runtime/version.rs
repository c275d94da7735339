//! `Version`: names the runtime and the CRI API it speaks.

use k8s_cri::v1::{VersionRequest, VersionResponse};

use crate::daemon::Daemon;
use crate::error::Result;

/// Version of the kubelet-runtime API, as CRI-O and containerd report it.
const KUBE_API_VERSION: &str = "0.1.0";

pub async fn version(_daemon: &Daemon, _req: VersionRequest) -> Result<VersionResponse> {
    Ok(VersionResponse {
        version: KUBE_API_VERSION.into(),
        runtime_name: "crius".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    })
}
