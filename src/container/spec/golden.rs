//! Golden files: representative inputs whose `config.json` is pinned under `spec/golden/`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p crius --lib container::spec` rewrites the files; review the
//! diff before committing it.

use std::path::PathBuf;

use k8s_cri::v1 as cri;

use super::fixtures::{ns_mode, Case};
use super::{config_json, default_profile, generate, DEFAULT_CAPABILITIES};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/container/spec/golden")
        .join(format!("{name}.json"))
}

fn check_text(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the generated spec at line {}:\n  golden:    {:?}\n  generated: {:?}\n\
             run with UPDATE_GOLDEN=1 to accept the new output",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

fn check(name: &str, case: &Case) {
    let generated = generate(&case.input()).unwrap();
    check_text(name, &config_json(&generated.spec).unwrap());
}

#[test]
fn golden_busybox_minimal() {
    // kubelet defaults with `seccompDefault`: the built-in RuntimeDefault profile, asked for
    // explicitly (no seccomp field at all is unconfined: `a_container_without_a_profile_*`).
    let mut case = Case::busybox();
    case.sc().seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    check("busybox-minimal", &case);
}

#[test]
fn golden_user_strict_groups() {
    let mut case = Case::busybox();
    case.unconfined();
    case.image.user = "nobody".into();
    case.image.working_dir = "/home/app".into();
    case.image.stop_signal = "SIGQUIT".into();
    case.config.command = vec!["/bin/sh".into(), "-c".into()];
    case.config.args = vec!["id; sleep 3600".into()];
    case.config.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hello".into(),
    }];
    let sc = case.sc();
    sc.run_as_user = None;
    sc.run_as_username = "app".into();
    sc.run_as_group = Some(cri::Int64Value { value: 3000 });
    sc.supplemental_groups = vec![4000, 50000];
    sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    sc.no_new_privs = true;
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec!["net_raw".into()],
        drop_capabilities: vec!["ALL".into()],
        add_ambient_capabilities: vec![],
    });
    let generated = generate(&case.input()).unwrap();
    assert_eq!(generated.user.additional_gids, [3000, 4000, 50000]);
    assert_eq!(generated.user.username.as_deref(), Some("app"));
    assert_eq!(generated.stop_signal, 3);
    check("user-strict-groups", &case);
}

#[test]
fn golden_privileged() {
    let mut case = Case::busybox();
    case.pod_sc().privileged = true;
    case.host.apparmor = true;
    case.host.apparmor_default = Some("crius-default".into());
    case.host.selinux = true;
    let sc = case.sc();
    sc.privileged = true;
    // Ignored: privileged containers run without seccomp whatever the profile says.
    sc.seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/var/lib/kubelet/seccomp/audit.json".into(),
    });
    sc.selinux_options = Some(cri::SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    });
    check("privileged", &case);
}

#[test]
fn golden_readonly_rootfs_and_mounts() {
    let mut case = Case::busybox();
    case.unconfined();
    case.host.apparmor = true;
    case.host.apparmor_default = Some("crius-default".into());
    case.host.selinux = true;
    case.config.tty = true;
    case.config.stdin = true;
    case.config.working_dir = "/data".into();
    let mount = |container: &str, host: &str, readonly, rro, propagation: cri::MountPropagation| {
        cri::Mount {
            container_path: container.into(),
            host_path: host.into(),
            readonly,
            recursive_read_only: rro,
            propagation: propagation as i32,
            ..Default::default()
        }
    };
    case.config.mounts = vec![
        // kubelet's own /etc/hosts replaces the pod's.
        mount(
            "/etc/hosts",
            "/var/lib/kubelet/pods/0b5e/etc-hosts",
            false,
            false,
            cri::MountPropagation::PropagationPrivate,
        ),
        mount(
            "/data/",
            "/srv/data",
            false,
            false,
            cri::MountPropagation::PropagationPrivate,
        ),
        mount(
            "/data/ro",
            "/srv/tree",
            true,
            true,
            cri::MountPropagation::PropagationPrivate,
        ),
        mount(
            "/mnt/host",
            "/mnt",
            true,
            false,
            cri::MountPropagation::PropagationHostToContainer,
        ),
        mount(
            "/dev/termination-log",
            "/var/lib/kubelet/pods/0b5e/containers/main/1234",
            false,
            false,
            cri::MountPropagation::PropagationPrivate,
        ),
    ];
    case.config.devices = vec![cri::Device {
        container_path: "/dev/fuse".into(),
        host_path: "/dev/fuse".into(),
        permissions: "rw".into(),
    }];
    let sc = case.sc();
    sc.readonly_rootfs = true;
    sc.apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "k8s-apparmor-example".into(),
    });
    sc.selinux_options = Some(cri::SeLinuxOption {
        user: "system_u".into(),
        role: "system_r".into(),
        r#type: "container_t".into(),
        level: "s0:c4,c5".into(),
    });
    sc.masked_paths = vec!["/proc/kcore".into(), "/proc/keys".into()];
    sc.readonly_paths = vec!["/proc/sys".into()];
    let generated = generate(&case.input()).unwrap();
    assert_eq!(generated.mounts.len(), 5);
    assert_eq!(generated.mounts[1].container_path, "/data");
    check("readonly-rootfs-mounts", &case);
}

