//! Up-front checks of a container's CRI input, before anything is created: every value the
//! runtime or the kernel would refuse later (and report as an opaque INTERNAL) is refused here
//! as `InvalidArgument` naming the field, with the value quoted and cut to
//! [`crate::util::QUOTE_LIMIT`] bytes.
//!
//! Pure apart from [`Node::get`], which reads the host's online CPUs and memory nodes once.
//! Must not touch the host otherwise; the spec generator (`spec.rs`) still owns semantics and
//! defaults, this module only refuses what cannot work: NUL bytes anywhere (they cannot cross
//! `execve`, paths or cgroup files), a log path leaving the pod's log directory, resources out of
//! the kernel's ranges, CPUs or memory nodes the node does not have, unified keys naming other
//! files, a PID namespace TARGET without a target, mounts onto `/proc` that runtimes refuse.

use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::sync::OnceLock;

use k8s_cri::v1 as cri;

use crate::error::Error;
use crate::util::quote;

/// The smallest memory limit accepted: below it the runtime's own init is OOM-killed before
/// the container starts (CRI-O uses the same floor).
pub const MIN_MEMORY_LIMIT: i64 = 12 << 20;
/// cgroup v1 `cpu.shares` range (runc converts it to a v2 weight within 1…10000).
pub const MAX_CPU_SHARES: i64 = 262_144;
/// The kernel's CFS period range in microseconds, and the smallest quota.
const CPU_PERIOD: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
const MIN_CPU_QUOTA: i64 = 1_000;
/// Longest path accepted (PATH_MAX).
const MAX_PATH: usize = 4096;
/// `/proc` files runc lets a container bind over (lxcfs-style), everything else under `/proc`
/// it refuses.
const PROC_MOUNT_ALLOWED: [&str; 9] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
];

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Refuses a NUL byte in `value`, naming `field`.
pub fn no_nul(field: &str, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(invalid(format!(
            "{field} {} contains a NUL byte",
            quote(value)
        )));
    }
    Ok(())
}

fn no_nul_all<'a>(field: &str, values: impl IntoIterator<Item = &'a String>) -> Result<(), Error> {
    for (i, v) in values.into_iter().enumerate() {
        no_nul(&format!("{field}[{i}]"), v)?;
    }
    Ok(())
}

fn no_nul_map<'a>(
    field: &str,
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), Error> {
    for (k, v) in map {
        no_nul(&format!("{field} key"), k)?;
        no_nul(&format!("{field}[{}]", quote(k)), v)?;
    }
    Ok(())
}

/// The host's CPUs and memory nodes, for `cpuset_cpus` and `cpuset_mems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub cpus: BTreeSet<u32>,
    pub mems: BTreeSet<u32>,
}

impl Node {
    /// Read once from `/sys/devices/system/{cpu,node}/online` (no NUMA: node 0).
    pub fn get() -> &'static Node {
        static NODE: OnceLock<Node> = OnceLock::new();
        NODE.get_or_init(|| {
            let read = |path: &str| {
                std::fs::read_to_string(path)
                    .ok()
                    .and_then(|s| parse_list(s.trim()).ok())
            };
            Node {
                cpus: read("/sys/devices/system/cpu/online").unwrap_or_else(|| {
                    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                    (0..n as u32).collect()
                }),
                mems: read("/sys/devices/system/node/online").unwrap_or_else(|| [0].into()),
            }
        })
    }
}

