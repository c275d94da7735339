//! CRI container config + image config + pod → OCI runtime spec (`config.json`).
//!
//! One pure function, [`generate`]: everything it needs comes in as values in a [`SpecInput`]
//! (the pod's pinned namespaces and files, the image's `/etc/passwd` and `/etc/group`, the
//! Localhost seccomp profile, the host's devices and capabilities). It must not touch the
//! filesystem, run syscalls or read the clock; whatever it cannot accept is an
//! `InvalidArgument` naming the field. Semantics and defaults are documented in
//! `docs/containers-spec.md`; the golden files under `spec/golden/` pin the output.
//!
//! One submodule per concern: `process` (argv, env, cwd, stop signal), `user` (uid/gid and
//! supplemental groups), `mounts` (mounts and devices), `security` (capabilities, masked paths,
//! AppArmor, SELinux), `seccomp` (profile choice and the built-in default profile), `linux`
//! (namespaces, resources, cgroups path, sysctls).

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxBuilder, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};

use crate::error::{Error, ErrorKind};

mod linux;
mod mounts;
mod process;
mod seccomp;
mod security;
mod user;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

pub use linux::{cgroups_path, linux_resources};
pub use mounts::is_image_volume;
pub use process::parse_signal;
pub use seccomp::{default_profile, localhost_profile_path};
pub use security::DEFAULT_CAPABILITIES;
pub use user::ResolvedUser;

/// Annotation keys crius adds to every container spec.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// `RLIMIT_NOFILE` soft and hard limit of the container process (CRI-O's default), cut to
/// [`HostView::max_nofile`].
pub const NOFILE_LIMIT: u64 = 1_048_576;

/// What the spec needs from the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageView {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty = root.
    pub user: String,
    /// `SIGTERM`, `TERM`, `15`; empty = SIGTERM.
    pub stop_signal: String,
}

/// What the spec needs from the pod sandbox.
#[derive(Debug, Clone)]
pub struct PodView<'a> {
    pub sandbox_id: &'a str,
    /// The pod's CRI config (security context, namespace options, sysctls, user namespace).
    pub config: &'a cri::PodSandboxConfig,
    /// Pinned pod namespaces to join; `None` = the host's (the namespace is omitted).
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// `/proc/<infra pid>/ns/pid` when the pod has a PID namespace (`NamespaceMode::POD`).
    pub pidns: Option<PathBuf>,
    /// The pod's user namespace to join (`/proc/<infra pid>/ns/user`) when the pod has one;
    /// `None` with uid/gid mappings in `config` = the runtime creates one with the mappings.
    pub userns: Option<PathBuf>,
    pub hostname: String,
    /// Pod files bind-mounted into the container; `None` = not mounted.
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// The pod's `/dev/shm`; `None` = host IPC (the host's `/dev/shm` is mounted).
    pub shm: Option<PathBuf>,
    /// The pod's cgroupfs path (systemd slices already expanded); may be empty.
    pub cgroup_parent: String,
}

/// A device node of the host, as the caller found it under `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: i64,
    pub minor: i64,
    /// Permission bits (`st_mode & 0o7777`).
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// What the host allows; gathered once by the caller.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// What crius may grant: the daemon's bounding set (`CAP_CHOWN`, ...). Privileged
    /// containers get all of these.
    pub capabilities: Vec<String>,
    /// Whether AppArmor is enabled in the kernel; profiles are ignored otherwise.
    pub apparmor: bool,
    /// The loaded AppArmor profile used for `RuntimeDefault`; `None` = unconfined.
    pub apparmor_default: Option<String>,
    /// Whether SELinux is enabled; labels are ignored otherwise.
    pub selinux: bool,
    /// The lowest `oom_score_adj` crius may set (its own, without `CAP_SYS_RESOURCE`).
    pub min_oom_score_adj: i64,
    /// crius' own hard `RLIMIT_NOFILE`: without `CAP_SYS_RESOURCE` the runtime cannot give the
    /// container more, so [`NOFILE_LIMIT`] is cut to it. `None` = not cut.
    pub max_nofile: Option<u64>,
    pub cgroup_v2: bool,
    /// Device nodes of the host: all of them go to privileged containers; CRI devices are
    /// looked up here by path.
    pub devices: Vec<HostDevice>,
    /// `std::env::consts::ARCH`: picks the seccomp architectures of the default profile.
    pub arch: String,
    /// The runtime handler can idmap bind mounts (crun; runc from 1.2): CRI mounts of a pod
    /// with a user namespace get the pod's mappings so that volumes stay usable.
    pub idmap_mounts: bool,
    /// `[runtime] pids_limit`: > 0 caps every container's pids cgroup; 0 = no limit.
    pub pids_limit: i64,
    /// `[runtime] seccomp_use_default_when_empty`: a container without any seccomp profile
    /// gets `RuntimeDefault` instead of running unconfined.
    pub seccomp_use_default_when_empty: bool,
}

