//! Prometheus metrics: the registry, the RPC metric families, and the `/metrics` + `/healthz`
//! HTTP endpoint.
//!
//! Owns metric names and labels (documented in `docs/metrics.md`). Must not decide what is
//! measured: the instrumentation layer and the domain modules call in.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Buckets for RPC latency: from 100 µs (Version) to a minute (large pulls).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Every metric of the daemon, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub operations_total: IntCounterVec,
    pub operations_errors_total: IntCounterVec,
    pub operations_latency_seconds: HistogramVec,
    pub image_pulls_total: IntCounterVec,
    pub image_pull_bytes_total: IntCounter,
    pub image_pull_duration_seconds: Histogram,
    pub image_layers_reused_total: IntCounter,
    pub pod_network_setup_seconds: Histogram,
    pub pod_network_teardown_seconds: Histogram,
    pub pods: IntGaugeVec,
    pub containers: IntGaugeVec,
    pub containers_oom_total: IntCounter,
    pub container_create_seconds: Histogram,
    pub container_start_seconds: Histogram,
}

/// Buckets for CNI ADD/DEL: from 1 ms to the plugin timeout.
const NETWORK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let operations_total = IntCounterVec::new(
            Opts::new("crius_operations_total", "CRI RPCs served, by operation"),
            &["operation"],
        )?;
        let operations_errors_total = IntCounterVec::new(
            Opts::new(
                "crius_operations_errors_total",
                "CRI RPCs that returned an error, by operation and gRPC code",
            ),
            &["operation", "code"],
        )?;
        let operations_latency_seconds = HistogramVec::new(
            HistogramOpts::new(
                "crius_operations_latency_seconds",
                "Latency of CRI RPCs in seconds, by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        let image_pulls_total = IntCounterVec::new(
            Opts::new(
                "crius_image_pulls_total",
                "Image pulls by result (success or gRPC code)",
            ),
            &["result"],
        )?;
        let image_pull_bytes_total = IntCounter::new(
            "crius_image_pull_bytes_total",
            "Bytes downloaded from registries (layers and configs)",
        )?;
        let image_pull_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "crius_image_pull_duration_seconds",
                "Duration of image pulls in seconds",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ]),
        )?;
        let image_layers_reused_total = IntCounter::new(
            "crius_image_layers_reused_total",
            "Layers a pull found already unpacked and reused",
        )?;
        let pod_network_setup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "crius_pod_network_setup_seconds",
                "Time to attach a pod to its network (CNI ADD), in seconds",
            )
            .buckets(NETWORK_BUCKETS.to_vec()),
        )?;
        let pod_network_teardown_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "crius_pod_network_teardown_seconds",
                "Time to detach a pod from its network (CNI DEL), in seconds",
            )
            .buckets(NETWORK_BUCKETS.to_vec()),
        )?;
        let pods = IntGaugeVec::new(
            Opts::new("crius_pods", "Pod sandboxes by state (ready, notready)"),
            &["state"],
        )?;
        let containers = IntGaugeVec::new(
            Opts::new(
                "crius_containers",
                "Containers by state (created, running, exited)",
            ),
            &["state"],
        )?;
        let containers_oom_total = IntCounter::new(
            "crius_containers_oom_total",
            "Containers whose exit was an OOM kill",
        )?;
        let container_create_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "crius_container_create_seconds",
                "CreateContainer duration (rootfs, spec, runtime create), in seconds",
            )
            .buckets(NETWORK_BUCKETS.to_vec()),
        )?;
        let container_start_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "crius_container_start_seconds",
                "StartContainer duration (runtime start), in seconds",
            )
            .buckets(NETWORK_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(containers.clone()))?;
        registry.register(Box::new(containers_oom_total.clone()))?;
        registry.register(Box::new(container_create_seconds.clone()))?;
        registry.register(Box::new(container_start_seconds.clone()))?;
        registry.register(Box::new(pod_network_setup_seconds.clone()))?;
        registry.register(Box::new(pod_network_teardown_seconds.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(operations_total.clone()))?;
        registry.register(Box::new(operations_errors_total.clone()))?;
        registry.register(Box::new(operations_latency_seconds.clone()))?;
        registry.register(Box::new(image_pulls_total.clone()))?;
        registry.register(Box::new(image_pull_bytes_total.clone()))?;
        registry.register(Box::new(image_pull_duration_seconds.clone()))?;
        registry.register(Box::new(image_layers_reused_total.clone()))?;
        Ok(Arc::new(Metrics {
            registry,
            operations_total,
            operations_errors_total,
            operations_latency_seconds,
            image_pulls_total,
            image_pull_bytes_total,
            image_pull_duration_seconds,
            image_layers_reused_total,
            pod_network_setup_seconds,
            pod_network_teardown_seconds,
            pods,
            containers,
            containers_oom_total,
            container_create_seconds,
            container_start_seconds,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::warn!(error = %e, "encode metrics");
        }
        out
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn route(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, _) => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = route(&metrics, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
