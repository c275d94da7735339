//! OpenTelemetry tracing end to end (issue 16): the test runs its own OTLP/gRPC receiver on a
//! loopback port, points `[tracing] endpoint` at it, sends RunPodSandbox with a W3C
//! `traceparent` as kubelet's otelgrpc does, and reads the spans the daemon exports. With tracing
//! off, nothing reaches the receiver, not even with the standard OTel endpoint variable set.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::{Daemon, Options};
use crius_e2e::network::TestNetwork;
use crius_e2e::pods;
use k8s_cri::v1 as cri;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

const TRACE_ID: &str = "5af7183fb1d4cf5f3a8e2c6b9d0e1f24";
const KUBELET_SPAN: &str = "a3ce929d0e0e4736";

/// The receiver: every export request goes to the channel.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts a receiver on 127.0.0.1: its endpoint URL and the stream of what it receives. The
/// tests run on a multi-thread runtime so that it keeps answering while a test blocks (waiting
/// for the daemon to exit).
async fn receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (endpoint, rx)
}

/// One received span with the `service.name` of its resource.
struct Received {
    service: String,
    span: Span,
}

fn spans_of(req: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    out
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `msg` with kubelet's trace context: sampled (`flags` 01) or not (00).
fn traced<T>(msg: T, flags: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{KUBELET_SPAN}-{flags}")
            .parse()
            .unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", "kubelet=e2e".parse().unwrap());
    request
}

/// StopPodSandbox and RemovePodSandbox, in kubelet's trace when `flags` is given.
async fn stop_and_remove(d: &Daemon, id: &str, flags: Option<&str>) {
    let mut rt = d.runtime().await;
    let stop = cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    let remove = cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    match flags {
        Some(flags) => {
            rt.stop_pod_sandbox(traced(stop, flags)).await.unwrap();
            rt.remove_pod_sandbox(traced(remove, flags)).await.unwrap();
        }
        None => {
            rt.stop_pod_sandbox(stop).await.unwrap();
            rt.remove_pod_sandbox(remove).await.unwrap();
        }
    }
}

const RUN_POD_SPAN: &str = "runtime.v1.RuntimeService/RunPodSandbox";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_exports_its_span_tree_in_kubelets_trace() {
    let (endpoint, mut rx) = receiver().await;
    let net = TestNetwork::new();
    let d = Daemon::start_with(Options {
        extra_config: format!(
            "[tracing]\nendpoint = {endpoint:?}\nsampling_rate_per_million = 0\nservice_name = \"crius-e2e\"\n"
        ),
        ..Default::default()
    })
    .await;
    net.install(&d.paths.cni_conf_dir, &[]);
    let mut rt = d.runtime().await;

    // Root sampling is off (rate 0): only the sampled parent from kubelet makes this exported.
    // A pod PID namespace: its infra process is started by a monitor (`monitor.start`).
    let mut pod = pods::pod("traced");
    pods::namespaces(&mut pod).pid = cri::NamespaceMode::Pod as i32;
    let pod_id = rt
        .run_pod_sandbox(traced(pod, "01"))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    // Not sampled by kubelet: never exported.
    let untraced_id = rt
        .run_pod_sandbox(traced(pods::pod("untraced"), "00"))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;

    // Spans come in batches (the rpc span ends after its children): gather until the tree is
    // there.
    let mut spans: Vec<Received> = Vec::new();
    let complete = |spans: &[Received]| {
        [RUN_POD_SPAN, "cni.add", "monitor.start"]
            .iter()
            .all(|n| spans.iter().any(|r| r.span.name == *n))
    };
    gather(&mut rx, &mut spans, complete, &d).await;

    let rpc = spans.iter().find(|r| r.span.name == RUN_POD_SPAN).unwrap();
    assert_eq!(hex(&rpc.span.trace_id), TRACE_ID);
    assert_eq!(hex(&rpc.span.parent_span_id), KUBELET_SPAN);
    assert_eq!(rpc.span.kind, SpanKind::Server as i32);
    assert_eq!(rpc.service, "crius-e2e");
    assert_eq!(
        attr(&rpc.span.attributes, "pod_id").as_deref(),
        Some(pod_id.as_str())
    );
    assert_eq!(
        attr(&rpc.span.attributes, "name").as_deref(),
        Some("traced")
    );
    assert_eq!(
        attr(&rpc.span.attributes, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attr(&rpc.span.attributes, "rpc.method").as_deref(),
        Some("RunPodSandbox")
    );
    assert_eq!(
        attr(&rpc.span.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );

    // CNI ADD ran in a blocking thread of a task the handler spawned: its span still chains up
    // to the rpc span, in the same trace.
    let by_id: HashMap<Vec<u8>, &Span> = spans
        .iter()
        .map(|r| (r.span.span_id.clone(), &r.span))
        .collect();
    let cni = spans.iter().find(|r| r.span.name == "cni.add").unwrap();
    assert_eq!(hex(&cni.span.trace_id), TRACE_ID);
    assert_eq!(
        attr(&cni.span.attributes, "pod_id").as_deref(),
        Some(pod_id.as_str())
    );
    let mut cursor = &cni.span;
    let mut hops = 0;
    while cursor.span_id != rpc.span.span_id {
        hops += 1;
        assert!(hops < 10, "no parent chain from cni.add to the rpc span");
        cursor = by_id.get(&cursor.parent_span_id).unwrap_or_else(|| {
            panic!(
                "cni.add's ancestor {} was not exported; spans: {:?}",
                hex(&cursor.parent_span_id),
                spans
                    .iter()
                    .map(|r| (&r.span.name, hex(&r.span.span_id)))
                    .collect::<Vec<_>>()
            )
        });
    }

    let infra = spans
        .iter()
        .find(|r| r.span.name == "monitor.start")
        .unwrap();
    assert!(
        descends(&spans, &infra.span, &rpc.span),
        "monitor.start outside the rpc span"
    );
    assert_eq!(
        attr(&infra.span.attributes, "mode").as_deref(),
        Some("infra")
    );

    // Tear down in kubelet's trace (StopPodSandbox's cni.del is exported too), the other pod
    // without a trace context; then a graceful stop flushes what is queued.
    stop_and_remove(&d, &pod_id, Some("01")).await;
    stop_and_remove(&d, &untraced_id, None).await;
    let mut d = d;
    let (status, _) = d.terminate(Duration::from_secs(30)).expect("crius stops");
    assert!(status.success(), "{status}");
    while let Ok(req) = rx.try_recv() {
        spans.extend(spans_of(req));
    }
    assert!(
        spans.iter().any(|r| r.span.name == "cni.del"),
        "no cni.del span after StopPodSandbox and shutdown: {:?}",
        spans.iter().map(|r| &r.span.name).collect::<Vec<_>>()
    );
    let untraced: Vec<&str> = spans
        .iter()
        .filter(|r| attr(&r.span.attributes, "name").as_deref() == Some("untraced"))
        .map(|r| r.span.name.as_str())
        .collect();
    assert!(
        untraced.is_empty(),
        "unsampled parent exported: {untraced:?}"
    );
    // Root spans (the untraced pod's StopPodSandbox, startup) are not sampled at rate 0.
    assert!(
        spans.iter().all(|r| hex(&r.span.trace_id) == TRACE_ID),
        "a span outside kubelet's trace was exported at rate 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_nothing_is_exported() {
    let (endpoint, mut rx) = receiver().await;
    let net = TestNetwork::new();
    // Off: no `[tracing] endpoint`. The standard OTel variables do not turn it on either.
    let d = Daemon::start_with(Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), endpoint),
        ],
        ..Default::default()
    })
    .await;
    net.install(&d.paths.cni_conf_dir, &[]);
    let mut rt = d.runtime().await;
    let pod_id = rt
        .run_pod_sandbox(traced(pods::pod("off"), "01"))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    stop_and_remove(&d, &pod_id, Some("01")).await;
    let mut d = d;
    let (status, _) = d.terminate(Duration::from_secs(30)).expect("crius stops");
    assert!(status.success(), "{status}");
    // Absence is what is asserted: the daemon has exited (any flush is over); wait a little more
    // for anything in flight.
    match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        Err(_) => {}
        Ok(got) => panic!(
            "tracing is off but the receiver got {:?}",
            got.map(spans_of)
                .unwrap_or_default()
                .iter()
                .map(|r| r.span.name.clone())
                .collect::<Vec<_>>()
        ),
    }
}

