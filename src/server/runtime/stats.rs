//! Domain usage figures → CRI stats messages, shared by the four stats RPCs.

use k8s_cri::v1 as cri;

use super::{container, pod_sandbox};
use crate::cgroups::Usage;
use crate::container::stats::{ContainerUsage, PodUsage};

fn v(value: Option<u64>) -> Option<cri::UInt64Value> {
    value.map(|value| cri::UInt64Value { value })
}

fn cpu(timestamp: i64, u: &Usage, nano_cores: Option<u64>) -> Option<cri::CpuUsage> {
    u.cpu_ns.map(|ns| cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: v(Some(ns)),
        usage_nano_cores: v(nano_cores),
    })
}

fn memory(timestamp: i64, u: &Usage) -> Option<cri::MemoryUsage> {
    u.memory_bytes.map(|usage| cri::MemoryUsage {
        timestamp,
        working_set_bytes: v(u.working_set_bytes),
        available_bytes: v(u
            .memory_limit
            .map(|l| l.saturating_sub(u.working_set_bytes.unwrap_or(usage)))),
        usage_bytes: v(Some(usage)),
        rss_bytes: v(u.rss_bytes),
        page_faults: v(u.page_faults),
        major_page_faults: v(u.major_page_faults),
    })
}

/// One container's stats; `fs_mountpoint` identifies the filesystem of writable layers (the
/// same one `ImageFsInfo` reports).
pub fn container_stats(u: &ContainerUsage, fs_mountpoint: &str) -> cri::ContainerStats {
    let rec = &u.record;
    let cgroup = u.cgroup.unwrap_or_default();
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: rec.id.clone(),
            metadata: Some(container::metadata(rec)),
            labels: rec.labels.clone().into_iter().collect(),
            annotations: rec.annotations.clone().into_iter().collect(),
        }),
        cpu: cpu(u.timestamp, &cgroup, u.nano_cores),
        memory: memory(u.timestamp, &cgroup),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: u.timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: fs_mountpoint.to_string(),
            }),
            used_bytes: v(Some(u.writable_layer.bytes)),
            inodes_used: v(Some(u.writable_layer.inodes)),
        }),
        swap: cgroup.swap_bytes.map(|used| cri::SwapUsage {
            timestamp: u.timestamp,
            swap_available_bytes: None,
            swap_usage_bytes: v(Some(used)),
        }),
    }
}

/// One pod's stats with its containers'.
pub fn pod_stats(p: &PodUsage, fs_mountpoint: &str) -> cri::PodSandboxStats {
    let rec = &p.record;
    let cgroup = p.cgroup.unwrap_or_default();
    let interfaces: Vec<cri::NetworkInterfaceUsage> = p
        .interfaces
        .iter()
        .map(|i| cri::NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: v(Some(i.rx_bytes)),
            rx_errors: v(Some(i.rx_errors)),
            tx_bytes: v(Some(i.tx_bytes)),
            tx_errors: v(Some(i.tx_errors)),
        })
        .collect();
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == crate::sandbox::network::POD_IFNAME)
        .cloned();
    let processes = cgroup.processes.or_else(|| {
        p.containers
            .iter()
            .map(|c| c.cgroup.and_then(|u| u.processes))
            .sum::<Option<u64>>()
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: Some(pod_sandbox::metadata(rec)),
            labels: rec.spec.labels.clone().into_iter().collect(),
            annotations: rec.spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cpu(p.timestamp, &cgroup, p.nano_cores),
            memory: memory(p.timestamp, &cgroup),
            network: (!interfaces.is_empty()).then_some(cri::NetworkUsage {
                timestamp: p.timestamp,
                default_interface,
                interfaces,
            }),
            process: processes.map(|n| cri::ProcessUsage {
                timestamp: p.timestamp,
                process_count: v(Some(n)),
            }),
            containers: p
                .containers
                .iter()
                .map(|c| container_stats(c, fs_mountpoint))
                .collect(),
        }),
        windows: None,
    }
}
