//! OpenTelemetry tracing (`[tracing]`): the OTLP pipeline, the W3C trace context of incoming
//! requests, and carrying the current span into blocking work.
//!
//! The `tracing` spans of the daemon are the source: [`layer`] builds a `tracing-opentelemetry`
//! layer whose spans go through a parent-based sampler and a batch span processor running on the
//! daemon's tokio runtime to an OTLP/gRPC exporter. With `[tracing] endpoint` empty nothing here
//! is built: no layer, no exporter, no task. An unreachable collector never slows an RPC: spans
//! are queued without waiting (a full queue drops them), each export has a deadline, and failed
//! exports are logged once at warn, then at debug.
//!
//! Must not create spans of its own or know about RPCs: `server::instrument` names the RPC span
//! and sets its parent from [`extract_parent`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tonic::metadata::{KeyRef, MetadataMap};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

use crate::config::{TracingConfig, SAMPLING_ALL};

/// How long one export (one batch to the collector) may take before it is abandoned.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long shutdown waits for the last spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the exporter could not be built (a bad endpoint is refused earlier, by validation).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otlp exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// The running pipeline; [`Tracing::shutdown`] flushes what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Exports the spans still queued (bounded by [`SHUTDOWN_TIMEOUT`]) and stops the processor.
    /// Runs the blocking shutdown off the async workers; the export itself runs on the runtime.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match done {
            Ok(Ok(())) => tracing::debug!("trace exporter flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown"),
            Err(e) => tracing::warn!(error = %e, "trace exporter shutdown task"),
        }
    }
}

/// The sampler for `rate` root spans per million: parent-based, so a sampled parent (kubelet's
/// `traceparent` with the sampled flag) is always followed, an unsampled one never.
pub fn sampler(rate_per_million: u32) -> Sampler {
    let root = match rate_per_million {
        0 => Sampler::AlwaysOff,
        r if r >= SAMPLING_ALL => Sampler::AlwaysOn,
        r => Sampler::TraceIdRatioBased(f64::from(r) / f64::from(SAMPLING_ALL)),
    };
    Sampler::ParentBased(Box::new(root))
}

/// The layer exporting the daemon's spans (target `crius`, level info and above: the spans of
/// the exporter's own HTTP/2 client are never exported), or `None` when tracing is off.
///
/// Must be called inside the tokio runtime: the batch processor and the gRPC channel are
/// spawned on it.
pub fn layer<S>(cfg: &TracingConfig) -> Result<Option<(impl Layer<S>, Tracing)>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !cfg.enabled() {
        return Ok(None);
    }
    let provider = provider(cfg)?;
    let tracer: SdkTracer = provider.tracer("crius");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target("crius", tracing::Level::INFO));
    Ok(Some((layer, Tracing { provider })))
}

/// The tracer provider: OTLP/gRPC exporter, batch processor on tokio, sampler, resource.
pub fn provider(cfg: &TracingConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: cfg.endpoint.clone(),
            message: e.to_string(),
        })?;
    let exporter = Logged::new(exporter, cfg.endpoint.clone());
    let batch = BatchConfigBuilder::default()
        .with_max_export_timeout(EXPORT_TIMEOUT)
        .build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch)
        .build();
    let resource = Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(cfg.sampling_rate_per_million))
        .with_resource(resource)
        .build())
}

/// An exporter that says when spans are lost: the first failed export at warn, the following
/// ones at debug, and at info when exports work again.
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    endpoint: String,
    /// Spans dropped by failed exports since the last success.
    dropped: AtomicU64,
    warned: AtomicBool,
}

impl<E> Logged<E> {
    fn new(inner: E, endpoint: String) -> Self {
        Logged {
            inner,
            endpoint,
            dropped: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                let lost = self.dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    tracing::info!(endpoint = %self.endpoint, dropped_spans = lost, "trace export works again");
                }
            }
            Err(e) => {
                let lost = self.dropped.fetch_add(count, Ordering::Relaxed) + count;
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, dropped_spans = lost,
                        "trace export failed, spans dropped (further failures are logged at debug)");
                } else {
                    tracing::debug!(endpoint = %self.endpoint, error = %e, dropped_spans = lost, "trace export failed");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) of a request's gRPC metadata, as