/// A collector that accepts connections and never answers: exports hang until their deadline.
fn black_hole() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        let until = Instant::now() + Duration::from_secs(90);
        while Instant::now() < until {
            match listener.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (endpoint, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_slows_no_rpc_and_is_logged_once() {
    let (endpoint, _held) = black_hole();
    let net = TestNetwork::new();
    let d = Daemon::start_with(Options {
        extra_config: format!("[tracing]\nendpoint = {endpoint:?}\n"),
        // Export every 200 ms: several exports fail while the test runs.
        env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into())],
        ..Default::default()
    })
    .await;
    net.install(&d.paths.cni_conf_dir, &[]);
    let mut rt = d.runtime().await;
    let mut ids = Vec::new();
    for name in ["hole-a", "hole-b"] {
        ids.push(
            rt.run_pod_sandbox(traced(pods::pod(name), "01"))
                .await
                .unwrap()
                .into_inner()
                .pod_sandbox_id,
        );
    }
    // Exports are hanging now (3 s each); RPCs do not wait for them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.log().matches("trace export failed").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "exports did not fail twice in 30 s:\n{}",
            d.log()
        );
        let started = Instant::now();
        rt.version(traced(cri::VersionRequest::default(), "01"))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "Version took {took:?} with a stuck collector"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        stop_and_remove(&d, id, Some("01")).await;
    }
    // Shutdown's flush is bounded too: drain (≤ 1.5 s) + export deadline + shutdown deadline.
    let mut d = d;
    let (status, took) = d.terminate(Duration::from_secs(30)).expect("crius stops");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(12), "shutdown took {took:?}");
    let log = d.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("trace export failed"))
        .collect();
    assert_eq!(warned.len(), 1, "warned {} times:\n{log}", warned.len());
    assert!(warned[0].contains("dropped_spans="), "{}", warned[0]);
}

