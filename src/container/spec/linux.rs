//! Namespaces, resources, the cgroups path, `oom_score_adj` and sysctls.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxCpu, LinuxHugepageLimit, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources,
};

use super::{invalid, HostView, PodView, SpecError, SpecInput};
use crate::sandbox::record::{NamespaceModes, NsMode};
use crate::sandbox::sysctl;

pub(super) struct Namespaces {
    pub list: Vec<LinuxNamespace>,
    pub uid_mappings: Option<Vec<LinuxIdMapping>>,
    pub gid_mappings: Option<Vec<LinuxIdMapping>>,
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path);
    ns
}

fn mappings(field: &str, given: &[cri::IdMapping]) -> Result<Vec<LinuxIdMapping>, SpecError> {
    given
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.length == 0 {
                return Err(invalid(format!("{field}[{i}]: length must not be 0")));
            }
            Ok(LinuxIdMappingBuilder::default()
                .host_id(m.host_id)
                .container_id(m.container_id)
                .size(m.length)
                .build()?)
        })
        .collect()
}

/// pid per the container's `namespace_options.pid`; net/ipc/uts join the pod's (or the host's);
/// a new mount namespace; a new cgroup namespace on cgroup v2; the pod's user namespace.
pub(super) fn namespaces(
    input: &SpecInput,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<Namespaces, SpecError> {
    use LinuxNamespaceType as T;
    let pod = &input.pod;
    let mut list = Vec::new();

    let pid_mode = sc.namespace_options.as_ref().map_or(0, |o| o.pid);
    match NsMode::from_cri(pid_mode) {
        Some(NsMode::Container) => list.push(namespace(T::Pid, None)),
        Some(NsMode::Pod) => {
            let path = pod.pidns.clone().ok_or_else(|| {
                invalid(format!(
                    "namespace_options.pid is POD but pod sandbox {} has no pid namespace",
                    pod.sandbox_id
                ))
            })?;
            list.push(namespace(T::Pid, Some(path)));
        }
        Some(NsMode::Node) => {}
        Some(NsMode::Target) => {
            let target = sc
                .namespace_options
                .as_ref()
                .map_or("", |o| o.target_id.as_str());
            let path = input.target_pidns.clone().ok_or_else(|| {
                invalid(format!(
                    "namespace_options.pid is TARGET but the pid namespace of target {target:?} is not known"
                ))
            })?;
            list.push(namespace(T::Pid, Some(path)));
        }
        None => {
            return Err(invalid(format!(
                "namespace_options.pid: unknown mode {pid_mode}"
            )))
        }
    }
    for (typ, path) in [
        (T::Network, &pod.netns),
        (T::Ipc, &pod.ipcns),
        (T::Uts, &pod.utsns),
    ] {
        if let Some(path) = path {
            list.push(namespace(typ, Some(path.clone())));
        }
    }
    list.push(namespace(T::Mount, None));
    if input.host.cgroup_v2 {
        list.push(namespace(T::Cgroup, None));
    }

    let userns = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|o| o.userns_options.as_ref());
    let (mut uid_mappings, mut gid_mappings) = (None, None);
    if let Some(userns) = userns {
        const FIELD: &str = "pod namespace_options.userns_options";
        match NsMode::from_cri(userns.mode) {
            Some(NsMode::Node) => {}
            // POD without mappings: an older kubelet that knows no user namespaces.
            Some(NsMode::Pod) if userns.uids.is_empty() && userns.gids.is_empty() => {}
            Some(NsMode::Pod) => {
                if userns.uids.is_empty() || userns.gids.is_empty() {
                    return Err(invalid(format!(
                        "{FIELD}: both uid and gid mappings are required"
                    )));
                }
                uid_mappings = Some(mappings(&format!("{FIELD}.uids"), &userns.uids)?);
                gid_mappings = Some(mappings(&format!("{FIELD}.gids"), &userns.gids)?);
                list.push(namespace(T::User, pod.userns.clone()));
            }
            _ => {
                return Err(invalid(format!(
                    "{FIELD}: mode must be POD or NODE, not {}",
                    userns.mode
                )))
            }
        }
    }
    Ok(Namespaces {
        list,
        uid_mappings,
        gid_mappings,
    })
}