/// kubelet's otelgrpc sends it; an empty context when there is none or it is malformed.
pub fn extract_parent(metadata: &MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// `tokio::task::spawn_blocking` that runs `f` inside the caller's current span (and with the
/// caller's subscriber), so the spans and logs of blocking work (CNI, the OCI runtime,
/// unpacking) belong to the RPC that asked.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || span.in_scope(f))
    })
}

/// `tokio::spawn` of a future that stays in the caller's current span: work a handler hands
/// to its own task (so that a client giving up does not cancel it) still belongs to the RPC.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(future.instrument(tracing::Span::current()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TraceId};
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn metadata(traceparent: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert("traceparent", traceparent.parse().unwrap());
        md.insert("tracestate", "vendor=value".parse().unwrap());
        md
    }

    #[test]
    fn a_traceparent_in_the_metadata_becomes_the_remote_parent() {
        let cx = extract_parent(&metadata(&format!("00-{TRACE_ID}-{PARENT}-01")));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert!(sc.is_remote());
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), TRACE_ID);
        assert_eq!(sc.span_id().to_string(), PARENT);
        assert_eq!(sc.trace_state().get("vendor"), Some("value"));

        // Missing or malformed: no parent.
        assert!(!extract_parent(&MetadataMap::new())
            .span()
            .span_context()
            .is_valid());
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            &format!("00-{TRACE_ID}-{PARENT}"),
        ] {
            let cx = extract_parent(&metadata(bad));
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    /// The parent set from the metadata is what an exported span carries: same trace id, the
    /// remote span as parent, sampled as the parent says even with root sampling off.
    #[test]
    fn a_span_parented_from_the_metadata_is_exported_in_the_callers_trace() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(sampler(0))
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", otel.name = "runtime.v1.RuntimeService/Version");
            span.set_parent(extract_parent(&metadata(&format!(
                "00-{TRACE_ID}-{PARENT}-01"
            ))))
            .unwrap();
            span.in_scope(|| tracing::info_span!("child").in_scope(|| {}));
            drop(span);
            // Root spans are not sampled at rate 0.
            drop(tracing::info_span!("unparented").entered());
            // An unsampled parent is not overridden.
            let span = tracing::info_span!("unsampled");
            span.set_parent(extract_parent(&metadata(&format!(
                "00-{TRACE_ID}-{PARENT}-00"
            ))))
            .unwrap();
            drop(span.entered());
        });
        let spans = exporter.get_finished_spans().unwrap();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["child", "runtime.v1.RuntimeService/Version"]);
        let rpc = &spans[1];
        assert_eq!(
            rpc.span_context.trace_id(),
            TraceId::from_hex(TRACE_ID).unwrap()
        );
        assert_eq!(rpc.parent_span_id.to_string(), PARENT);
        assert_eq!(spans[0].parent_span_id, rpc.span_context.span_id());
        assert_eq!(
            spans[0].span_context.trace_id(),
            rpc.span_context.trace_id()
        );
    }

    #[test]
    fn the_sampler_follows_the_rate_for_root_spans() {
        let decide = |rate: u32, trace_id: u128| {
            sampler(rate)
                .should_sample(
                    None,
                    TraceId::from(trace_id),
                    "rpc",
                    &opentelemetry::trace::SpanKind::Server,
                    &[],
                    &[],
                )
                .decision
        };
        assert_eq!(decide(SAMPLING_ALL, 1), SamplingDecision::RecordAndSample);
        assert_eq!(decide(0, 1), SamplingDecision::Drop);
        // Ratio sampling compares the low 64 bits of the trace id with rate × 2^63.
        assert_eq!(decide(500_000, 1), SamplingDecision::RecordAndSample);
        assert_eq!(
            decide(500_000, u128::from(u64::MAX)),
            SamplingDecision::Drop
        );
    }

    #[test]
    fn tracing_off_builds_nothing() {
        let built = layer::<tracing_subscriber::Registry>(&TracingConfig::default()).unwrap();
        assert!(built.is_none());
    }

    #[tokio::test]
    async fn blocking_work_runs_in_the_callers_span() {
        let subscriber = tracing_subscriber::registry();
        let _guard = tracing::subscriber::set_default(subscriber);
        let span = tracing::info_span!("rpc");
        let id = span.id();
        let seen = {
            let _entered = span.enter();
            spawn_blocking(|| tracing::Span::current().id())
        }
        .await
        .unwrap();
        assert!(id.is_some());
        assert_eq!(seen, id);
    }
}
