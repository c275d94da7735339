//! `RuntimeConfig`: tells kubelet which cgroup driver to use.

use k8s_cri::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
};

use crate::config;
use crate::daemon::Daemon;
use crate::error::Result;

pub async fn runtime_config(
    daemon: &Daemon,
    _req: RuntimeConfigRequest,
) -> Result<RuntimeConfigResponse> {
    let driver = match daemon.config.runtime.cgroup_driver {
        config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        config::CgroupDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}