/// Receives until `done` holds for everything received, or panics after 60 s.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    spans: &mut Vec<Received>,
    done: impl Fn(&[Received]) -> bool,
    d: &Daemon,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(spans) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(req)) => spans.extend(spans_of(req)),
            Ok(None) => panic!("receiver closed"),
            Err(_) => panic!(
                "spans missing after 60 s; got {:?}\n--- daemon log ---\n{}",
                spans.iter().map(|r| &r.span.name).collect::<Vec<_>>(),
                d.log()
            ),
        }
    }
}

/// Whether `child` descends from `ancestor` among `spans`.
fn descends(spans: &[Received], child: &Span, ancestor: &Span) -> bool {
    let mut cursor = child;
    for _ in 0..10 {
        if cursor.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans
            .iter()
            .find(|r| r.span.span_id == cursor.parent_span_id)
        {
            Some(parent) => cursor = &parent.span,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_layers_and_container_create_and_start_have_their_spans() {
    let (endpoint, mut rx) = receiver().await;
    // The pull (without a trace context) is a root span, sampled at the default rate.
    let BusyboxDaemon {
        d,
        net: _net,
        image,
    } = BusyboxDaemon::start(Options {
        extra_config: format!("[tracing]\nendpoint = {endpoint:?}\n"),
        ..Default::default()
    })
    .await;
    let mut rt = d.runtime().await;
    let pod = pods::pod("spans");
    let sandbox_config = pod.config.clone();
    let pod_id = rt
        .run_pod_sandbox(traced(pod, "01"))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let config = pods::container("sleeper", &image, &["sh", "-c", "sleep 600"]);
    let container_id = rt
        .create_container(traced(
            cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config,
            },
            "01",
        ))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(traced(
        cri::StartContainerRequest {
            container_id: container_id.clone(),
        },
        "01",
    ))
    .await
    .unwrap();

    const PULL: &str = "runtime.v1.ImageService/PullImage";
    const CREATE: &str = "runtime.v1.RuntimeService/CreateContainer";
    const START: &str = "runtime.v1.RuntimeService/StartContainer";
    let mut spans = Vec::new();
    gather(
        &mut rx,
        &mut spans,
        |s| {
            [
                PULL,
                CREATE,
                START,
                "image.pull.layer",
                "runtime.create",
                "runtime.start",
            ]
            .iter()
            .all(|n| s.iter().any(|r| r.span.name == *n))
        },
        &d,
    )
    .await;
    let named = |n: &str| spans.iter().find(|r| r.span.name == n).unwrap();

    let pull = named(PULL);
    assert_eq!(
        attr(&pull.span.attributes, "image").as_deref(),
        Some(image.as_str())
    );
    let layers: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.name == "image.pull.layer")
        .collect();
    for layer in &layers {
        assert!(
            descends(&spans, &layer.span, &pull.span),
            "layer span outside the pull"
        );
        let digest = attr(&layer.span.attributes, "digest").unwrap_or_default();
        assert!(digest.starts_with("sha256:"), "{digest}");
        assert_eq!(
            attr(&layer.span.attributes, "reused").as_deref(),
            Some("false")
        );
    }

    let create = named(CREATE);
    assert_eq!(hex(&create.span.trace_id), TRACE_ID);
    assert_eq!(
        attr(&create.span.attributes, "container_id").as_deref(),
        Some(container_id.as_str())
    );
    assert_eq!(
        attr(&create.span.attributes, "pod_id").as_deref(),
        Some(pod_id.as_str())
    );
    let runtime_create = named("runtime.create");
    assert!(descends(&spans, &runtime_create.span, &create.span));
    assert_eq!(
        attr(&runtime_create.span.attributes, "runtime").as_deref(),
        Some(crius_e2e::daemon::default_handler())
    );
    let start = named(START);
    assert!(descends(&spans, &named("runtime.start").span, &start.span));

    stop_and_remove(&d, &pod_id, None).await;
}
