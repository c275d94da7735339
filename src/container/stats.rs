//! Container and pod statistics (`ContainerStats`, `PodSandboxStats` and their lists): CPU and
//! memory from the cgroups, the writable layer from the container's overlay upper dir, the
//! pod's network counters from `/proc/net/dev` inside its network namespace.
//!
//! CPU rates (`usage_nano_cores`) need two samples: the previous cumulative figure of every
//! container and pod is kept in memory, so the first call after a start reports none. Blocking;
//! callers use `spawn_blocking`. Must not know about CRI types.
//!
//! `ListPodSandboxMetrics` is served from a snapshot of every pod's figures that a background
//! task refreshes once a second while someone asks for metrics (it stops after a minute without
//! a request), so a call never waits for the cgroups and network namespaces of every pod: only
//! the first one after a start or an idle minute waits for one refresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
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

/// How often the metrics snapshot is refreshed while metrics are asked for.
pub const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// A snapshot older than this is not served: the caller waits for a fresh one.
const METRICS_STALE: Duration = Duration::from_secs(3);
/// The refresher stops after this long without a request.
const METRICS_IDLE: Duration = Duration::from_secs(60);
/// How long a caller waits for a fresh snapshot.
const METRICS_WAIT: Duration = Duration::from_secs(30);

type Snapshot = Option<(Instant, Arc<Vec<PodUsage>>)>;

/// Every pod's figures for ListPodSandboxMetrics, refreshed in the background.
#[derive(Debug)]
pub struct MetricsSnapshot {
    snapshot: tokio::sync::watch::Sender<Snapshot>,
    last_request: Mutex<Instant>,
    running: AtomicBool,
}

impl Default for MetricsSnapshot {
    fn default() -> Self {
        MetricsSnapshot {
            snapshot: tokio::sync::watch::Sender::new(None),
            last_request: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
        }
    }
}

impl Containers {
    /// Every pod's figures, at most a few seconds old (ListPodSandboxMetrics): from the
    /// snapshot, starting its refresher if it is not running; `DeadlineExceeded` if no fresh
    /// snapshot comes within 30 s.
    pub async fn pod_metrics(self: &Arc<Self>) -> Result<Arc<Vec<PodUsage>>> {
        let snap = &self.metrics_snapshot;
        *lock(&snap.last_request) = Instant::now();
        let mut rx = snap.snapshot.subscribe();
        if !snap.running.swap(true, Ordering::SeqCst) {
            let this = self.clone();
            tokio::spawn(async move { this.refresh_metrics().await });
        }
        let fresh = |s: &Snapshot| {
            s.as_ref()
                .is_some_and(|(at, _)| at.elapsed() < METRICS_STALE)
        };
        let waited = tokio::time::timeout(METRICS_WAIT, rx.wait_for(fresh)).await;
        match waited {
            Ok(Ok(s)) => Ok(s.as_ref().map(|(_, u)| u.clone()).unwrap_or_default()),
            _ => Err(crate::error::Error::DeadlineExceeded(
                "pod metrics were not collected within 30s".into(),
            )),
        }
    }

    /// The refresher: a snapshot every [`METRICS_REFRESH`] until [`METRICS_IDLE`] without a
    /// request.
    async fn refresh_metrics(self: Arc<Self>) {
        let snap = &self.metrics_snapshot;
        let mut tick = tokio::time::interval(METRICS_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if lock(&snap.last_request).elapsed() > METRICS_IDLE {
                snap.running.store(false, Ordering::SeqCst);
                // A request that came in meanwhile saw the refresher running and waits for it:
                // go on, unless such a request has started a new refresher already.
                let recent = lock(&snap.last_request).elapsed() <= METRICS_IDLE;
                if !recent || snap.running.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
            let pods = self.sandboxes.list(&crate::sandbox::Filter::default());
            let this = self.clone();
            let collected = crate::telemetry::spawn_blocking(move || {
                pods.into_iter()
                    .map(|pod| this.pod_usage_blocking(pod, false))
                    .collect::<Vec<_>>()
            })
            .await;
            match collected {
                Ok(mut usages) => {
                    // Pods removed while their figures were read are not shown again.
                    usages.retain(|u| self.sandboxes.get(&u.record.id).is_some());
                    snap.snapshot
                        .send_replace(Some((Instant::now(), Arc::new(usages))));
                }
                Err(e) => tracing::warn!(error = %e, "collecting pod metrics failed"),
            }
        }
    }

    /// Stats of the containers `filter` selects (ListContainerStats).
    pub async fn stats(self: &Arc<Self>, filter: &Filter) -> Result<Vec<ContainerUsage>> {
        let records = self.list(filter).await?;
        let this = self.clone();
        crate::telemetry::spawn_blocking(move || {
            records
                .into_iter()
                .map(|rec| this.usage_blocking(rec, true))
                .collect()
        })
        .await
        .map_err(join_err)
    }

    /// Stats of one container by id or unique prefix (ContainerStats); `NotFound` if unknown.
    pub async fn stats_of(self: &Arc<Self>, id: &str) -> Result<ContainerUsage> {
        let rec = self.resolve(id)?;
        let this = self.clone();
        crate::telemetry::spawn_blocking(move || this.usage_blocking(rec, true))
            .await
            .map_err(join_err)
    }

    /// Stats of `pods` (PodSandboxStats / ListPodSandboxStats), with their containers.
    pub async fn pod_stats(
        self: &Arc<Self>,
        pods: Vec<Arc<SandboxRecord>>,
    ) -> Result<Vec<PodUsage>> {
        let this = self.clone();
        crate::telemetry::spawn_blocking(move || {
            pods.into_iter()
                .map(|pod| this.pod_usage_blocking(pod, true))
                .collect()
        })
        .await
        .map_err(join_err)
    }

    /// The figures of one container; `rates` takes a CPU sample for `nano_cores` (the stats
    /// RPCs), which the metrics refresh must not do (it would shorten their sampling window).
    fn usage_blocking(&self, record: Arc<ContainerRecord>, rates: bool) -> ContainerUsage {
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
            .filter(|_| rates)
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

    fn pod_usage_blocking(&self, record: Arc<SandboxRecord>, rates: bool) -> PodUsage {
        let containers: Vec<ContainerUsage> = self
            .in_pod(&record.id)
            .into_iter()
            .filter_map(|id| self.records.get(&id))
            .map(|rec| self.usage_blocking(rec, rates))
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
            .filter(|_| rates)
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
        // Nor is it in the metrics any more.
        self.metrics_snapshot.snapshot.send_if_modified(|s| {
            let Some((at, usages)) = s else { return false };
            if !usages.iter().any(|u| u.record.id == pod_id) {
                return false;
            }
            let kept = usages.iter().filter(|u| u.record.id != pod_id).cloned();
            *s = Some((*at, Arc::new(kept.collect())));
            true
        });
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
            cache_bytes: add(a.cache_bytes, u.cache_bytes),
            oom_kills: add(a.oom_kills, u.oom_kills),
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
                rx_packets: f[1],
                rx_errors: f[2],
                rx_dropped: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_dropped: f[11],
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
eth0:    5000      40    2    1    0     0          0         0     7000      50    3    4    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text),
            [InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 2,
                rx_dropped: 1,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 3,
                tx_dropped: 4,
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
