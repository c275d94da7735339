//! `generate` as a whole: refusals that need the full input, and cross-module semantics.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use super::fixtures::{ns_mode, Case, CONTAINER_ID, SANDBOX_ID};
use super::{config_json, generate, Generated, SpecError};
use crate::error::{Error, ErrorKind};

fn generated(case: &Case) -> Generated {
    generate(&case.input()).unwrap()
}

fn refused(case: &Case, needle: &str) -> SpecError {
    let err = generate(&case.input()).unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "error {err:?} does not mention {needle:?}"
    );
    err
}

fn mount<'a>(spec: &'a Spec, destination: &str) -> Option<&'a Mount> {
    spec.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new(destination))
}

fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

#[test]
fn the_minimal_container_runs_the_image_cmd_as_root() {
    let g = generated(&Case::busybox());
    let process = g.spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_deref(), Some(&["sh".to_string()][..]));
    assert_eq!(process.cwd(), Path::new("/"));
    assert_eq!((process.user().uid(), process.user().gid()), (0, 0));
    assert_eq!(g.user.additional_gids, [0, 10]);
    assert_eq!(g.stop_signal, 15);
    assert_eq!(process.oom_score_adj(), Some(1000));
    assert!(g.mounts.is_empty());
    assert_eq!(g.spec.hostname().as_deref(), Some("busybox"));
    let annotations = g.spec.annotations().clone().unwrap();
    assert_eq!(annotations["io.kubernetes.cri.container-type"], "container");
    assert_eq!(annotations["io.kubernetes.cri.sandbox-id"], SANDBOX_ID);
    assert_eq!(annotations["io.kubernetes.cri.container-name"], "main");
    assert_eq!(annotations["io.kubernetes.container.restartCount"], "0");
    assert_eq!(
        g.spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
        Some(Path::new(&format!("/crius/crius-{CONTAINER_ID}")[..]))
    );
}

#[test]
fn config_json_is_stable() {
    let case = Case::busybox();
    let a = config_json(&generated(&case).spec).unwrap();
    for _ in 0..5 {
        assert_eq!(config_json(&generated(&case).spec).unwrap(), a);
    }
    let parsed: Spec = serde_json::from_str(&a).unwrap();
    assert_eq!(parsed, generated(&case).spec);
}

#[test]
fn missing_metadata_is_refused() {
    let mut case = Case::busybox();
    case.config.metadata = None;
    refused(&case, "container metadata is required");
    case.config.metadata = Some(cri::ContainerMetadata::default());
    refused(&case, "metadata.name");
}

#[test]
fn a_privileged_container_needs_a_privileged_pod() {
    let mut case = Case::busybox();
    case.sc().privileged = true;
    let err = refused(&case, "security_context.privileged");
    assert!(err.to_string().contains(SANDBOX_ID), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(matches!(Error::from(err), Error::InvalidArgument(_)));
}

#[test]
fn pid_namespace_follows_the_mode() {
    let set_pid = |case: &mut Case, mode: cri::NamespaceMode| {
        case.sc()
            .namespace_options
            .get_or_insert_with(Default::default)
            .pid = ns_mode(mode);
    };
    let mut case = Case::busybox();
    assert!(namespaces(&generated(&case).spec).contains(&(LinuxNamespaceType::Pid, None)));

    set_pid(&mut case, cri::NamespaceMode::Pod);
    let err = refused(&case, "namespace_options.pid is POD");
    assert!(err.to_string().contains(SANDBOX_ID), "{err}");
    case.pidns = Some("/proc/7/ns/pid".into());
    assert!(namespaces(&generated(&case).spec)
        .contains(&(LinuxNamespaceType::Pid, Some("/proc/7/ns/pid".into()))));

    set_pid(&mut case, cri::NamespaceMode::Target);
    case.sc().namespace_options.as_mut().unwrap().target_id = "other".into();
    refused(&case, "target \"other\"");
    case.target_pidns = Some("/proc/9/ns/pid".into());
    assert!(namespaces(&generated(&case).spec)
        .contains(&(LinuxNamespaceType::Pid, Some("/proc/9/ns/pid".into()))));

    set_pid(&mut case, cri::NamespaceMode::Node);
    assert!(!namespaces(&generated(&case).spec)
        .iter()
        .any(|(t, _)| *t == LinuxNamespaceType::Pid));

    case.sc().namespace_options.as_mut().unwrap().pid = 42;
    refused(&case, "namespace_options.pid: unknown mode 42");
}

#[test]
fn pod_namespaces_are_joined_by_path_and_cgroupns_needs_v2() {
    let mut case = Case::busybox();
    let ns = namespaces(&generated(&case).spec);
    assert!(ns.contains(&(
        LinuxNamespaceType::Network,
        Some(format!("/run/crius/pods/{SANDBOX_ID}/ns/net").into())
    )));
    assert!(ns.contains(&(LinuxNamespaceType::Mount, None)));
    assert!(ns.contains(&(LinuxNamespaceType::Cgroup, None)));
    case.host.cgroup_v2 = false;
    case.utsns = None;
    let g = generated(&case);
    let ns = namespaces(&g.spec);
    assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Cgroup));
    assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Uts));
    // Without its own UTS namespace the container must not set a hostname.
    assert_eq!(g.spec.hostname(), &None);
}