/// Everything [`generate`] reads.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub container_id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub pod: PodView<'a>,
    pub image: &'a ImageView,
    /// The mounted rootfs (spec `root.path`).
    pub rootfs: PathBuf,
    /// Contents of the image's `/etc/passwd` and `/etc/group`, for name resolution.
    pub etc_passwd: Option<String>,
    pub etc_group: Option<String>,
    /// Contents of the Localhost seccomp profile when one is requested (see
    /// [`localhost_profile_path`]); `None` = the file could not be read.
    pub seccomp_localhost: Option<String>,
    /// For `NamespaceMode::TARGET`: the target container's `/proc/<pid>/ns/pid`.
    pub target_pidns: Option<PathBuf>,
    pub host: &'a HostView,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generated {
    pub spec: Spec,
    /// The identity of the container process (for `ContainerStatus.user`).
    pub user: ResolvedUser,
    /// The image's stop signal as a number (SIGTERM when unset).
    pub stop_signal: i32,
    /// The CRI mounts as applied (for `ContainerStatus.mounts`).
    pub mounts: Vec<cri::Mount>,
}

/// Why a spec could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request (or the image config) asks for something invalid; names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the request refers to does not exist (a Localhost seccomp profile).
    #[error("{0}")]
    NotFound(String),
    /// A bug or a broken built-in (the default seccomp profile, the spec builder).
    #[error("{0}")]
    Internal(String),
}

