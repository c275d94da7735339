//! `ListMetricDescriptors` and `ListPodSandboxMetrics` end to end: the real daemon, busybox
//! containers burning CPU, holding memory and pinging their gateway; latency with 100 pods.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::{Daemon, Options};
use crius_e2e::pods;
use k8s_cri::v1 as cri;

async fn run_pod(d: &Daemon, name: &str) -> (String, cri::PodSandboxConfig) {
    let req = pods::pod(name);
    let config = req.config.clone().unwrap();
    let id = d
        .runtime()
        .await
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    (id, config)
}

async fn run_container(
    d: &Daemon,
    pod: &(String, cri::PodSandboxConfig),
    image: &str,
    name: &str,
    script: &str,
) -> String {
    let mut config = pods::container(name, image, &["sh", "-c", script]);
    let sc = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("pods::container sets a security context");
    // For ping.
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec!["NET_RAW".into()],
        ..Default::default()
    });
    let mut rt = d.runtime().await;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    id
}

async fn metrics(d: &Daemon) -> Vec<cri::PodSandboxMetrics> {
    d.runtime()
        .await
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics
}

/// The value of metric `name` whose label values are `labels`, in the container `id` or, with
/// `id` empty, in the pod `pod_id`'s own metrics.
fn value(
    all: &[cri::PodSandboxMetrics],
    pod_id: &str,
    id: &str,
    name: &str,
    labels: &[&str],
) -> Option<u64> {
    let pod = all.iter().find(|p| p.pod_sandbox_id == pod_id)?;
    let metrics = if id.is_empty() {
        &pod.metrics
    } else {
        &pod.container_metrics
            .iter()
            .find(|c| c.container_id == id)?
            .metrics
    };
    metrics
        .iter()
        .find(|m| m.name == name && m.label_values == labels)
        .and_then(|m| m.value.as_ref())
        .map(|v| v.value)
}

/// Polls the metrics until `ok` holds of `value(...)`, for at most `secs`.
async fn until(
    d: &Daemon,
    secs: u64,
    what: &str,
    mut ok: impl FnMut(&[cri::PodSandboxMetrics]) -> bool,
) -> Vec<cri::PodSandboxMetrics> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = metrics(d).await;
        if ok(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: {all:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn pod_metrics_have_descriptors_labels_and_values_that_follow_the_containers() {
    let BusyboxDaemon {
        d,
        net: _net,
        image,
    } = BusyboxDaemon::start(Options::default()).await;
    let descriptors: BTreeMap<String, Vec<String>> = d
        .runtime()
        .await
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| {
            assert!(!d.help.is_empty(), "{}", d.name);
            (d.name, d.label_keys)
        })
        .collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_memory_usage_bytes",
        "container_oom_events_total",
        "container_fs_usage_bytes",
        "container_processes",
        "container_network_receive_bytes_total",
        "container_network_receive_packets_total",
        "container_network_receive_errors_total",
        "container_network_receive_packets_dropped_total",
        "container_network_transmit_bytes_total",
        "container_network_transmit_packets_total",
        "container_network_transmit_errors_total",
        "container_network_transmit_packets_dropped_total",
    ] {
        assert!(descriptors.contains_key(name), "{name} has no descriptor");
    }
    assert_eq!(
        descriptors["container_network_receive_bytes_total"],
        ["id", "name", "image", "interface"]
    );
    assert_eq!(
        descriptors["container_memory_working_set_bytes"],
        ["id", "name", "image"]
    );

    // A container that holds 64 MiB (tmpfs pages are charged to it) and burns CPU.
    let pod = run_pod(&d, "metrics").await;
    let busy = run_container(
        &d,
        &pod,
        &image,
        "busy",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; while :; do :; done",
    )
    .await;
    let labels = [busy.as_str(), "busy", image.as_str()];
    let all = until(&d, 30, "64 MiB charged and 1 s of CPU", |all| {
        value(all, &pod.0, &busy, "container_memory_usage_bytes", &labels)
            .is_some_and(|v| v >= 64 << 20)
            && value(
                all,
                &pod.0,
                &busy,
                "container_cpu_usage_seconds_total",
                &[&busy, "busy", &image, "total"],
            )
            .is_some_and(|v| v >= 1)
    })
    .await;
    let cpu_before = value(
        &all,
        &pod.0,
        &busy,
        "container_cpu_usage_seconds_total",
        &[&busy, "busy", &image, "total"],
    )
    .unwrap();
    let working_set = value(
        &all,
        &pod.0,
        &busy,
        "container_memory_working_set_bytes",
        &labels,
    )
    .unwrap();
    assert!(working_set >= 64 << 20, "{working_set}");
    for name in [
        "container_memory_rss",
        "container_memory_cache",
        "container_oom_events_total",
        "container_processes",
        "container_fs_usage_bytes",
    ] {
        assert!(
            value(&all, &pod.0, &busy, name, &labels).is_some(),
            "{name} missing: {all:#?}"
        );
    }
    // Every metric returned is described, with as many label values as keys.
    for p in &all {
        let container = p.container_metrics.iter().flat_map(|c| &c.metrics);
        for m in p.metrics.iter().chain(container) {
            let keys = descriptors
                .get(&m.name)
                .unwrap_or_else(|| panic!("{} is not described", m.name));
            assert_eq!(keys.len(), m.label_values.len(), "{m:?}");
            assert!(m.timestamp > 0);
        }
    }
    // The CPU counter grows while the container burns.
    until(&d, 30, "CPU counter grows", |all| {
        value(
            all,
            &pod.0,
            &busy,
            "container_cpu_usage_seconds_total",
            &[&busy, "busy", &image, "total"],
        )
        .is_some_and(|v| v > cpu_before)
    })
    .await;

    // The pod's eth0 counts a ping to its gateway.
    let eth0 = [pod.0.as_str(), "POD", "", "eth0"];
    let all = metrics(&d).await;
    let rx_before = value(
        &all,
        &pod.0,
        "",
        "container_network_receive_packets_total",
        &eth0,
    )
    .unwrap_or_else(|| panic!("no eth0 counters: {all:#?}"));
    let tx_before = value(
        &all,
        &pod.0,
        "",
        "container_network_transmit_packets_total",
        &eth0,
    )
    .unwrap();
    let out = d
        .runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: busy.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                // The test network's bridge is the first address of the pod's subnet.
                "ip=$(busybox ip route | busybox awk '/ src / {print $NF; exit}'); \
                 busybox ping -c 5 -i 0.2 -W 2 \"${ip%.*}.1\""
                    .into(),
            ],
            timeout: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        out.exit_code,
        0,
        "ping: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    until(&d, 10, "network counters after a ping", |all| {
        let rx = value(
            all,
            &pod.0,
            "",
            "container_network_receive_packets_total",
            &eth0,
        );
        let tx = value(
            all,
            &pod.0,
            "",
            "container_network_transmit_packets_total",
            &eth0,
        );
        let bytes = value(
            all,
            &pod.0,
            "",
            "container_network_receive_bytes_total",
            &eth0,
        );
        rx.is_some_and(|v| v >= rx_before + 5)
            && tx.is_some_and(|v| v >= tx_before + 5)
            && bytes.is_some_and(|v| v > 0)
    })
    .await;

    // A removed pod is gone from the metrics at once.
    let mut rt = d.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.0.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.0.clone(),
    })
    .await
    .unwrap();
    assert!(metrics(&d).await.iter().all(|p| p.pod_sandbox_id != pod.0));
}

