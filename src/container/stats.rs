//! Container and pod statistics (`ContainerStats`, `PodSandboxStats` and their lists): CPU and
//! memory from the cgroups, the writable layer from the container's overlay upper dir, the
//! pod's network counters from `/proc/net/dev` inside its network namespace.
//!
//! CPU rates (`usage_nano_cores`) need two samples: the previous cumulative figure of every
//! container and pod is kept in memory, so the first call after a start reports none. Blocking;
//! callers use `spawn_blocking`. Must not know about CRI types.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::ContainerRecord;
use super::{Containers, Filter};
use crate::cgroups::Usage;
use crate::error::Result;
use crate::sandbox::record::SandboxRecord;
use crate::util::{join_err, lock, now_ns};

/// The figures of one container at `timestamp`.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub record: Arc<ContainerRecord>,
    /// Unix time in nanoseconds when the figures were read.
    pub timestamp: i64,
    /// CPU/memory/pids of the container's cgroup; `None` once the cgroup is gone.
    pub cgroup: Option<Usage>,
    /// CPU use since the previous sample, in billionths of a core.
    pub nano_cores: Option<u64>,
    pub writable_layer: LayerUsage,
}

/// Bytes (allocated blocks) and inodes under the container's overlay upper dir.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Counters of one network interface in the pod's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The figures of one pod: its cgroup (or the sum of its containers' when it has no cgroup
/// parent), its interfaces and its containers.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub record: Arc<SandboxRecord>,
    pub timestamp: i64,
    pub cgroup: Option<Usage>,
    pub nano_cores: Option<u64>,
    pub interfaces: Vec<InterfaceUsage>,
    pub containers: Vec<ContainerUsage>,
}

impl Containers {
    /// Stats of the containers `filter` selects (ListContainerStats).
    pub async fn stats(self: &Arc<Self>, filter: &Filter) -> Result<Vec<ContainerUsage>> {
        let records = self.list(filter).await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            records
                .into_iter()
                .map(|rec| this.usage_blocking(rec))
                .collect()
        })
        .await
        .map_err(join_err)
    }

    /// Stats of one container by id or unique prefix (ContainerStats); `NotFound` if unknown.
    pub async fn stats_of(self: &Arc<Self>, id: &str) -> Result<ContainerUsage> {
        let rec = self.resolve(id)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.usage_blocking(rec))
            .await
            .map_err(join_err)
    }

    /// Stats of `pods` (PodSandboxStats / ListPodSandboxStats), with their containers.
    pub async fn pod_stats(
        self: &Arc<Self>,
        pods: Vec<Arc<SandboxRecord>>,
    ) -> Result<Vec<PodUsage>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            pods.into_iter()
                .map(|pod| this.pod_usage_blocking(pod))
                .collect()
        })
        .await
        .map_err(join_err)
    }

    fn usage_blocking(&self, record: Arc<ContainerRecord>) -> ContainerUsage {
        let parent = self
            .sandboxes
            .get(&record.pod_id)
            .map(|p| p.spec.cgroup_parent.clone())
            .unwrap_or_default();
        let path = super::spec::cgroups_path(&parent, &record.id);
        let timestamp = now_ns();
        let cgroup = self
            .settings
            .cgroups
            .as_ref()
            .and_then(|cg| cg.usage(&path.to_string_lossy()).ok())
            .filter(|u| u.cpu_ns.is_some() || u.memory_bytes.is_some());
        let nano_cores = cgroup
            .and_then(|u| u.cpu_ns)
            .and_then(|cpu| self.rate(&record.id, timestamp, cpu));
        let writable_layer = dir_usage(&record.storage.join("upper"));
        ContainerUsage {
            record,
            timestamp,
            cgroup,
            nano_cores,
            writable_layer,
        }
    }

    fn pod_usage_blocking(&self, record: Arc<SandboxRecord>) -> PodUsage {
        let containers: Vec<ContainerUsage> = self
            .in_pod(&record.id)
            .into_iter()
            .filter_map(|id| self.records.get(&id))
            .map(|rec| self.usage_blocking(rec))
            .collect();
        let timestamp = now_ns();
        let own = (!record.spec.cgroup_parent.is_empty())
            .then(|| {
                self.settings
                    .cgroups
                    .as_ref()
                    .and_then(|cg| cg.usage(&record.spec.cgroup_parent).ok())
            })
            .flatten()
            .filter(|u| u.cpu_ns.is_some() || u.memory_bytes.is_some());
        let cgroup = own.or_else(|| sum(containers.iter().filter_map(|c| c.cgroup)));
        let nano_cores = cgroup
            .and_then(|u| u.cpu_ns)
            .and_then(|cpu| self.rate(&format!("pod:{}", record.id), timestamp, cpu));
        let interfaces = record
            .ns_path("net")
            .map(|netns| interfaces(&netns))
            .unwrap_or_default();
        PodUsage {
            record,
            timestamp,
            cgroup,
            nano_cores,
            interfaces,
            containers,
        }
    }

    /// Records `cpu_ns` at `now` under `key` and returns the rate since the previous sample.
    fn rate(&self, key: &str, now: i64, cpu_ns: u64) -> Option<u64> {
        let previous = lock(&self.cpu_samples).insert(key.to_string(), (now, cpu_ns));
        let (then, before) = previous?;
        let elapsed = u64::try_from(now - then).ok().filter(|e| *e > 0)?;
        let used = cpu_ns.checked_sub(before)?;
        Some((u128::from(used) * 1_000_000_000 / u128::from(elapsed)) as u64)
    }

    /// Forgets the CPU samples of a removed container.
    pub(super) fn forget_samples(&self, id: &str) {
        lock(&self.cpu_samples).remove(id);
    }

    /// Forgets the CPU samples of a removed pod.
    pub fn forget_pod_samples(&self, pod_id: &str) {
        lock(&self.cpu_samples).remove(&format!("pod:{pod_id}"));
    }
}