#[test]
fn golden_host_namespaces() {
    let mut case = Case::busybox();
    case.unconfined();
    case.netns = None;
    case.ipcns = None;
    case.utsns = None;
    case.shm = None;
    case.hostname = "node-1".into();
    case.host.cgroup_v2 = false;
    case.resources().memory_limit_in_bytes = 128 << 20;
    let sc = case.sc();
    if let Some(ns) = sc.namespace_options.as_mut() {
        ns.network = ns_mode(cri::NamespaceMode::Node);
        ns.pid = ns_mode(cri::NamespaceMode::Node);
        ns.ipc = ns_mode(cri::NamespaceMode::Node);
    }
    check("host-namespaces", &case);
}

#[test]
fn golden_user_namespace() {
    let mut case = Case::busybox();
    case.unconfined();
    // As the daemon runs it: the volume is an idmapped clone crius staged (src/idmap.rs), so
    // the runtime is not asked to idmap it (`idmap_mounts` false).
    case.config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/var/lib/crius/i/0123456789ab/3".into(),
        ..Default::default()
    }];
    case.pidns = Some("/proc/4242/ns/pid".into());
    case.userns = Some("/proc/4242/ns/user".into());
    let mapping = |container_id, host_id, length| cri::IdMapping {
        host_id,
        container_id,
        length,
    };
    let pod_ns = case
        .pod_sc()
        .namespace_options
        .get_or_insert_with(Default::default);
    pod_ns.pid = ns_mode(cri::NamespaceMode::Pod);
    pod_ns.userns_options = Some(cri::UserNamespace {
        mode: ns_mode(cri::NamespaceMode::Pod),
        uids: vec![mapping(0, 65536, 65536)],
        gids: vec![mapping(0, 65536, 65536)],
    });
    if let Some(ns) = case.sc().namespace_options.as_mut() {
        ns.pid = ns_mode(cri::NamespaceMode::Pod);
    }
    check("user-namespace", &case);
}

#[test]
fn golden_resources_and_cgroup_parent() {
    let mut case = Case::busybox();
    case.unconfined();
    case.cgroup_parent = "/kubepods/burstable/pod0b5e".into();
    // Like this machine: crius' hard RLIMIT_NOFILE is 20000.
    case.host.max_nofile = Some(20_000);
    if let Some(linux) = case.pod_config.linux.as_mut() {
        linux.cgroup_parent = case.cgroup_parent.clone();
        linux.sysctls = [
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            ),
            ("kernel.shmmax".to_string(), "68719476736".to_string()),
            (
                "net/ipv4/conf/eth0.100/rp_filter".to_string(),
                "1".to_string(),
            ),
        ]
        .into();
    }
    case.config
        .annotations
        .insert("io.kubernetes.cri.container-type".into(), "spoofed".into());
    *case.resources() = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        memory_swap_limit_in_bytes: 512 << 20,
        oom_score_adj: -1000,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }],
        unified: [("memory.high".to_string(), "200000000".to_string())].into(),
    };
    check("resources-cgroup-parent", &case);
}

#[test]
fn golden_default_seccomp_profiles() {
    let caps = DEFAULT_CAPABILITIES.iter().copied().collect();
    for arch in ["x86_64", "aarch64"] {
        let profile = default_profile(&caps, arch).unwrap();
        let mut text = serde_json::to_string_pretty(&profile).unwrap();
        text.push('\n');
        check_text(&format!("seccomp-default-{arch}"), &text);
    }
}
