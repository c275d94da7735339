//! `UpdateRuntimeConfig`: kubelet hands over the node's pod CIDR; crius keeps it (persisted).

use k8s_cri::v1::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn update_runtime_config(
    daemon: &Daemon,
    req: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    // An empty CIDR carries no information; the one we have is kept.
    if !cidr.is_empty() {
        for part in cidr.split(',') {
            if !valid_cidr(part.trim()) {
                return Err(Error::InvalidArgument(format!(
                    "pod cidr {part:?} is not a CIDR"
                )));
            }
        }
        daemon.set_pod_cidr(&cidr).await?;
    }
    Ok(UpdateRuntimeConfigResponse {})
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().is_ok_and(|l| l <= max)
}

#[cfg(test)]
mod tests {
    use super::valid_cidr;

    #[test]
    fn cidrs() {
        assert!(valid_cidr("10.88.0.0/16"));
        assert!(valid_cidr("fd00::/64"));
        assert!(!valid_cidr("10.88.0.0"));
        assert!(!valid_cidr("10.88.0.0/33"));
        assert!(!valid_cidr("x/8"));
    }
}