/// A kernel list like `0-3,5`; at most 65536 ids.
pub fn parse_list(value: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    for part in value.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let (a, b): (u32, u32) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => return Err(format!("{part:?} is not a number or a range like 0-3")),
        };
        if b - a >= 65_536 || out.len() + (b - a) as usize >= 65_536 {
            return Err(format!("{part:?} is too large a range"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// A container's log path: relative, staying inside the pod's log directory (no `..`, not
/// absolute), no NUL, at most PATH_MAX bytes.
pub fn log_path(value: &str) -> Result<(), Error> {
    no_nul("log_path", value)?;
    if value.len() > MAX_PATH {
        return Err(invalid(format!(
            "log_path {} is longer than {MAX_PATH} bytes",
            quote(value)
        )));
    }
    let path = Path::new(value);
    if path.is_absolute() {
        return Err(invalid(format!(
            "log_path {} must be relative to the pod's log_directory",
            quote(value)
        )));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        || path.file_name().is_none()
    {
        return Err(invalid(format!(
            "log_path {} must name a file inside the pod's log_directory (no ..)",
            quote(value)
        )));
    }
    Ok(())
}

/// A pod's log directory: empty (no CRI log), or absolute without `..` and NUL.
pub fn log_directory(value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    no_nul("log_directory", value)?;
    let path = Path::new(value);
    if value.len() > MAX_PATH
        || !path.is_absolute()
        || path.components().any(|c| c == Component::ParentDir)
    {
        return Err(invalid(format!(
            "log_directory {} must be an absolute path without ..",
            quote(value)
        )));
    }
    Ok(())
}

/// An exec's command line: no NUL (emptiness is the exec's own check).
pub fn exec_cmd(cmd: &[String]) -> Result<(), Error> {
    match cmd.first() {
        None => return Err(invalid("exec command is required".into())),
        Some(first) if first.is_empty() => {
            return Err(invalid("exec command: the executable is empty".into()))
        }
        Some(_) => {}
    }
    no_nul_all("cmd", cmd)
}

/// Container resources (CreateContainer and UpdateContainerResources): what runc, crun and
/// the kernel accept. `field` prefixes the names (`linux.resources`).
pub fn resources(
    field: &str,
    res: &cri::LinuxContainerResources,
    node: &Node,
) -> Result<(), Error> {
    let bad = |name: &str, v: String, why: &str| Err(invalid(format!("{field}.{name} {v} {why}")));
    if res.memory_limit_in_bytes < 0 {
        return bad(
            "memory_limit_in_bytes",
            res.memory_limit_in_bytes.to_string(),
            "must not be negative",
        );
    }
    if res.memory_limit_in_bytes > 0 && res.memory_limit_in_bytes < MIN_MEMORY_LIMIT {
        return bad(
            "memory_limit_in_bytes",
            res.memory_limit_in_bytes.to_string(),
            &format!("is below the minimum of {MIN_MEMORY_LIMIT} bytes"),
        );
    }
    if !(0..=MAX_CPU_SHARES).contains(&res.cpu_shares) {
        return bad(
            "cpu_shares",
            res.cpu_shares.to_string(),
            &format!("is not between 0 and {MAX_CPU_SHARES}"),
        );
    }
    if res.cpu_period != 0 && !CPU_PERIOD.contains(&res.cpu_period) {
        return bad(
            "cpu_period",
            res.cpu_period.to_string(),
            "is not between 1000 and 1000000 microseconds",
        );
    }
    if !(res.cpu_quota == 0 || res.cpu_quota == -1 || res.cpu_quota >= MIN_CPU_QUOTA) {
        return bad(
            "cpu_quota",
            res.cpu_quota.to_string(),
            "must be -1 (unlimited), 0 (unset) or at least 1000 microseconds",
        );
    }
    if !(-1000..=1000).contains(&res.oom_score_adj) {
        return bad(
            "oom_score_adj",
            res.oom_score_adj.to_string(),
            "is not between -1000 and 1000",
        );
    }
    for (name, value, have) in [
        ("cpuset_cpus", &res.cpuset_cpus, &node.cpus),
        ("cpuset_mems", &res.cpuset_mems, &node.mems),
    ] {
        if value.is_empty() {
            continue;
        }
        let ids = parse_list(value)
            .map_err(|e| invalid(format!("{field}.{name} {}: {e}", quote(value))))?;
        if let Some(missing) = ids.iter().find(|id| !have.contains(id)) {
            return Err(invalid(format!(
                "{field}.{name} {}: {missing} is not online on this node (online: {})",
                quote(value),
                format_list(have)
            )));
        }
    }
    for (i, h) in res.hugepage_limits.iter().enumerate() {
        no_nul(
            &format!("{field}.hugepage_limits[{i}].page_size"),
            &h.page_size,
        )?;
    }
    for (key, value) in &res.unified {
        if key.is_empty()
            || key.contains(['/', '\0'])
            || key == "."
            || key == ".."
            || key.starts_with("cgroup.procs")
            || key.starts_with("cgroup.threads")
        {
            return Err(invalid(format!(
                "{field}.unified key {} is not a cgroup file of the container",
                quote(key)
            )));
        }
        no_nul(&format!("{field}.unified[{}]", quote(key)), value)?;
    }
    Ok(())
}

fn format_list(ids: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = ids.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// A mount target runtimes refuse: `/proc` itself or below it, except the files runc allows.
fn refused_mount_target(path: &str) -> bool {
    let mut clean = std::path::PathBuf::from("/");
    for c in Path::new(path).components() {
        if let Component::Normal(n) = c {
            clean.push(n);
        }
    }
    let clean = clean.to_string_lossy();
    (clean == "/proc" || clean.starts_with("/proc/"))
        && !PROC_MOUNT_ALLOWED.contains(&clean.as_ref())
}

/// Everything of a CreateContainer config that cannot work, found before anything is created.
pub fn container_config(config: &cri::ContainerConfig, node: &Node) -> Result<(), Error> {
    if let Some(image) = &config.image {
        no_nul("image.image", &image.image)?;
    }
    no_nul_all("command", &config.command)?;
    no_nul_all("args", &config.args)?;
    no_nul("working_dir", &config.working_dir)?;
    for (i, kv) in config.envs.iter().enumerate() {
        no_nul(&format!("envs[{i}].key"), &kv.key)?;
        no_nul(&format!("envs[{i}].value"), &kv.value)?;
    }
    for (i, m) in config.mounts.iter().enumerate() {
        no_nul(&format!("mounts[{i}].container_path"), &m.container_path)?;
        no_nul(&format!("mounts[{i}].host_path"), &m.host_path)?;
        if m.container_path.split('/').any(|c| c == "..") {
            return Err(invalid(format!(
                "mounts[{i}].container_path {} must not contain ..",
                quote(&m.container_path)
            )));
        }
        if refused_mount_target(&m.container_path) {
            return Err(invalid(format!(
                "mounts[{i}].container_path {}: runtimes refuse mounts over /proc",
                quote(&m.container_path)
            )));
        }
    }
    for (i, d) in config.devices.iter().enumerate() {
        no_nul(&format!("devices[{i}].container_path"), &d.container_path)?;
        no_nul(&format!("devices[{i}].host_path"), &d.host_path)?;
        no_nul(&format!("devices[{i}].permissions"), &d.permissions)?;
    }
    for (i, d) in config.cdi_devices.iter().enumerate() {
        no_nul(&format!("cdi_devices[{i}].name"), &d.name)?;
    }
    no_nul_map("labels", &config.labels)?;
    no_nul_map("annotations", &config.annotations)?;
    if !config.log_path.is_empty() {
        log_path(&config.log_path)?;
    }
    let Some(linux) = &config.linux else {
        return Ok(());
    };
    if let Some(res) = &linux.resources {
        resources("linux.resources", res, node)?;
    }
    if let Some(sc) = &linux.security_context {
        const SC: &str = "linux.security_context";
        no_nul(&format!("{SC}.run_as_username"), &sc.run_as_username)?;
        no_nul_all(&format!("{SC}.masked_paths"), &sc.masked_paths)?;
        no_nul_all(&format!("{SC}.readonly_paths"), &sc.readonly_paths)?;
        // The deprecated forms still reach the spec generator.
        #[allow(deprecated)]
        let (apparmor_profile, seccomp_profile_path) =
            (&sc.apparmor_profile, &sc.seccomp_profile_path);
        no_nul(&format!("{SC}.apparmor_profile"), apparmor_profile)?;
        no_nul(&format!("{SC}.seccomp_profile_path"), seccomp_profile_path)?;
        for (name, profile) in [("seccomp", &sc.seccomp), ("apparmor", &sc.apparmor)] {
            if let Some(p) = profile {
                no_nul(&format!("{SC}.{name}.localhost_ref"), &p.localhost_ref)?;
            }
        }
        if let Some(se) = &sc.selinux_options {
            for (name, v) in [
                ("user", &se.user),
                ("role", &se.role),
                ("type", &se.r#type),
                ("level", &se.level),
            ] {
                no_nul(&format!("{SC}.selinux_options.{name}"), v)?;
            }
        }
        if let Some(caps) = &sc.capabilities {
            no_nul_all(
                &format!("{SC}.capabilities.add_capabilities"),
                &caps.add_capabilities,
            )?;
            no_nul_all(
                &format!("{SC}.capabilities.drop_capabilities"),
                &caps.drop_capabilities,
            )?;
        }
        if let Some(ns) = &sc.namespace_options {
            no_nul(&format!("{SC}.namespace_options.target_id"), &ns.target_id)?;
            if ns.pid == cri::NamespaceMode::Target as i32 && ns.target_id.is_empty() {
                return Err(invalid(format!(
                    "{SC}.namespace_options: pid mode TARGET requires target_id"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            cpus: (0..4).collect(),
            mems: [0].into(),
        }
    }

    fn with_resources(f: impl FnOnce(&mut cri::LinuxContainerResources)) -> cri::ContainerConfig {
        let mut res = cri::LinuxContainerResources::default();
        f(&mut res);
        cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(res),
                security_context: None,
            }),
            ..Default::default()
        }
    }

    fn refused(config: &cri::ContainerConfig, field: &str) {
        match container_config(config, &node()) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(field), "{m} (want {field})"),
            other => panic!("expected InvalidArgument naming {field}, got {other:?}"),
        }
    }

    #[test]
    fn log_path_stays_inside_the_log_directory() {
        for ok in ["c/0.log", "0.log", "./a/b.log"] {
            log_path(ok).unwrap();
        }
        for bad in [
            "/abs/path.log",
            "../../../../tmp/x.log",
            "a/../../x.log",
            "a/..",
            "",
            "x\0y",
        ] {
            assert!(log_path(bad).is_err(), "{bad:?}");
        }
        log_directory("/var/log/pods/ns_name_uid").unwrap();
        log_directory("").unwrap();
        for bad in ["relative/dir", "/var/log/../../etc", "/x\0"] {
            assert!(log_directory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nul_bytes_are_refused_naming_the_field() {
        let mut c = cri::ContainerConfig {
            command: vec!["sh".into(), "a\0b".into()],
            ..Default::default()
        };
        refused(&c, "command[1]");
        c.command.clear();
        c.envs.push(cri::KeyValue {
            key: "K".into(),
            value: "v\0".into(),
        });
        refused(&c, "envs[0].value");
        c.envs.clear();
        c.mounts.push(cri::Mount {
            container_path: "/data".into(),
            host_path: "/tmp\0x".into(),
            ..Default::default()
        });
        refused(&c, "mounts[0].host_path");
        c.mounts.clear();
        c.log_path = "x\0.log".into();
        refused(&c, "log_path");
        assert!(exec_cmd(&["ls".into(), "\0".into()]).is_err());
        exec_cmd(&["ls".into()]).unwrap();
        assert!(exec_cmd(&[]).is_err());
        assert!(exec_cmd(&[String::new()]).is_err());
    }

    #[test]
    fn resources_the_kernel_refuses_are_invalid() {
        refused(
            &with_resources(|r| r.memory_limit_in_bytes = 4096),
            "memory_limit_in_bytes",
        );
        refused(
            &with_resources(|r| r.memory_limit_in_bytes = -5),
            "memory_limit_in_bytes",
        );
        refused(&with_resources(|r| r.oom_score_adj = 5000), "oom_score_adj");
        refused(
            &with_resources(|r| r.oom_score_adj = -1001),
            "oom_score_adj",
        );
        refused(&with_resources(|r| r.cpu_quota = -5), "cpu_quota");
        refused(&with_resources(|r| r.cpu_quota = 10), "cpu_quota");
        refused(&with_resources(|r| r.cpu_period = 10), "cpu_period");
        refused(&with_resources(|r| r.cpu_shares = 1 << 40), "cpu_shares");
        refused(
            &with_resources(|r| r.cpuset_cpus = "0-7".into()),
            "cpuset_cpus",
        );
        refused(
            &with_resources(|r| r.cpuset_cpus = "3-1".into()),
            "cpuset_cpus",
        );
        refused(
            &with_resources(|r| r.cpuset_cpus = "0-4294967295".into()),
            "cpuset_cpus",
        );
        refused(
            &with_resources(|r| r.cpuset_mems = "1".into()),
            "cpuset_mems",
        );
        for key in ["../cgroup.procs", "a/b", "..", "cgroup.procs", ""] {
            refused(
                &with_resources(|r| {
                    r.unified.insert(key.into(), "1".into());
                }),
                "unified",
            );
        }
        let ok = with_resources(|r| {
            r.memory_limit_in_bytes = 64 << 20;
            r.cpu_quota = -1;
            r.cpu_period = 100_000;
            r.cpu_shares = 1024;
            r.oom_score_adj = 1000;
            r.cpuset_cpus = "0-1,3".into();
            r.cpuset_mems = "0".into();
            r.unified.insert("memory.high".into(), "max".into());
        });
        container_config(&ok, &node()).unwrap();
    }

    #[test]
    fn pid_target_needs_a_target_and_proc_mounts_are_refused() {
        let c = cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                resources: None,
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Target as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        refused(&c, "target_id");
        for (target, ok) in [
            ("/proc", false),
            ("/proc/sys/kernel", false),
            ("//proc/./self", false),
            ("/proc/meminfo", true),
            ("/procfs", true),
            ("/sys/fs/bpf", true),
            ("/data/../proc", false),
        ] {
            let c = cri::ContainerConfig {
                mounts: vec![cri::Mount {
                    container_path: target.into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(container_config(&c, &node()).is_ok(), ok, "{target}");
        }
    }

    #[test]
    fn lists_parse_and_format() {
        assert_eq!(parse_list("0-2,5").unwrap(), [0, 1, 2, 5].into());
        assert!(parse_list("a").is_err());
        assert!(parse_list("").is_err());
        assert_eq!(format_list(&[0, 1, 2, 5].into()), "0-2,5");
        assert!(!Node::get().cpus.is_empty());
    }
}