#[tokio::test]
async fn pod_metrics_of_a_hundred_pods_answer_within_20ms_p99() {
    let BusyboxDaemon {
        d,
        net: _net,
        image,
    } = BusyboxDaemon::start(Options {
        // The per-RPC latency of List calls is logged at trace.
        drop_in: "[log]\nlevel = \"debug,crius::server=trace\"\n".into(),
        ..Default::default()
    })
    .await;
    const PODS: usize = 100;
    let mut pods = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let pod = run_pod(&d, &format!("m{i}")).await;
        run_container(&d, &pod, &image, "sleep", "sleep 1000").await;
        pods.push(pod.0);
    }
    // The first call waits for the first snapshot.
    until(&d, 60, "every pod in the metrics", |all| {
        all.len() == PODS && all.iter().all(|p| p.container_metrics.len() == 1)
    })
    .await;
    // A client with the windows kubelet's grpc-go reaches (it grows them by BDP estimation):
    // a response of a few hundred KiB is not held up by the default 64 KiB window.
    let socket = d.paths.socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(4 << 20)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    // The runtime's answer is timed until its bytes are in, as kubelet would receive them; the
    // test's own (unoptimised) protobuf decoding is done after.
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/runtime.v1.RuntimeService/ListPodSandboxMetrics",
    );
    let mut took = Vec::with_capacity(300);
    for _ in 0..300 {
        let started = Instant::now();
        grpc.ready().await.unwrap();
        let body = grpc
            .unary(tonic::Request::new(()), path.clone(), RawCodec)
            .await
            .unwrap()
            .into_inner();
        took.push(started.elapsed());
        let n = <cri::ListPodSandboxMetricsResponse as prost::Message>::decode(body)
            .unwrap()
            .pod_metrics
            .len();
        assert_eq!(n, PODS);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took.sort();
    let (p50, p99) = (took[took.len() / 2], took[took.len() * 99 / 100]);
    eprintln!("ListPodSandboxMetrics with {PODS} pods: p50 {p50:?}, p99 {p99:?}");
    let logged: Vec<u64> = d
        .log()
        .lines()
        .filter(|l| l.contains("op=\"ListPodSandboxMetrics\"") && l.contains("rpc ok"))
        .filter_map(|l| {
            l.split("elapsed_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        logged.len() >= took.len(),
        "ListPodSandboxMetrics calls logged"
    );
    // The measured calls are the last ones.
    let mut server = logged[logged.len() - took.len()..].to_vec();
    server.sort_unstable();
    eprintln!(
        "  in the daemon: p50 {}us, p99 {}us ({} calls)",
        server.get(server.len() / 2).unwrap_or(&0),
        server.get(server.len() * 99 / 100).unwrap_or(&0),
        server.len()
    );
    // The 20 ms bound is for an optimised daemon (`CRIUS_BIN=target/release/crius`): the whole
    // answer. A debug build builds and encodes the few hundred KiB of 100 pods' metrics
    // unoptimised, several times slower; it is held to 50 ms for its own work per call (read
    // from its trace log), which still fails if a call ever waits for a refresh of 100 pods.
    let server_p99 = Duration::from_micros(server[server.len() * 99 / 100]);
    if std::env::var_os("CRIUS_BIN").is_some() {
        assert!(p99 <= Duration::from_millis(20), "p50 {p50:?}, p99 {p99:?}");
    } else {
        assert!(server_p99 <= Duration::from_millis(50), "{server_p99:?}");
    }

    let mut rt = d.runtime().await;
    for id in pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
}

/// A gRPC codec that sends an empty message and keeps the answer's bytes undecoded.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = ();
    type Decode = tonic::codegen::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn encode(&mut self, _: (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<tonic::codegen::Bytes>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
