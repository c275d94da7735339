//! CRI `RunPodSandboxRequest` → validated [`PodSpec`], before any side effect.
//!
//! Pure: everything a pod could be refused for (missing metadata, unknown handler, bad sysctl,
//! bad cgroup parent, bad port or DNS server) is found here and reported as `InvalidArgument`
//! naming the field. Must not touch the host.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_cri::v1 as cri;

use super::record::{
    DnsConfig, IdMap, NamespaceModes, NsMode, PodSpec, PortMapping, UserNamespace,
};
use super::sysctl;
use crate::cgroups::{self, Limits};
use crate::config::{CgroupDriver, Config};
use crate::error::Error;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Validates the request against the configuration.
pub fn pod_spec(req: &cri::RunPodSandboxRequest, config: &Config) -> Result<PodSpec, Error> {
    let cfg = req
        .config
        .as_ref()
        .ok_or_else(|| invalid("pod sandbox config is required"))?;
    let meta = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("pod sandbox metadata is required"))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(invalid(format!("pod sandbox metadata.{field} is required")));
        }
        if value.contains(['/', '\0', '\n']) || value.len() > 253 {
            return Err(invalid(format!(
                "pod sandbox metadata.{field} {value:?} is not a valid name"
            )));
        }
    }
    nul_free(req, cfg)?;
    crate::container::validate::log_directory(&cfg.log_directory)?;
    let runtime_handler = if req.runtime_handler.is_empty() {
        config.runtime.default_handler.clone()
    } else {
        req.runtime_handler.clone()
    };
    if !config.runtime.handlers.contains_key(&runtime_handler) {
        return Err(invalid(format!(
            "runtime handler {runtime_handler:?} is not configured (have: {})",
            config
                .runtime
                .handlers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let linux = cfg.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let ns = security.namespace_options.clone().unwrap_or_default();
    let mode = |field: &str, v: i32| {
        NsMode::from_cri(v)
            .ok_or_else(|| invalid(format!("namespace_options.{field}: unknown mode {v}")))
    };
    let namespaces = NamespaceModes {
        network: mode("network", ns.network)?,
        pid: mode("pid", ns.pid)?,
        ipc: mode("ipc", ns.ipc)?,
        target_id: ns.target_id.clone(),
    };
    if matches!(namespaces.network, NsMode::Container | NsMode::Target) {
        return Err(invalid(
            "namespace_options.network must be POD or NODE for a pod sandbox",
        ));
    }
    if matches!(namespaces.ipc, NsMode::Container | NsMode::Target) {
        return Err(invalid(
            "namespace_options.ipc must be POD or NODE for a pod sandbox",
        ));
    }
    let user_namespace = match &ns.userns_options {
        Some(userns) => user_namespace(userns)?,
        None => None,
    };
    if user_namespace.is_some() {
        for (what, host) in [
            ("network", namespaces.network == NsMode::Node),
            ("ipc", namespaces.ipc == NsMode::Node),
            ("pid", namespaces.pid == NsMode::Node),
        ] {
            if host {
                return Err(invalid(format!(
                    "a pod with a user namespace cannot use the host's {what} namespace"
                )));
            }
        }
        if security.privileged {
            return Err(invalid("a pod with a user namespace cannot be privileged"));
        }
    }

    let hostname = cfg.hostname.clone();
    if hostname.len() > 64 || hostname.contains(['\0', '\n', ' ', '/']) {
        return Err(invalid(format!("hostname {hostname:?} is not valid")));
    }

    let dns = match &cfg.dns_config {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            for s in &d.servers {
                if s.parse::<IpAddr>().is_err() {
                    return Err(invalid(format!(
                        "dns_config.servers: {s:?} is not an IP address"
                    )));
                }
            }
            for v in d.searches.iter().chain(&d.options) {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(invalid(format!("dns_config: {v:?} is not valid")));
                }
            }
            Some(DnsConfig {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            })
        }
        _ => None,
    };

    let mut port_mappings = Vec::new();
    for pm in &cfg.port_mappings {
        let protocol = match cri::Protocol::try_from(pm.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(invalid(format!(
                    "port_mappings: unknown protocol {}",
                    pm.protocol
                )))
            }
        };
        let port = |field: &str, v: i32| {
            u16::try_from(v)
                .map_err(|_| invalid(format!("port_mappings.{field} {v} is out of range")))
        };
        let container_port = port("container_port", pm.container_port)?;
        let host_port = port("host_port", pm.host_port)?;
        if container_port == 0 {
            return Err(invalid("port_mappings.container_port must be set"));
        }
        if !pm.host_ip.is_empty() && pm.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(format!(
                "port_mappings.host_ip {:?} is not an IP address",
                pm.host_ip
            )));
        }
        // Without a host port there is nothing to map (kubelet sends these for documentation).
        if host_port == 0 {
            continue;
        }
        port_mappings.push(PortMapping {
            protocol: protocol.to_string(),
            container_port,
            host_port,
            host_ip: pm.host_ip.clone(),
        });
    }

    let mut sysctls = BTreeMap::new();
    for (name, value) in &linux.sysctls {
        let normalized = sysctl::validate(name, value, &namespaces)?;
        sysctls.insert(normalized, value.clone());
    }

    let cgroup_parent = match (config.runtime.cgroup_driver, linux.cgroup_parent.as_str()) {
        (_, "") => String::new(),
        (CgroupDriver::Cgroupfs, p) => {
            cgroups::relative(p).map_err(|e| invalid(e.to_string()))?;
            p.to_string()
        }
        (CgroupDriver::Systemd, p) => {
            cgroups::systemd_slice_path(p).map_err(|e| invalid(e.to_string()))?
        }
    };
    let mut limits = Limits::default();
    let mut oom_score_adj = 0;
    for (field, res) in [
        ("resources", &linux.resources),
        ("overhead", &linux.overhead),
    ] {
        let Some(res) = res else { continue };
        if !(-1000..=1000).contains(&res.oom_score_adj) {
            return Err(invalid(format!(
                "linux.{field}.oom_score_adj {} is not between -1000 and 1000",
                res.oom_score_adj
            )));
        }
        add_limits(&mut limits, res);
        oom_score_adj = oom_score_adj.max(res.oom_score_adj);
    }

    Ok(PodSpec {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        attempt: meta.attempt,
        hostname,
        log_directory: cfg.log_directory.clone(),
        dns,
        port_mappings,
        labels: cfg.labels.clone().into_iter().collect(),
        annotations: cfg.annotations.clone().into_iter().collect(),
        namespaces,
        cgroup_parent,
        limits,
        oom_score_adj,
        sysctls,
        runtime_handler,
        privileged: security.privileged,
        user_namespace,
    })
}

