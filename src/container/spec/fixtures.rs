//! Test inputs: a kubelet-like busybox container in a pod with its own namespaces, on a
//! cgroup v2 x86_64 host whose bounding set lacks `CAP_SYS_RESOURCE`. Tests change fields.

use std::path::PathBuf;

use k8s_cri::v1 as cri;

use super::{DeviceKind, HostDevice, HostView, ImageView, PodView, SpecInput};

pub(super) const CONTAINER_ID: &str = "c0ffee";
pub(super) const SANDBOX_ID: &str = "5a4d";

/// Every capability of Linux 6.x but `CAP_SYS_RESOURCE`.
pub(super) const HOST_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub(super) const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
app:x:1000:1000:App:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

pub(super) const GROUP: &str = "root:x:0:\n\
wheel:x:10:root,app\n\
audio:x:29:app\n\
app:x:1000:\n\
nogroup:x:65534:\n";

/// Owned inputs; [`Case::input`] borrows them as a [`SpecInput`].
pub(super) struct Case {
    pub config: cri::ContainerConfig,
    pub pod_config: cri::PodSandboxConfig,
    pub image: ImageView,
    pub host: HostView,
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub pidns: Option<PathBuf>,
    pub userns: Option<PathBuf>,
    pub hostname: String,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    pub shm: Option<PathBuf>,
    pub cgroup_parent: String,
    pub etc_passwd: Option<String>,
    pub etc_group: Option<String>,
    pub seccomp_localhost: Option<String>,
    pub target_pidns: Option<PathBuf>,
}

fn pod_file(name: &str) -> Option<PathBuf> {
    Some(PathBuf::from(format!(
        "/run/crius/pods/{SANDBOX_ID}/{name}"
    )))
}

pub(super) fn ns_mode(mode: cri::NamespaceMode) -> i32 {
    mode as i32
}

impl Case {
    pub fn busybox() -> Case {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "main".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "docker.io/library/busybox:1.36".into(),
                ..Default::default()
            }),
            labels: [(
                "io.kubernetes.container.name".to_string(),
                "main".to_string(),
            )]
            .into(),
            annotations: [(
                "io.kubernetes.container.restartCount".to_string(),
                "0".to_string(),
            )]
            .into(),
            log_path: "main/0.log".into(),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_shares: 2,
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: ns_mode(cri::NamespaceMode::Pod),
                        pid: ns_mode(cri::NamespaceMode::Container),
                        ipc: ns_mode(cri::NamespaceMode::Pod),
                        ..Default::default()
                    }),
                    run_as_user: Some(cri::Int64Value { value: 0 }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let pod_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "busybox".into(),
                uid: "0b5e".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "busybox".into(),
            log_directory: "/var/log/pods/default_busybox_0b5e".into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: ns_mode(cri::NamespaceMode::Pod),
                        pid: ns_mode(cri::NamespaceMode::Container),
                        ipc: ns_mode(cri::NamespaceMode::Pod),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let dev = |path: &str, kind, major, minor, file_mode| HostDevice {
            path: path.into(),
            kind,
            major,
            minor,
            file_mode,
            uid: 0,
            gid: 0,
        };
        Case {
            config,
            pod_config,
            image: ImageView {
                entrypoint: vec![],
                cmd: vec!["sh".into()],
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                working_dir: String::new(),
                user: String::new(),
                stop_signal: String::new(),
            },
            host: HostView {
                capabilities: HOST_CAPS.iter().map(|s| s.to_string()).collect(),
                apparmor: false,
                apparmor_default: None,
                selinux: false,
                min_oom_score_adj: -999,
                max_nofile: None,
                cgroup_v2: true,
                devices: vec![
                    dev("/dev/null", DeviceKind::Char, 1, 3, 0o666),
                    dev("/dev/zero", DeviceKind::Char, 1, 5, 0o666),
                    dev("/dev/fuse", DeviceKind::Char, 10, 229, 0o666),
                    dev("/dev/sda", DeviceKind::Block, 8, 0, 0o660),
                    dev("/dev/pts/0", DeviceKind::Char, 136, 0, 0o620),
                ],
                arch: "x86_64".into(),
                idmap_mounts: false,
                pids_limit: 0,
                seccomp_use_default_when_empty: false,
            },
            netns: pod_file("ns/net"),
            ipcns: pod_file("ns/ipc"),
            utsns: pod_file("ns/uts"),
            pidns: None,
            userns: None,
            hostname: "busybox".into(),
            resolv_conf: pod_file("resolv.conf"),
            hosts: pod_file("hosts"),
            hostname_file: pod_file("hostname"),
            shm: pod_file("shm"),
            cgroup_parent: String::new(),
            etc_passwd: Some(PASSWD.into()),
            etc_group: Some(GROUP.into()),
            seccomp_localhost: None,
            target_pidns: None,
        }
    }

    pub fn input(&self) -> SpecInput<'_> {
        SpecInput {
            container_id: CONTAINER_ID,
            config: &self.config,
            pod: PodView {
                sandbox_id: SANDBOX_ID,
                config: &self.pod_config,
                netns: self.netns.clone(),
                ipcns: self.ipcns.clone(),
                utsns: self.utsns.clone(),
                pidns: self.pidns.clone(),
                userns: self.userns.clone(),
                hostname: self.hostname.clone(),
                resolv_conf: self.resolv_conf.clone(),
                hosts: self.hosts.clone(),
                hostname_file: self.hostname_file.clone(),
                shm: self.shm.clone(),
                cgroup_parent: self.cgroup_parent.clone(),
            },
            image: &self.image,
            rootfs: PathBuf::from(format!("/var/lib/crius/containers/{CONTAINER_ID}/rootfs")),
            etc_passwd: self.etc_passwd.clone(),
            etc_group: self.etc_group.clone(),
            seccomp_localhost: self.seccomp_localhost.clone(),
            target_pidns: self.target_pidns.clone(),
            host: &self.host,
        }
    }

    /// The container's security context, created if missing.
    pub fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    pub fn pod_sc(&mut self) -> &mut cri::LinuxSandboxSecurityContext {
        self.pod_config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    pub fn resources(&mut self) -> &mut cri::LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    /// kubelet's explicit `Unconfined` seccomp, to keep golden files short.
    pub fn unconfined(&mut self) -> &mut Case {
        self.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        });
        self
    }
}