impl SpecError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpecError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            SpecError::NotFound(_) => ErrorKind::NotFound,
            SpecError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Error {
        match e {
            SpecError::InvalidArgument(m) => Error::InvalidArgument(m),
            SpecError::NotFound(m) => Error::NotFound(m),
            SpecError::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> SpecError {
        SpecError::Internal(format!("building the oci spec: {e}"))
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::InvalidArgument(msg.into())
}

/// Builds the OCI runtime spec of a container. Pure.
pub fn generate(input: &SpecInput) -> Result<Generated, SpecError> {
    let config = input.config;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("container metadata is required"))?;
    if meta.name.is_empty() {
        return Err(invalid("container metadata.name is required"));
    }
    let default_sc = cri::LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let pod_sc = input
        .pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = sc.privileged;
    if privileged && !pod_sc.is_some_and(|p| p.privileged) {
        return Err(invalid(format!(
            "security_context.privileged: pod sandbox {} is not privileged",
            input.pod.sandbox_id
        )));
    }

    let args = process::argv(config, input.image)?;
    let env = process::env(config, input.image, &input.pod.hostname)?;
    let cwd = process::cwd(config, input.image)?;
    let stop_signal = process::stop_signal(&input.image.stop_signal)?;
    let resolved = user::resolve(
        sc,
        &input.image.user,
        input.etc_passwd.as_deref(),
        input.etc_group.as_deref(),
    )?;

    let caps = security::capabilities(sc, input.host, privileged)?;
    let apparmor = security::apparmor(sc, input.host, privileged)?;
    let (selinux_label, mount_label) = security::selinux(
        pod_sc.and_then(|p| p.selinux_options.as_ref()),
        sc.selinux_options.as_ref(),
        input.host,
        privileged,
    );
    let when_empty = if input.host.seccomp_use_default_when_empty {
        seccomp::WhenEmpty::RuntimeDefault
    } else {
        seccomp::WhenEmpty::Unconfined
    };
    let seccomp = seccomp::for_container(
        sc,
        privileged,
        when_empty,
        input.seccomp_localhost.as_deref(),
        &caps,
        &input.host.arch,
    )?;

    let namespaces = linux::namespaces(input, sc)?;
    let pod_idmap = match (&namespaces.uid_mappings, &namespaces.gid_mappings) {
        (Some(uids), Some(gids)) if input.host.idmap_mounts => {
            Some((uids.as_slice(), gids.as_slice()))
        }
        _ => None,
    };
    let planned = mounts::plan(input, privileged, pod_idmap)?;
    let (devices, device_rules) = mounts::devices(config, input.host, privileged)?;
    let default_resources = cri::LinuxContainerResources::default();
    let cri_resources = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .unwrap_or(&default_resources);
    let mut resources = linux::linux_resources(cri_resources, input.host.cgroup_v2)?;
    resources.set_devices(Some(device_rules));
    if input.host.pids_limit > 0 {
        resources.set_pids(Some(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(input.host.pids_limit)
                .build()?,
        ));
    }
    let oom_score_adj = linux::oom_score_adj(cri_resources.oom_score_adj, input.host);
    let sysctl = linux::sysctls(&input.pod)?;
    let nofile = input
        .host
        .max_nofile
        .map_or(NOFILE_LIMIT, |max| max.min(NOFILE_LIMIT));
    let (masked, readonly) = security::masked_and_readonly_paths(sc, privileged);

    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    user.set_additional_gids(Some(resolved.additional_gids.clone()));

    let mut process = Process::default();
    process
        .set_terminal(Some(config.tty))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(args))
        .set_command_line(None)
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(security::capability_sets(caps)))
        .set_rlimits(Some(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(nofile)
            .hard(nofile)
            .build()?]))
        .set_no_new_privileges(Some(sc.no_new_privs))
        .set_apparmor_profile(apparmor)
        .set_oom_score_adj(Some(oom_score_adj))
        .set_selinux_label(selinux_label)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces.list)
        .devices(devices)
        .resources(resources)
        .cgroups_path(linux::cgroups_path(
            &input.pod.cgroup_parent,
            input.container_id,
        ))
        .build()?;
    linux
        .set_uid_mappings(namespaces.uid_mappings)
        .set_gid_mappings(namespaces.gid_mappings)
        .set_sysctl((!sysctl.is_empty()).then_some(sysctl))
        .set_masked_paths((!masked.is_empty()).then_some(masked))
        .set_readonly_paths((!readonly.is_empty()).then_some(readonly))
        .set_seccomp(seccomp)
        .set_mount_label(mount_label)
        .set_rootfs_propagation(planned.rootfs_propagation);

    let mut root = Root::default();
    root.set_path(input.rootfs.clone());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    annotations.insert(ANNOTATION_CONTAINER_TYPE.into(), "container".into());
    annotations.insert(ANNOTATION_SANDBOX_ID.into(), input.pod.sandbox_id.into());
    annotations.insert(ANNOTATION_CONTAINER_NAME.into(), meta.name.clone());

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string())
        .set_root(Some(root))
        .set_mounts(Some(planned.mounts))
        .set_process(Some(process))
        .set_hostname(
            input
                .pod
                .utsns
                .is_some()
                .then(|| input.pod.hostname.clone())
                .filter(|h| !h.is_empty()),
        )
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));

    Ok(Generated {
        spec,
        user: resolved,
        stop_signal,
        mounts: planned.cri_mounts,
    })
}

/// The spec as `config.json` bytes with a stable order (object keys and capability sets
/// sorted), so that the same input always gives the same file.
pub fn config_json(spec: &Spec) -> Result<String, SpecError> {
    let value = serde_json::to_value(spec)
        .map_err(|e| SpecError::Internal(format!("serializing the oci spec: {e}")))?;
    let mut out = serde_json::to_string_pretty(&canonical(value, false))
        .map_err(|e| SpecError::Internal(format!("serializing the oci spec: {e}")))?;
    out.push('\n');
    Ok(out)
}

/// Sorts object keys everywhere and the arrays under `capabilities` (sets in the spec).
fn canonical(value: serde_json::Value, in_capabilities: bool) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let caps = in_capabilities || k == "capabilities";
                        (k, canonical(v, caps))
                    })
                    .collect(),
            )
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(|v| canonical(v, false)).collect();
            if in_capabilities {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            Value::Array(items)
        }
        other => other,
    }
}
