//! `GetContainerEvents`: a server stream of lifecycle events (kubelet's evented PLEG).
//!
//! Each event carries the pod's status and the statuses of the pod's containers as they are when
//! the event is delivered (a deleted pod's status as it was at deletion), which is what kubelet
//! puts in its pod cache. The stream ends when the client goes away or the daemon shuts down.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use k8s_cri::v1 as cri;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::{container, pod_sandbox};
use crate::daemon::Daemon;
use crate::error::Result;
use crate::events::{Event, EventKind};

pub type EventStream =
    Pin<Box<dyn Stream<Item = std::result::Result<cri::ContainerEventResponse, Status>> + Send>>;

pub async fn get_container_events(
    daemon: Arc<Daemon>,
    _req: cri::GetEventsRequest,
) -> Result<EventStream> {
    let (rx, closed) = daemon.events.subscribe();
    let stream = futures_util::stream::unfold(
        (rx, closed, daemon),
        |(mut rx, mut closed, daemon)| async move {
            loop {
                if *closed.borrow_and_update() {
                    return None;
                }
                tokio::select! {
                    received = rx.recv() => match received {
                        Ok(event) => {
                            let response = to_response(&daemon, event);
                            return Some((Ok(response), (rx, closed, daemon)));
                        }
                        Err(RecvError::Lagged(lost)) => {
                            tracing::warn!(lost, "an event subscriber fell behind; events dropped (kubelet relists)");
                        }
                        Err(RecvError::Closed) => return None,
                    },
                    changed = closed.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                }
            }
        },
    );
    Ok(Box::pin(stream))
}

fn kind_to_cri(kind: EventKind) -> i32 {
    (match kind {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    }) as i32
}

fn to_response(daemon: &Daemon, event: Event) -> cri::ContainerEventResponse {
    let live = daemon
        .sandboxes()
        .ok()
        .and_then(|pods| pods.get(&event.pod_id));
    let pod = live.or(event.pod);
    let containers = match (daemon.containers(), &pod) {
        (Ok(containers), Some(pod)) => containers.records_in_pod(&pod.id),
        _ => Vec::new(),
    };
    cri::ContainerEventResponse {
        container_id: event.id,
        container_event_type: kind_to_cri(event.kind),
        created_at: event.at_ns,
        pod_sandbox_status: pod.map(|p| pod_sandbox::to_cri_status(&p)),
        containers_statuses: containers
            .iter()
            .map(|c| container::to_cri_status(c))
            .collect(),
    }
}