#[test]
fn bad_user_namespace_options_are_refused() {
    let mut case = Case::busybox();
    let mapping = cri::IdMapping {
        host_id: 65536,
        container_id: 0,
        length: 65536,
    };
    let set = |case: &mut Case, userns: cri::UserNamespace| {
        case.pod_sc()
            .namespace_options
            .get_or_insert_with(Default::default)
            .userns_options = Some(userns);
    };
    set(
        &mut case,
        cri::UserNamespace {
            mode: ns_mode(cri::NamespaceMode::Container),
            uids: vec![mapping],
            gids: vec![mapping],
        },
    );
    refused(&case, "userns_options: mode must be POD or NODE");
    set(
        &mut case,
        cri::UserNamespace {
            mode: ns_mode(cri::NamespaceMode::Pod),
            uids: vec![mapping],
            gids: vec![],
        },
    );
    refused(&case, "both uid and gid mappings are required");
    set(
        &mut case,
        cri::UserNamespace {
            mode: ns_mode(cri::NamespaceMode::Pod),
            uids: vec![mapping],
            gids: vec![cri::IdMapping {
                length: 0,
                ..mapping
            }],
        },
    );
    refused(&case, "userns_options.gids[0]: length must not be 0");
    // POD without mappings (an older kubelet) and NODE: no user namespace.
    for mode in [cri::NamespaceMode::Pod, cri::NamespaceMode::Node] {
        set(
            &mut case,
            cri::UserNamespace {
                mode: ns_mode(mode),
                ..Default::default()
            },
        );
        let ns = namespaces(&generated(&case).spec);
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::User));
    }
}

#[test]
fn user_namespace_mappings_go_to_the_spec() {
    let mut case = Case::busybox();
    case.pod_sc()
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(cri::UserNamespace {
        mode: ns_mode(cri::NamespaceMode::Pod),
        uids: vec![cri::IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        }],
        gids: vec![cri::IdMapping {
            host_id: 200000,
            container_id: 0,
            length: 65536,
        }],
    });
    let g = generated(&case);
    // No path given: the runtime creates the namespace with the mappings.
    assert!(namespaces(&g.spec).contains(&(LinuxNamespaceType::User, None)));
    let linux = g.spec.linux().as_ref().unwrap();
    let uid = &linux.uid_mappings().as_ref().unwrap()[0];
    let gid = &linux.gid_mappings().as_ref().unwrap()[0];
    assert_eq!(
        (uid.host_id(), uid.container_id(), uid.size()),
        (100000, 0, 65536)
    );
    assert_eq!(gid.host_id(), 200000);
}

#[test]
fn cri_mounts_override_pod_files_and_defaults() {
    let mut case = Case::busybox();
    let g = generated(&case);
    assert_eq!(
        mount(&g.spec, "/etc/hosts").unwrap().source().as_deref(),
        Some(Path::new(
            &format!("/run/crius/pods/{SANDBOX_ID}/hosts")[..]
        ))
    );
    assert_eq!(
        mount(&g.spec, "/dev/shm").unwrap().source().as_deref(),
        Some(Path::new(&format!("/run/crius/pods/{SANDBOX_ID}/shm")[..]))
    );
    case.config.mounts = vec![
        cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: "/kubelet/etc-hosts".into(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/sys".into(),
            host_path: "/sys".into(),
            readonly: true,
            ..Default::default()
        },
    ];
    let g = generated(&case);
    let hosts: Vec<_> = g
        .spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.destination() == Path::new("/etc/hosts"))
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        hosts[0].source().as_deref(),
        Some(Path::new("/kubelet/etc-hosts"))
    );
    assert_eq!(
        mount(&g.spec, "/sys").unwrap().typ().as_deref(),
        Some("bind")
    );
    // Parents before children.
    let destinations: Vec<_> = g
        .spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| m.destination().components().count())
        .collect();
    assert!(
        destinations.windows(2).all(|w| w[0] <= w[1]),
        "{destinations:?}"
    );
    // Host IPC: the host's /dev/shm.
    case.shm = None;
    let g = generated(&case);
    assert_eq!(
        mount(&g.spec, "/dev/shm").unwrap().source().as_deref(),
        Some(Path::new("/dev/shm"))
    );
}

#[test]
fn duplicate_mount_destinations_are_refused() {
    let mut case = Case::busybox();
    case.config.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: "/a".into(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/data/".into(),
            host_path: "/b".into(),
            ..Default::default()
        },
    ];
    refused(
        &case,
        "mounts[1] \"/data/\": another mount already targets /data",
    );
}