/// No NUL byte in any string of the request (they cannot reach a path, a cgroup file or a
/// namespace file): refused naming the field before anything is created.
fn nul_free(req: &cri::RunPodSandboxRequest, cfg: &cri::PodSandboxConfig) -> Result<(), Error> {
    use crate::container::validate::no_nul;
    no_nul("runtime_handler", &req.runtime_handler)?;
    no_nul("hostname", &cfg.hostname)?;
    no_nul("log_directory", &cfg.log_directory)?;
    for (field, map) in [("labels", &cfg.labels), ("annotations", &cfg.annotations)] {
        for (k, v) in map {
            no_nul(&format!("{field} key"), k)?;
            no_nul(&format!("{field}[{}]", crate::util::quote(k)), v)?;
        }
    }
    if let Some(linux) = &cfg.linux {
        no_nul("linux.cgroup_parent", &linux.cgroup_parent)?;
        for (k, v) in &linux.sysctls {
            no_nul("linux.sysctls key", k)?;
            no_nul(&format!("linux.sysctls[{}]", crate::util::quote(k)), v)?;
        }
        if let Some(sc) = &linux.security_context {
            if let Some(ns) = &sc.namespace_options {
                no_nul(
                    "linux.security_context.namespace_options.target_id",
                    &ns.target_id,
                )?;
            }
            no_nul("linux.security_context.seccomp_profile_path", {
                #[allow(deprecated)]
                &sc.seccomp_profile_path
            })?;
        }
    }
    if let Some(dns) = &cfg.dns_config {
        for (field, values) in [
            ("dns_config.servers", &dns.servers),
            ("dns_config.searches", &dns.searches),
            ("dns_config.options", &dns.options),
        ] {
            for (i, v) in values.iter().enumerate() {
                no_nul(&format!("{field}[{i}]"), v)?;
            }
        }
    }
    Ok(())
}

