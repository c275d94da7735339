//! cgroupfs: creating, limiting and removing the cgroups crius owns (pod cgroup parents now,
//! container cgroups through the OCI runtime later).
//!
//! Works on cgroup v1 (every controller hierarchy mounted under the root), v2 (one unified
//! hierarchy) and the hybrid layout of this kind of machine (v1 controllers plus a cgroup2 mount
//! at `unified`): a cgroup path is created in every hierarchy so that the runtime finds its
//! parent everywhere. Only directories crius created are ever removed.
//!
//! Owns: directories and limit files under the cgroup root. Must not: move processes (the OCI
//! runtime does) or know CRI types. Everything here is blocking.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The default mount point of the cgroup filesystems.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup parent {path:?}: {reason}")]
    Invalid { path: String, reason: &'static str },
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl CgroupError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
        move |source| CgroupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Limits applied to a cgroup; zero/empty fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub cpu_period: u64,
    pub cpu_quota: i64,
    pub cpu_shares: u64,
    pub memory_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// The cgroup hierarchies of this host.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    /// `(hierarchy dir, is_v2)`.
    hierarchies: Vec<(PathBuf, bool)>,
}

impl Cgroups {
    /// Discovers the hierarchies under `root` (normally [`DEFAULT_ROOT`]).
    pub fn discover(root: &Path) -> Result<Self, CgroupError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Cgroups {
                root: root.to_path_buf(),
                hierarchies: vec![(root.to_path_buf(), true)],
            });
        }
        let mut hierarchies = Vec::new();
        let entries = std::fs::read_dir(root).map_err(CgroupError::io(root))?;
        for dirent in entries {
            let dirent = dirent.map_err(CgroupError::io(root))?;
            let Ok(kind) = dirent.file_type() else {
                continue;
            };
            // `cpu,cpuacct`-style symlinks point at a hierarchy listed under its own name.
            if !kind.is_dir() {
                continue;
            }
            let path = dirent.path();
            let v2 = path.join("cgroup.controllers").exists();
            if v2 || path.join("cgroup.procs").exists() {
                hierarchies.push((path, v2));
            }
        }
        hierarchies.sort();
        Ok(Cgroups {
            root: root.to_path_buf(),
            hierarchies,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directories [`Cgroups::ensure`] would create for `cgroup` now (parents first): what
    /// a create records before it makes them, so that a crash in between can be cleaned up.
    pub fn missing(&self, cgroup: &str) -> Result<Vec<PathBuf>, CgroupError> {
        let rel = relative(cgroup)?;
        let mut out = Vec::new();
        for (hierarchy, _) in &self.hierarchies {
            let mut dir = hierarchy.clone();
            for part in rel.components() {
                dir.push(part);
                if !dir.exists() {
                    out.push(dir.clone());
                }
            }
        }
        Ok(out)
    }

    /// Creates `cgroup` (an absolute cgroupfs path such as `/kubepods/pod1`) in every hierarchy
    /// and returns the directories that did not exist before (parents first), which is what
    /// [`Cgroups::remove_created`] later removes. On failure, what was created is removed again.
    pub fn ensure(&self, cgroup: &str) -> Result<Vec<PathBuf>, CgroupError> {
        let rel = relative(cgroup)?;
        let mut created = Vec::new();
        for (hierarchy, _) in &self.hierarchies {
            let mut dir = hierarchy.clone();
            for part in rel.components() {
                let parent = dir.clone();
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        created.push(dir.clone());
                        if hierarchy.ends_with("cpuset") {
                            if let Err(e) = init_cpuset(&parent, &dir) {
                                let _ = self.remove_created(&created);
                                return Err(e);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        let _ = self.remove_created(&created);
                        return Err(CgroupError::io(&dir)(e));
                    }
                }
            }
        }
        Ok(created)
    }

    /// Writes `limits` into `cgroup` in the hierarchies that carry each controller.
    pub fn apply(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        let rel = relative(cgroup)?;
        for (hierarchy, v2) in &self.hierarchies {
            let dir = hierarchy.join(&rel);
            if *v2 {
                // In hybrid mode the v1 hierarchies own the controllers; only a pure v2 host
                // (one hierarchy at the root) takes limits here.
                if hierarchy != &self.root {
                    continue;
                }
                apply_v2(&dir, limits)?;
            } else {
                apply_v1(hierarchy, &dir, limits)?;
            }
        }
        Ok(())
    }

    /// Removes directories returned by [`Cgroups::ensure`], deepest first; missing ones are fine.
    pub fn remove_created(&self, created: &[PathBuf]) -> Result<(), CgroupError> {
        let mut dirs: Vec<&PathBuf> = created
            .iter()
            .filter(|d| d.starts_with(&self.root))
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut first_err = None;
        for dir in dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(CgroupError::io(dir)(e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// CPU, memory and process figures of one cgroup, from whichever hierarchy carries each
/// (cgroup v1 controllers first; in hybrid mode the v2 mount only fills what v1 lacks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time (`cpuacct.usage`, v2 `cpu.stat usage_usec`).
    pub cpu_ns: Option<u64>,
    /// `memory.usage_in_bytes` / `memory.current`.
    pub memory_bytes: Option<u64>,
    /// Usage minus inactive file pages: what kubelet evicts on.
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The memory limit, when there is one.
    pub memory_limit: Option<u64>,
    pub swap_bytes: Option<u64>,
    /// `pids.current`.
    pub processes: Option<u64>,
    /// Page cache (v1 `total_cache`, v2 `file` of `memory.stat`).
    pub cache_bytes: Option<u64>,
    /// OOM kills in the cgroup (v1 `memory.oom_control`, v2 `memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`).
fn read_keyed(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn keyed(stat: &[(String, u64)], keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|k| stat.iter().find(|(name, _)| name == k).map(|(_, v)| *v))
}

impl Cgroups {
    /// Reads the usage of `cgroup` (an absolute cgroupfs path). Missing files (a cgroup that
    /// is gone, a controller that is not mounted) leave their figures `None`.
    pub fn usage(&self, cgroup: &str) -> Result<Usage, CgroupError> {
        let rel = relative(cgroup)?;
        let mut u = Usage::default();
        // v1 first: in hybrid mode it owns the controllers.
        let mut ordered: Vec<&(PathBuf, bool)> = self.hierarchies.iter().collect();
        ordered.sort_by_key(|(_, v2)| *v2);
        for (hierarchy, v2) in ordered {
            let dir = hierarchy.join(&rel);
            if !dir.is_dir() {
                continue;
            }
            if *v2 {
                read_v2(&dir, &mut u);
            } else {
                read_v1(&dir, &mut u);
            }
        }
        Ok(u)
    }
}

fn read_v1(dir: &Path, u: &mut Usage) {
    if u.cpu_ns.is_none() {
        u.cpu_ns = read_u64(&dir.join("cpuacct.usage"));
    }
    if u.processes.is_none() {
        u.processes = read_u64(&dir.join("pids.current"));
    }
    if u.memory_bytes.is_none() {
        if let Some(usage) = read_u64(&dir.join("memory.usage_in_bytes")) {
            let stat = read_keyed(&dir.join("memory.stat"));
            let inactive = keyed(&stat, &["total_inactive_file", "inactive_file"]).unwrap_or(0);
            u.memory_bytes = Some(usage);
            u.working_set_bytes = Some(usage.saturating_sub(inactive));
            u.rss_bytes = keyed(&stat, &["total_rss", "rss"]);
            u.page_faults = keyed(&stat, &["total_pgfault", "pgfault"]);
            u.major_page_faults = keyed(&stat, &["total_pgmajfault", "pgmajfault"]);
            // "Unlimited" is a huge page-rounded number on v1.
            u.memory_limit = read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < 1 << 62);
            u.swap_bytes = read_u64(&dir.join("memory.memsw.usage_in_bytes"))
                .map(|memsw| memsw.saturating_sub(usage));
            u.cache_bytes = keyed(&stat, &["total_cache", "cache"]);
            u.oom_kills = keyed(&read_keyed(&dir.join("memory.oom_control")), &["oom_kill"]);
        }
    }
}

fn read_v2(dir: &Path, u: &mut Usage) {
    if u.cpu_ns.is_none() {
        u.cpu_ns = keyed(&read_keyed(&dir.join("cpu.stat")), &["usage_usec"]).map(|us| us * 1000);
    }
    if u.processes.is_none() {
        u.processes = read_u64(&dir.join("pids.current"));
    }
    if u.memory_bytes.is_none() {
        if let Some(usage) = read_u64(&dir.join("memory.current")) {
            let stat = read_keyed(&dir.join("memory.stat"));
            let inactive = keyed(&stat, &["inactive_file"]).unwrap_or(0);
            u.memory_bytes = Some(usage);
            u.working_set_bytes = Some(usage.saturating_sub(inactive));
            u.rss_bytes = keyed(&stat, &["anon"]);
            u.page_faults = keyed(&stat, &["pgfault"]);
            u.major_page_faults = keyed(&stat, &["pgmajfault"]);
            u.memory_limit = read_u64(&dir.join("memory.max"));
            u.swap_bytes = read_u64(&dir.join("memory.swap.current"));
            u.cache_bytes = keyed(&stat, &["file"]);
            u.oom_kills = keyed(&read_keyed(&dir.join("memory.events")), &["oom_kill"]);
        }
    }
}

/// Validates an absolute cgroupfs path and returns it relative to a hierarchy.
pub fn relative(cgroup: &str) -> Result<PathBuf, CgroupError> {
    let invalid = |reason| CgroupError::Invalid {
        path: cgroup.to_string(),
        reason,
    };
    let path = Path::new(cgroup);
    if !path.is_absolute() {
        return Err(invalid(
            "the cgroupfs driver needs an absolute path such as /kubepods/pod<uid>",
        ));
    }
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => rel.push(p),
            _ => return Err(invalid("'.' and '..' are not allowed")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(invalid("the root cgroup cannot be a pod's parent"));
    }
    Ok(rel)
}

/// Expands a systemd slice name (`kubepods-burstable-pod1.slice`) into its cgroupfs path
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`).
pub fn systemd_slice_path(slice: &str) -> Result<String, CgroupError> {
    let invalid = |reason| CgroupError::Invalid {
        path: slice.to_string(),
        reason,
    };
    let Some(name) = slice.strip_suffix(".slice") else {
        return Err(invalid(
            "the systemd driver needs a slice name ending in .slice",
        ));
    };
    if name.is_empty() || name.contains('/') || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("not a valid slice name"));
    }
    if name == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return Err(invalid("empty component in slice name"));
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

fn init_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let from = parent.join(file);
        let value = std::fs::read_to_string(&from).map_err(CgroupError::io(&from))?;
        let to = dir.join(file);
        let current = std::fs::read_to_string(&to).unwrap_or_default();
        if current.trim().is_empty() {
            write(&to, value.trim())?;
        }
    }
    Ok(())
}

fn apply_v1(hierarchy: &Path, dir: &Path, l: &Limits) -> Result<(), CgroupError> {
    let name = hierarchy
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let controllers: Vec<&str> = name.split(',').collect();
    if controllers.contains(&"cpu") {
        if l.cpu_shares > 0 {
            write(&dir.join("cpu.shares"), &l.cpu_shares.to_string())?;
        }
        if l.cpu_period > 0 {
            write(&dir.join("cpu.cfs_period_us"), &l.cpu_period.to_string())?;
        }
        if l.cpu_quota != 0 {
            write(&dir.join("cpu.cfs_quota_us"), &l.cpu_quota.to_string())?;
        }
    }
    if controllers.contains(&"memory") && l.memory_limit_in_bytes > 0 {
        write(
            &dir.join("memory.limit_in_bytes"),
            &l.memory_limit_in_bytes.to_string(),
        )?;
    }
    if controllers.contains(&"cpuset") {
        if !l.cpuset_cpus.is_empty() {
            write(&dir.join("cpuset.cpus"), &l.cpuset_cpus)?;
        }
        if !l.cpuset_mems.is_empty() {
            write(&dir.join("cpuset.mems"), &l.cpuset_mems)?;
        }
    }
    Ok(())
}

fn apply_v2(dir: &Path, l: &Limits) -> Result<(), CgroupError> {
    if l.cpu_shares > 0 {
        write(
            &dir.join("cpu.weight"),
            &shares_to_weight(l.cpu_shares).to_string(),
        )?;
    }
    if l.cpu_quota != 0 || l.cpu_period > 0 {
        let quota = if l.cpu_quota > 0 {
            l.cpu_quota.to_string()
        } else {
            "max".to_string()
        };
        let period = if l.cpu_period > 0 {
            l.cpu_period
        } else {
            100_000
        };
        write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
    }
    if l.memory_limit_in_bytes > 0 {
        write(
            &dir.join("memory.max"),
            &l.memory_limit_in_bytes.to_string(),
        )?;
    }
    if !l.cpuset_cpus.is_empty() {
        write(&dir.join("cpuset.cpus"), &l.cpuset_cpus)?;
    }
    if !l.cpuset_mems.is_empty() {
        write(&dir.join("cpuset.mems"), &l.cpuset_mems)?;
    }
    Ok(())
}

/// The OCI/runc conversion of v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(CgroupError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) -> Cgroups {
        for c in ["cpu", "memory", "cpuset", "unified"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
            std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
        std::fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
        Cgroups::discover(root).unwrap()
    }

    #[test]
    fn ensure_creates_in_every_hierarchy_and_remove_takes_only_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let cg = fake_v1(dir.path());
        std::fs::create_dir_all(dir.path().join("memory/kubepods")).unwrap();
        let created = cg.ensure("/kubepods/pod1").unwrap();
        assert!(dir.path().join("cpu/kubepods/pod1").is_dir());
        assert!(dir.path().join("unified/kubepods/pod1").is_dir());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpuset/kubepods/cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert!(created.contains(&dir.path().join("cpu/kubepods")));
        assert!(!created.contains(&dir.path().join("memory/kubepods")));
        cg.apply(
            "/kubepods/pod1",
            &Limits {
                cpu_shares: 512,
                memory_limit_in_bytes: 1 << 20,
                ..Limits::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu/kubepods/pod1/cpu.shares")).unwrap(),
            "512"
        );
        // Limit files written by `apply` make the fake dirs non-empty; real cgroupfs rmdir works.
        for f in [
            "cpu/kubepods/pod1/cpu.shares",
            "memory/kubepods/pod1/memory.limit_in_bytes",
        ] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            std::fs::remove_file(dir.path().join("cpuset/kubepods/pod1").join(f)).unwrap();
            std::fs::remove_file(dir.path().join("cpuset/kubepods").join(f)).unwrap();
        }
        cg.remove_created(&created).unwrap();
        assert!(!dir.path().join("cpu/kubepods").exists());
        assert!(dir.path().join("memory/kubepods").is_dir());
        assert!(!dir.path().join("memory/kubepods/pod1").exists());
    }

    #[test]
    fn parents_must_be_absolute_and_plain() {
        assert!(relative("kubepods").is_err());
        assert!(relative("/kubepods/../etc").is_err());
        assert!(relative("/").is_err());
        assert_eq!(relative("/a/b").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(
            systemd_slice_path("kubepods-burstable-pod1.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        assert!(systemd_slice_path("/kubepods").is_err());
        assert!(systemd_slice_path("a--b.slice").is_err());
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn usage_reads_v1_controllers_and_fills_gaps_from_v2() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for c in ["cpuacct", "memory", "pids", "unified"] {
            std::fs::create_dir_all(root.join(c).join("pod/ctr")).unwrap();
            std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
        let cg = Cgroups::discover(root).unwrap();
        let at = |c: &str, f: &str, v: &str| {
            std::fs::write(root.join(c).join("pod/ctr").join(f), v).unwrap();
        };
        at("cpuacct", "cpuacct.usage", "5000\n");
        at("unified", "cpu.stat", "usage_usec 9\nuser_usec 1\n");
        at("memory", "memory.usage_in_bytes", "1000\n");
        at(
            "memory",
            "memory.stat",
            "rss 10\ntotal_rss 300\ninactive_file 1\ntotal_inactive_file 200\ntotal_pgfault 7\ntotal_pgmajfault 2\n",
        );
        at("memory", "memory.limit_in_bytes", "9223372036854771712\n");
        at("pids", "pids.current", "3\n");
        let u = cg.usage("/pod/ctr").unwrap();
        assert_eq!(u.cpu_ns, Some(5000), "v1 cpuacct wins over the v2 mount");
        assert_eq!(u.memory_bytes, Some(1000));
        assert_eq!(u.working_set_bytes, Some(800));
        assert_eq!(u.rss_bytes, Some(300));
        assert_eq!((u.page_faults, u.major_page_faults), (Some(7), Some(2)));
        assert_eq!(u.memory_limit, None, "unlimited");
        assert_eq!(u.processes, Some(3));

        // Without cpuacct the v2 cpu.stat is used; a missing cgroup reads as nothing.
        std::fs::remove_file(root.join("cpuacct/pod/ctr/cpuacct.usage")).unwrap();
        assert_eq!(cg.usage("/pod/ctr").unwrap().cpu_ns, Some(9000));
        assert_eq!(cg.usage("/pod/gone").unwrap(), Usage::default());
        assert!(cg.usage("relative").is_err());
    }
}