/// Adds up the figures of several cgroups (a pod without a cgroup parent).
fn sum(usages: impl Iterator<Item = Usage>) -> Option<Usage> {
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    usages.fold(None, |acc: Option<Usage>, u| {
        let a = acc.unwrap_or_default();
        Some(Usage {
            cpu_ns: add(a.cpu_ns, u.cpu_ns),
            memory_bytes: add(a.memory_bytes, u.memory_bytes),
            working_set_bytes: add(a.working_set_bytes, u.working_set_bytes),
            rss_bytes: add(a.rss_bytes, u.rss_bytes),
            page_faults: add(a.page_faults, u.page_faults),
            major_page_faults: add(a.major_page_faults, u.major_page_faults),
            memory_limit: None,
            swap_bytes: add(a.swap_bytes, u.swap_bytes),
            processes: add(a.processes, u.processes),
        })
    })
}

/// Allocated bytes and inodes under `dir`, without following symlinks or crossing into other
/// filesystems; a missing dir is empty.
pub fn dir_usage(dir: &Path) -> LayerUsage {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return LayerUsage::default();
    };
    let mut total = LayerUsage::default();
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut seen_links: HashMap<(u64, u64), ()> = HashMap::new();
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != top.dev() {
                continue;
            }
            if meta.nlink() > 1
                && !meta.is_dir()
                && seen_links.insert((meta.dev(), meta.ino()), ()).is_some()
            {
                continue;
            }
            total.inodes += 1;
            total.bytes += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// `/proc/net/dev` of the network namespace at `netns`, loopback left out.
fn interfaces(netns: &Path) -> Vec<InterfaceUsage> {
    crius_cni::in_netns(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default()
    })
    .map(|text| parse_net_dev(&text))
    .unwrap_or_default()
}

fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if name == "lo" || f.len() < 16 {
                return None;
            }
            Some(InterfaceUsage {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses_and_skips_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    5000      40    2    0    0     0          0         0     7000      50    3    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text),
            [InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 7000,
                tx_errors: 3,
            }]
        );
    }

    #[test]
    fn dir_usage_counts_blocks_and_inodes_once_per_hardlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/big"), vec![7u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.path().join("etc/big"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("dangling")).unwrap();
        let u = dir_usage(dir.path());
        assert_eq!(u.inodes, 3, "etc, big (once), dangling");
        assert!(u.bytes >= 64 * 1024, "{u:?}");
        assert_eq!(
            dir_usage(&dir.path().join("missing")),
            LayerUsage::default()
        );
    }

    #[test]
    fn sum_adds_what_is_known() {
        let a = Usage {
            cpu_ns: Some(10),
            memory_bytes: Some(100),
            ..Default::default()
        };
        let b = Usage {
            cpu_ns: Some(5),
            processes: Some(2),
            ..Default::default()
        };
        let s = sum([a, b].into_iter()).unwrap();
        assert_eq!(
            (s.cpu_ns, s.memory_bytes, s.processes),
            (Some(15), Some(100), Some(2))
        );
        assert_eq!(s.rss_bytes, None);
        assert!(sum(std::iter::empty()).is_none());
    }
}