/// `userns_options`: NODE (or POD without mappings, from a kubelet that knows none) is the
/// host's user namespace; POD with mappings is a pod user namespace. The container root must be
/// mapped, at most 340 lines (the kernel's limit), no line may overflow.
fn user_namespace(userns: &cri::UserNamespace) -> Result<Option<UserNamespace>, Error> {
    const FIELD: &str = "namespace_options.userns_options";
    match NsMode::from_cri(userns.mode) {
        Some(NsMode::Node) => return Ok(None),
        Some(NsMode::Pod) if userns.uids.is_empty() && userns.gids.is_empty() => return Ok(None),
        Some(NsMode::Pod) => {}
        _ => {
            return Err(invalid(format!(
                "{FIELD}: mode must be POD or NODE, not {}",
                userns.mode
            )))
        }
    }
    let maps = |what: &str, given: &[cri::IdMapping]| -> Result<Vec<IdMap>, Error> {
        if given.is_empty() || given.len() > 340 {
            return Err(invalid(format!(
                "{FIELD}.{what}: 1 to 340 mappings are required, got {}",
                given.len()
            )));
        }
        let mut out: Vec<IdMap> = Vec::with_capacity(given.len());
        for (i, m) in given.iter().enumerate() {
            let map = IdMap {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            };
            let end = |start: u32| u64::from(start) + u64::from(map.length);
            if map.length == 0 || end(map.container_id) > 1 << 32 || end(map.host_id) > 1 << 32 {
                return Err(invalid(format!(
                    "{FIELD}.{what}[{i}]: {} {} {} is not a valid mapping",
                    m.container_id, m.host_id, m.length
                )));
            }
            let overlaps = |o: &IdMap| {
                u64::from(o.container_id) < end(map.container_id)
                    && u64::from(map.container_id) < u64::from(o.container_id) + u64::from(o.length)
            };
            if out.iter().any(overlaps) {
                return Err(invalid(format!(
                    "{FIELD}.{what}[{i}]: container ids overlap an earlier mapping"
                )));
            }
            out.push(map);
        }
        if !out.iter().any(|m| m.container_id == 0) {
            return Err(invalid(format!(
                "{FIELD}.{what}: the container's id 0 must be mapped"
            )));
        }
        Ok(out)
    };
    Ok(Some(UserNamespace {
        uids: maps("uids", &userns.uids)?,
        gids: maps("gids", &userns.gids)?,
    }))
}