#[test]
fn bidirectional_mounts_make_the_rootfs_shared() {
    let mut case = Case::busybox();
    case.config.mounts = vec![
        cri::Mount {
            container_path: "/a".into(),
            host_path: "/a".into(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/b".into(),
            host_path: "/b".into(),
            propagation: cri::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        },
    ];
    let g = generated(&case);
    assert_eq!(
        g.spec
            .linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rshared")
    );
    case.config.mounts.truncate(1);
    let g = generated(&case);
    assert_eq!(
        g.spec
            .linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rslave")
    );
}

#[test]
fn readonly_rootfs_and_no_new_privs_reach_the_spec() {
    let mut case = Case::busybox();
    case.sc().readonly_rootfs = true;
    case.sc().no_new_privs = true;
    let g = generated(&case);
    assert_eq!(g.spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        g.spec.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
}

#[test]
fn an_image_user_that_does_not_exist_is_refused() {
    let mut case = Case::busybox();
    case.sc().run_as_user = None;
    case.image.user = "postgres".into();
    let err = refused(&case, "user \"postgres\" not found");
    assert!(matches!(Error::from(err), Error::InvalidArgument(_)));
}

#[test]
fn a_missing_localhost_seccomp_profile_is_not_found() {
    let mut case = Case::busybox();
    case.sc().seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/var/lib/kubelet/seccomp/audit.json".into(),
    });
    let err = refused(&case, "/var/lib/kubelet/seccomp/audit.json");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    case.seccomp_localhost =
        Some(r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64"]}"#.into());
    let g = generated(&case);
    let seccomp = g.spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
    assert_eq!(
        seccomp.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActLog
    );
}

/// Issue 11 item 4a: no seccomp field at all meant RuntimeDefault; kubelet, containerd and
/// critest read it as Unconfined. The old behaviour is `seccomp_use_default_when_empty`.
#[test]
fn a_container_without_a_profile_is_unconfined_unless_configured_otherwise() {
    let seccomp = |case: &Case| {
        generated(case)
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .seccomp()
            .clone()
    };
    let mut case = Case::busybox();
    assert_eq!(seccomp(&case), None);

    let mut explicit = Case::busybox();
    explicit.sc().seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let runtime_default = seccomp(&explicit);
    assert!(runtime_default.is_some());

    case.host.seccomp_use_default_when_empty = true;
    assert_eq!(seccomp(&case), runtime_default);
    // An explicit Unconfined stays unconfined with the key set.
    case.unconfined();
    assert_eq!(seccomp(&case), None);
}

#[test]
fn a_privileged_container_ignores_its_localhost_profile() {
    let mut case = Case::busybox();
    case.pod_sc().privileged = true;
    case.sc().privileged = true;
    case.sc().seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/var/lib/kubelet/seccomp/audit.json".into(),
    });
    case.seccomp_localhost = Some(r#"{"defaultAction":"SCMP_ACT_LOG"}"#.into());
    let g = generated(&case);
    assert_eq!(g.spec.linux().as_ref().unwrap().seccomp(), &None);
    // Not even a missing file stops it.
    case.seccomp_localhost = None;
    generated(&case);
}

#[test]
fn pod_sysctls_are_copied_in_dotted_form() {
    let mut case = Case::busybox();
    if let Some(linux) = case.pod_config.linux.as_mut() {
        linux.sysctls = [
            ("net/ipv4/ip_forward".to_string(), "1".to_string()),
            ("kernel.shmmax".to_string(), "1024".to_string()),
        ]
        .into();
    }
    let g = generated(&case);
    let sysctl = g.spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
    assert_eq!(sysctl["net.ipv4.ip_forward"], "1");
    assert_eq!(sysctl["kernel.shmmax"], "1024");
    // A pod on the host network cannot carry net.* sysctls.
    case.netns = None;
    refused(&case, "pod sysctl \"net/ipv4/ip_forward\"");
}

#[test]
fn resources_errors_name_the_field() {
    let mut case = Case::busybox();
    case.resources().cpu_period = -5;
    let err = refused(&case, "resources.cpu_period");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn nofile_is_cut_to_our_own_hard_limit() {
    let nofile = |case: &Case| {
        let g = generated(case);
        let limits = g
            .spec
            .process()
            .as_ref()
            .unwrap()
            .rlimits()
            .clone()
            .unwrap();
        (limits[0].soft(), limits[0].hard())
    };
    let mut case = Case::busybox();
    assert_eq!(nofile(&case), (1_048_576, 1_048_576));
    case.host.max_nofile = Some(20_000);
    assert_eq!(nofile(&case), (20_000, 20_000));
    case.host.max_nofile = Some(u64::MAX);
    assert_eq!(nofile(&case), (1_048_576, 1_048_576));
}

#[test]
fn pids_limit_comes_from_the_configuration_only_when_positive() {
    let pids = |limit: i64| {
        let mut case = Case::busybox();
        case.host.pids_limit = limit;
        generated(&case)
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .and_then(|r| *r.pids())
            .map(|p| p.limit())
    };
    assert_eq!(pids(0), None);
    assert_eq!(pids(1024), Some(1024));
}