fn positive(field: &str, value: i64) -> Result<Option<i64>, SpecError> {
    match value {
        0 => Ok(None),
        v if v > 0 => Ok(Some(v)),
        v => Err(invalid(format!(
            "resources.{field}: {v} must not be negative"
        ))),
    }
}

fn cpu_list(field: &str, value: &str) -> Result<Option<String>, SpecError> {
    if value.is_empty() {
        return Ok(None);
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
    {
        return Err(invalid(format!(
            "resources.{field} {value:?}: not a list like 0-3,5"
        )));
    }
    Ok(Some(value.to_string()))
}

/// CRI resources → OCI resources (without device rules). Also what `runc update` takes.
pub fn linux_resources(
    res: &cri::LinuxContainerResources,
    cgroup_v2: bool,
) -> Result<LinuxResources, SpecError> {
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(positive("cpu_shares", res.cpu_shares)?.map(|v| v as u64))
        .set_period(positive("cpu_period", res.cpu_period)?.map(|v| v as u64))
        // -1 = unlimited.
        .set_quota((res.cpu_quota != 0).then_some(res.cpu_quota))
        .set_cpus(cpu_list("cpuset_cpus", &res.cpuset_cpus)?)
        .set_mems(cpu_list("cpuset_mems", &res.cpuset_mems)?);

    let limit = positive("memory_limit_in_bytes", res.memory_limit_in_bytes)?;
    let swap = match res.memory_swap_limit_in_bytes {
        0 if cgroup_v2 => None,
        // cgroup v1: no swap beyond the memory limit unless asked for.
        0 => limit,
        -1 => Some(-1),
        v if v > 0 => {
            if limit.is_some_and(|l| v < l) {
                return Err(invalid(format!(
                    "resources.memory_swap_limit_in_bytes: {v} is below memory_limit_in_bytes"
                )));
            }
            Some(v)
        }
        v => {
            return Err(invalid(format!(
                "resources.memory_swap_limit_in_bytes: {v} must not be negative"
            )))
        }
    };
    let mut memory = LinuxMemory::default();
    memory.set_limit(limit).set_swap(swap);

    let hugepages = res
        .hugepage_limits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let size = h.page_size.as_str();
            let digits = size.trim_end_matches(['B', 'K', 'M', 'G', 'T', 'P']);
            if digits.is_empty()
                || !digits.chars().all(|c| c.is_ascii_digit())
                || !size.ends_with('B')
            {
                return Err(invalid(format!(
                    "resources.hugepage_limits[{i}]: page_size {size:?} is not like 2MB or 1GB"
                )));
            }
            let limit = i64::try_from(h.limit).map_err(|_| {
                invalid(format!(
                    "resources.hugepage_limits[{i}]: limit {} is too large",
                    h.limit
                ))
            })?;
            let mut out = LinuxHugepageLimit::default();
            out.set_page_size(size.to_string()).set_limit(limit);
            Ok(out)
        })
        .collect::<Result<Vec<_>, SpecError>>()?;

    if !res.unified.is_empty() && !cgroup_v2 {
        return Err(invalid("resources.unified requires cgroup v2"));
    }
    let unified: HashMap<String, String> = res.unified.clone();

    let mut out = LinuxResources::default();
    out.set_cpu((cpu != LinuxCpu::default()).then_some(cpu))
        .set_memory((memory != LinuxMemory::default()).then_some(memory))
        .set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages))
        .set_unified((!unified.is_empty()).then_some(unified));
    Ok(out)
}

/// Clamped to `[host.min_oom_score_adj, 1000]`: below our own value the kernel refuses it.
pub(super) fn oom_score_adj(requested: i64, host: &HostView) -> i32 {
    let low = host.min_oom_score_adj.clamp(-1000, 1000);
    requested.clamp(low, 1000) as i32
}