/// Adds pod overhead to pod resources: memory and CPU quota add up, shares add up, the cpuset
/// of the first wins.
fn add_limits(l: &mut Limits, r: &cri::LinuxContainerResources) {
    if r.cpu_period > 0 && l.cpu_period == 0 {
        l.cpu_period = r.cpu_period as u64;
    }
    if r.cpu_quota > 0 {
        l.cpu_quota = l.cpu_quota.max(0) + r.cpu_quota;
    }
    if r.cpu_shares > 0 {
        l.cpu_shares += r.cpu_shares as u64;
    }
    if r.memory_limit_in_bytes > 0 {
        l.memory_limit_in_bytes = l.memory_limit_in_bytes.max(0) + r.memory_limit_in_bytes;
    }
    if l.cpuset_cpus.is_empty() {
        l.cpuset_cpus = r.cpuset_cpus.clone();
    }
    if l.cpuset_mems.is_empty() {
        l.cpuset_mems = r.cpuset_mems.clone();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The defaults with the default handler decided (`runc`), as `config::load` does.
    pub(crate) fn runc_default() -> Config {
        let mut config = Config::default();
        config.runtime.default_handler = "runc".into();
        config
    }

    fn request() -> cri::RunPodSandboxRequest {
        cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 1,
                }),
                hostname: "web-0".into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        }
    }

    fn err_of(req: &cri::RunPodSandboxRequest) -> String {
        match pod_spec(req, &runc_default()) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_handler_and_key() {
        let spec = pod_spec(&request(), &runc_default()).unwrap();
        assert_eq!(spec.runtime_handler, "runc");
        assert_eq!(spec.name_key(), "web_default_u1_1");
        assert_eq!(spec.namespaces.network, NsMode::Pod);
        assert!(!spec.host_network());
    }

    #[test]
    fn refusals_name_the_field() {
        let mut r = request();
        r.runtime_handler = "kata".into();
        assert!(err_of(&r).contains("\"kata\""));

        let mut r = request();
        r.config.as_mut().unwrap().metadata.as_mut().unwrap().uid = String::new();
        assert!(err_of(&r).contains("metadata.uid"));

        let mut r = request();
        r.config.as_mut().unwrap().dns_config = Some(cri::DnsConfig {
            servers: vec!["not-an-ip".into()],
            ..Default::default()
        });
        assert!(err_of(&r).contains("not-an-ip"));

        let mut r = request();
        r.config.as_mut().unwrap().port_mappings = vec![cri::PortMapping {
            protocol: 0,
            container_port: 80,
            host_port: 70000,
            host_ip: String::new(),
        }];
        assert!(err_of(&r).contains("host_port"));

        let mut r = request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "relative/path".into(),
            ..Default::default()
        });
        assert!(err_of(&r).contains("relative/path"));

        let mut r = request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
            ..Default::default()
        });
        assert!(err_of(&r).contains("kernel.panic"));
    }

    #[test]
    fn nul_bytes_relative_log_directories_and_bad_oom_scores_are_refused() {
        let mut r = request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods\0x".into(),
            ..Default::default()
        });
        assert!(err_of(&r).contains("linux.cgroup_parent"));

        let mut r = request();
        r.config.as_mut().unwrap().log_directory = "var/log/pods/x".into();
        assert!(err_of(&r).contains("log_directory"));
        r.config.as_mut().unwrap().log_directory = "/var/log/pods/../../etc".into();
        assert!(err_of(&r).contains("log_directory"));

        let mut r = request();
        r.config.as_mut().unwrap().labels = [("a".to_string(), "b\0".to_string())].into();
        assert!(err_of(&r).contains("labels"));

        let mut r = request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: 5000,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(err_of(&r).contains("oom_score_adj"));
    }

    #[test]
    fn host_network_refuses_net_sysctls() {
        let mut r = request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(err_of(&r).contains("hostNetwork"));
    }

    #[test]
    fn overhead_adds_to_resources_and_ports_without_host_port_are_dropped() {
        let mut r = request();
        let cfg = r.config.as_mut().unwrap();
        cfg.linux = Some(cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 100,
                cpu_shares: 512,
                ..Default::default()
            }),
            overhead: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 20,
                cpu_shares: 2,
                ..Default::default()
            }),
            ..Default::default()
        });
        cfg.port_mappings = vec![
            cri::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            },
            cri::PortMapping {
                protocol: 1,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
        ];
        let spec = pod_spec(&r, &runc_default()).unwrap();
        assert_eq!(spec.limits.memory_limit_in_bytes, 120);
        assert_eq!(spec.limits.cpu_shares, 514);
        assert_eq!(spec.port_mappings.len(), 1);
        assert_eq!(spec.port_mappings[0].protocol, "udp");
    }

    fn with_userns(
        uids: Vec<(u32, u32, u32)>,
        gids: Vec<(u32, u32, u32)>,
    ) -> cri::RunPodSandboxRequest {
        let maps = |v: Vec<(u32, u32, u32)>| {
            v.into_iter()
                .map(|(container_id, host_id, length)| cri::IdMapping {
                    container_id,
                    host_id,
                    length,
                })
                .collect()
        };
        let mut r = request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: cri::NamespaceMode::Pod as i32,
                        uids: maps(uids),
                        gids: maps(gids),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        r
    }

    #[test]
    fn user_namespace_mappings_are_validated() {
        let kubelet = vec![(0, 65536, 65536)];
        let spec = pod_spec(
            &with_userns(kubelet.clone(), kubelet.clone()),
            &runc_default(),
        )
        .unwrap();
        let userns = spec.user_namespace.unwrap();
        assert_eq!(userns.host_root(), (65536, 65536));
        assert_eq!(UserNamespace::args(&userns.uids), ["0:65536:65536"]);
        // POD without mappings is an older kubelet: the host's user namespace.
        let spec = pod_spec(&with_userns(vec![], vec![]), &runc_default()).unwrap();
        assert!(spec.user_namespace.is_none());

        for (uids, want) in [
            (vec![], "uids: 1 to 340 mappings"),
            (vec![(1, 65536, 10)], "id 0 must be mapped"),
            (
                vec![(0, 65536, 0)],
                "uids[0]: 0 65536 0 is not a valid mapping",
            ),
            (vec![(0, u32::MAX, 2)], "is not a valid mapping"),
            (
                vec![(0, 65536, 100), (50, 200000, 10)],
                "uids[1]: container ids overlap",
            ),
        ] {
            let msg = err_of(&with_userns(uids, kubelet.clone()));
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
        let mut r = with_userns(kubelet.clone(), kubelet.clone());
        let ns = r.config.as_mut().unwrap().linux.as_mut().unwrap();
        let sc = ns.security_context.as_mut().unwrap();
        sc.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Node as i32;
        assert!(err_of(&r).contains("host's pid namespace"));
        let mut r = with_userns(kubelet.clone(), kubelet);
        let ns = r.config.as_mut().unwrap().linux.as_mut().unwrap();
        ns.security_context.as_mut().unwrap().privileged = true;
        assert!(err_of(&r).contains("cannot be privileged"));
    }
}
