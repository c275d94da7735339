//! TEMPORARY compile stub (replaced by the spec generator branch).
#![allow(dead_code, missing_docs)]
use std::path::PathBuf;
pub struct ImageView {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}
pub struct PodView<'a> {
    pub sandbox_id: &'a str,
    pub config: &'a k8s_cri::v1::PodSandboxConfig,
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub pidns: Option<PathBuf>,
    pub hostname: String,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    pub shm: Option<PathBuf>,
    pub cgroup_parent: String,
}
#[derive(Debug, Clone)]
pub struct HostDevice {
    pub path: PathBuf,
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}
#[derive(Debug, Clone)]
pub struct HostView {
    pub capabilities: Vec<String>,
    pub apparmor: bool,
    pub selinux: bool,
    pub min_oom_score_adj: i64,
    pub cgroup_v2: bool,
    pub devices: Vec<HostDevice>,
}
pub struct SpecInput<'a> {
    pub container_id: &'a str,
    pub config: &'a k8s_cri::v1::ContainerConfig,
    pub pod: PodView<'a>,
    pub image: &'a ImageView,
    pub rootfs: PathBuf,
    pub etc_passwd: Option<String>,
    pub etc_group: Option<String>,
    pub seccomp_localhost: Option<String>,
    pub target_pidns: Option<PathBuf>,
    pub host: &'a HostView,
}
pub struct ResolvedUser {
    pub uid: i64,
    pub gid: i64,
    pub additional_gids: Vec<i64>,
    pub username: String,
}
pub struct Generated {
    pub spec: oci_spec::runtime::Spec,
    pub user: ResolvedUser,
    pub stop_signal: i32,
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct SpecError;
impl From<SpecError> for crate::error::Error {
    fn from(_: SpecError) -> Self {
        crate::error::Error::Internal("stub".into())
    }
}
pub fn generate(_input: &SpecInput) -> Result<Generated, SpecError> {
    Err(SpecError)
}