/// `<cgroup_parent>/crius-<id>`, or `/crius/crius-<id>` without a parent (cgroupfs paths).
pub fn cgroups_path(parent: &str, container_id: &str) -> PathBuf {
    let parent = parent.trim_end_matches('/');
    if parent.is_empty() {
        PathBuf::from(format!("/crius/crius-{container_id}"))
    } else if parent.starts_with('/') {
        PathBuf::from(format!("{parent}/crius-{container_id}"))
    } else {
        PathBuf::from(format!("/{parent}/crius-{container_id}"))
    }
}

/// The pod's sysctls (already set on its namespaces) in the dotted form runc applies. Names
/// whose components contain dots (`net.ipv4.conf.eth0/100.x`) are left out: runc would write
/// them to the wrong file, and the pod has set them already.
pub(super) fn sysctls(pod: &PodView) -> Result<HashMap<String, String>, SpecError> {
    let Some(linux) = &pod.config.linux else {
        return Ok(HashMap::new());
    };
    let mode = |p: &Option<PathBuf>| {
        if p.is_some() {
            NsMode::Pod
        } else {
            NsMode::Node
        }
    };
    let modes = NamespaceModes {
        network: mode(&pod.netns),
        pid: NsMode::Container,
        ipc: mode(&pod.ipcns),
        target_id: String::new(),
    };
    let mut out = HashMap::new();
    for (name, value) in &linux.sysctls {
        let dotted =
            sysctl::validate(name, value, &modes).map_err(|e| invalid(format!("pod {e}")))?;
        if !dotted.contains('/') {
            out.insert(dotted, value.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_translate_and_zero_means_unset() {
        let res = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        };
        let v1 = linux_resources(&res, false).unwrap();
        assert_eq!(v1.memory().unwrap().swap(), Some(64 << 20));
        assert_eq!(v1.cpu().as_ref().unwrap().quota(), Some(50_000));
        let v2 = linux_resources(&res, true).unwrap();
        assert_eq!(v2.memory().unwrap().swap(), None);
        let empty = linux_resources(&Default::default(), true).unwrap();
        assert_eq!(empty, LinuxResources::default());
    }

    #[test]
    fn bad_resources_are_refused_naming_the_field() {
        for (res, needle) in [
            (
                cri::LinuxContainerResources {
                    cpu_shares: -2,
                    ..Default::default()
                },
                "resources.cpu_shares",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: 100,
                    memory_swap_limit_in_bytes: 50,
                    ..Default::default()
                },
                "resources.memory_swap_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_mems: "0;1".into(),
                    ..Default::default()
                },
                "resources.cpuset_mems",
            ),
            (
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "huge".into(),
                        limit: 1,
                    }],
                    ..Default::default()
                },
                "resources.hugepage_limits[0]",
            ),
            (
                cri::LinuxContainerResources {
                    unified: [("memory.high".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "resources.unified",
            ),
        ] {
            let err = linux_resources(&res, false).unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)));
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn oom_score_adj_is_clamped_to_what_we_may_set() {
        let host = HostView {
            min_oom_score_adj: -998,
            ..Default::default()
        };
        assert_eq!(oom_score_adj(-1000, &host), -998);
        assert_eq!(oom_score_adj(5000, &host), 1000);
        assert_eq!(oom_score_adj(300, &host), 300);
        let odd = HostView {
            min_oom_score_adj: 4000,
            ..Default::default()
        };
        assert_eq!(oom_score_adj(0, &odd), 1000);
    }

    #[test]
    fn cgroups_path_nests_under_the_parent() {
        assert_eq!(cgroups_path("", "abc"), PathBuf::from("/crius/crius-abc"));
        assert_eq!(
            cgroups_path("/kubepods/burstable/pod1/", "abc"),
            PathBuf::from("/kubepods/burstable/pod1/crius-abc")
        );
        assert_eq!(
            cgroups_path("kubepods", "abc"),
            PathBuf::from("/kubepods/crius-abc")
        );
    }
}
