//! Serving: `run(daemon, listener, …, shutdown)` wires the CRI server, the streaming server and
//! the metrics endpoint to a [`Daemon`] and serves until shutdown.
//!
//! Must not parse flags or install the log subscriber (that is `main`'s job) so that tests can
//! run it with their own listener.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::authority::AuthorityFix;
use crate::daemon::Daemon;
use crate::server::CriService;
use crate::streaming::server::{StreamServer, StreamSettings};

/// How long in-flight RPCs may run after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Serves the CRI on `listener` (and metrics on `metrics_listener`) until `shutdown` resolves,
/// then drains in-flight RPCs for at most [`SHUTDOWN_GRACE`].
pub async fn run(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    metrics_listener: Option<TcpListener>,
    stream_listener: Option<(TcpListener, StreamSettings)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = watch::channel(false);

    // The streaming server, once serving: the CRI server's Exec/Attach/PortForward hand out
    // its URLs.
    let streaming: Arc<OnceLock<Arc<StreamServer>>> = Arc::default();
    if let Some((l, settings)) = stream_listener {
        match l.local_addr() {
            Ok(addr) => {
                let server = StreamServer::new(addr, settings);
                let _ = streaming.set(server.clone());
                tokio::spawn(crate::streaming::server::serve(
                    l,
                    server,
                    daemon.clone(),
                    stop_rx.clone(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "streaming listener has no address; Exec/Attach/PortForward unavailable")
            }
        }
    }

    if let Some(l) = metrics_listener {
        tokio::spawn(crate::metrics::serve(
            l,
            daemon.metrics.clone(),
            stop_rx.clone(),
        ));
    }

    let restoring = daemon.clone();
    tokio::spawn(async move {
        if let Err(e) = restoring.restore().await {
            tracing::error!(error = %e, "restore failed; RPCs other than Version/Status stay unavailable");
        }
    });

    let events = daemon.events.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Event streams never end on their own: end them so the drain does not wait for them.
        events.close();
        let _ = stop_tx.send(true);
    });

    let reloading = daemon.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler; reloads disabled");
            return;
        };
        while hup.recv().await.is_some() {
            reloading.reload();
        }
    });

    let settling = daemon.clone();
    let service = CriService::new(daemon, streaming);
    let mut drained = stop_rx.clone();
    // Any :authority is accepted on the unix socket (grpc C-core sends the socket path).
    let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new));
    let server = tonic::transport::Server::builder()
        .layer(crate::server::instrument::DeadlineLayer)
        .add_service(RuntimeServiceServer::new(service.clone()))
        .add_service(ImageServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            crate::metrics::stopped(&mut drained).await;
            tracing::info!("shutting down: no new connections, draining in-flight RPCs");
        });
    tokio::pin!(server);
    let mut grace = stop_rx;
    let served = tokio::select! {
        result = &mut server => result,
        _ = async {
            crate::metrics::stopped(&mut grace).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace_ms = SHUTDOWN_GRACE.as_millis() as u64, "grace period over; exiting with RPCs in flight");
            Ok(())
        }
    };
    // Removed containers' teardowns finish too (what is left is cleaned up at the next start).
    if tokio::time::timeout(SHUTDOWN_GRACE, settling.settle())
        .await
        .is_err()
    {
        tracing::warn!("container teardowns still running at exit; the next start finishes them");
    }
    served
}
