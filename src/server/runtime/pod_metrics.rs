//! Domain usage figures → the CRI metrics of `ListMetricDescriptors` and
//! `ListPodSandboxMetrics` (kubelet's `PodAndContainerStatsFromCRI`, which serves them as its
//! cAdvisor metrics): cAdvisor's metric names with CRI-O's labels.
//!
//! Container metrics are labelled `id` (container id), `name` (container name), `image` (as
//! requested); the pod's network metrics `id` (pod id), `name` = `POD`, `image` = "" and
//! `interface`; `container_cpu_usage_seconds_total` also has `cpu` = `total`. Values are
//! unsigned integers (the CRI's `UInt64Value`), so seconds are whole seconds, as in CRI-O.

use k8s_cri::v1 as cri;

use crate::container::stats::{ContainerUsage, InterfaceUsage, PodUsage};

const BASE: &[&str] = &["id", "name", "image"];
const CPU: &[&str] = &["id", "name", "image", "cpu"];
const NET: &[&str] = &["id", "name", "image", "interface"];

use cri::MetricType::{Counter, Gauge};

/// One metric: name, help, type, label keys.
struct Def(
    &'static str,
    &'static str,
    cri::MetricType,
    &'static [&'static str],
);

/// Every metric ListPodSandboxMetrics can return, container metrics first.
const DEFS: &[Def] = &[
    Def(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
        CPU,
    ),
    Def(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Gauge,
        BASE,
    ),
    Def(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        BASE,
    ),
    Def("container_memory_rss", "Size of RSS in bytes.", Gauge, BASE),
    Def(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
        BASE,
    ),
    Def(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
        BASE,
    ),
    Def(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        Counter,
        BASE,
    ),
    Def(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
        BASE,
    ),
    Def(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        Counter,
        BASE,
    ),
    Def(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
        BASE,
    ),
    Def(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container's writable layer.",
        Gauge,
        BASE,
    ),
    Def(
        "container_fs_inodes_total",
        "Number of inodes used by the container's writable layer.",
        Gauge,
        BASE,
    ),
    Def(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        Counter,
        NET,
    ),
    Def(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        Counter,
        NET,
    ),
    Def(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Counter,
        NET,
    ),
    Def(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        Counter,
        NET,
    ),
    Def(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        Counter,
        NET,
    ),
    Def(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        Counter,
        NET,
    ),
    Def(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Counter,
        NET,
    ),
    Def(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        Counter,
        NET,
    ),
];

/// The descriptors of every metric ListPodSandboxMetrics returns.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DEFS.iter()
        .map(|Def(name, help, _, keys)| cri::MetricDescriptor {
            name: (*name).into(),
            help: (*help).into(),
            label_keys: keys.iter().map(|k| (*k).into()).collect(),
        })
        .collect()
}

/// Collects metrics with one set of base label values.
struct Out<'a> {
    timestamp: i64,
    labels: [&'a str; 3],
    metrics: Vec<cri::Metric>,
}

impl Out<'_> {
    /// Adds `name` (which must be in [`DEFS`]) when `value` is known; `extra` are the values
    /// of the labels after the base ones.
    fn add(&mut self, name: &'static str, extra: &[&str], value: Option<u64>) {
        let (Some(value), Some(Def(_, _, kind, _))) = (value, DEFS.iter().find(|d| d.0 == name))
        else {
            return;
        };
        self.metrics.push(cri::Metric {
            name: name.into(),
            timestamp: self.timestamp,
            metric_type: *kind as i32,
            label_values: self
                .labels
                .iter()
                .chain(extra)
                .map(|v| (*v).to_string())
                .collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

fn container_metrics(u: &ContainerUsage) -> cri::ContainerMetrics {
    let rec = &u.record;
    let mut out = Out {
        timestamp: u.timestamp,
        labels: [&rec.id, &rec.name, &rec.image],
        metrics: Vec::with_capacity(DEFS.len()),
    };
    let c = u.cgroup.unwrap_or_default();
    out.add(
        "container_cpu_usage_seconds_total",
        &["total"],
        c.cpu_ns.map(|ns| ns / 1_000_000_000),
    );
    out.add("container_memory_usage_bytes", &[], c.memory_bytes);
    out.add(
        "container_memory_working_set_bytes",
        &[],
        c.working_set_bytes,
    );
    out.add("container_memory_rss", &[], c.rss_bytes);
    out.add("container_memory_cache", &[], c.cache_bytes);
    out.add("container_memory_swap", &[], c.swap_bytes);
    out.add("container_memory_failures_total", &[], c.page_faults);
    out.add("container_spec_memory_limit_bytes", &[], c.memory_limit);
    out.add("container_oom_events_total", &[], c.oom_kills);
    out.add("container_processes", &[], c.processes);
    out.add(
        "container_fs_usage_bytes",
        &[],
        Some(u.writable_layer.bytes),
    );
    out.add(
        "container_fs_inodes_total",
        &[],
        Some(u.writable_layer.inodes),
    );
    cri::ContainerMetrics {
        container_id: rec.id.clone(),
        metrics: out.metrics,
    }
}

fn interface_metrics(out: &mut Out, i: &InterfaceUsage) {
    let name = [i.name.as_str()];
    for (metric, value) in [
        ("container_network_receive_bytes_total", i.rx_bytes),
        ("container_network_receive_packets_total", i.rx_packets),
        ("container_network_receive_errors_total", i.rx_errors),
        (
            "container_network_receive_packets_dropped_total",
            i.rx_dropped,
        ),
        ("container_network_transmit_bytes_total", i.tx_bytes),
        ("container_network_transmit_packets_total", i.tx_packets),
        ("container_network_transmit_errors_total", i.tx_errors),
        (
            "container_network_transmit_packets_dropped_total",
            i.tx_dropped,
        ),
    ] {
        out.add(metric, &name, Some(value));
    }
}

/// One pod's metrics: its network's, and its containers'.
pub fn pod_metrics(p: &PodUsage) -> cri::PodSandboxMetrics {
    let mut out = Out {
        timestamp: p.timestamp,
        labels: [&p.record.id, "POD", ""],
        metrics: Vec::with_capacity(8 * p.interfaces.len()),
    };
    for i in &p.interfaces {
        interface_metrics(&mut out, i);
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: p.record.id.clone(),
        metrics: out.metrics,
        container_metrics: p.containers.iter().map(container_metrics).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_key_list_starts_with_the_base_labels_and_names_are_unique() {
        let mut names: Vec<&str> = DEFS.iter().map(|d| d.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DEFS.len());
        for d in DEFS {
            assert_eq!(&d.3[..3], BASE, "{}", d.0);
            assert!(d.0.starts_with("container_"), "{}", d.0);
        }
    }

    #[test]
    fn an_unknown_value_is_left_out_and_labels_follow_the_keys() {
        let mut out = Out {
            timestamp: 7,
            labels: ["c1", "app", "busybox"],
            metrics: Vec::new(),
        };
        out.add("container_memory_rss", &[], None);
        out.add("container_cpu_usage_seconds_total", &["total"], Some(3));
        assert_eq!(out.metrics.len(), 1);
        let m = &out.metrics[0];
        assert_eq!(m.label_values, ["c1", "app", "busybox", "total"]);
        assert_eq!(m.metric_type, Counter as i32);
        assert_eq!(m.value, Some(cri::UInt64Value { value: 3 }));
    }
}
