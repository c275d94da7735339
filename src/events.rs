//! Lifecycle events for `GetContainerEvents` (kubelet's evented PLEG).
//!
//! Owns the broadcast channel the domain publishes to. Pods and containers publish right after
//! the record change they describe (pods: created and started by RunPodSandbox, stopped,
//! deleted; containers: created, started, exited — learned eagerly from the monitor's exit —
//! deleted). The handler turns each event into a CRI `ContainerEventResponse`, with the pod's
//! and its containers' statuses as they are when the event is delivered. Must not build CRI
//! messages.
//!
//! A subscriber that falls more than [`CAPACITY`] events behind loses the oldest ones (and is
//! told how many); kubelet's periodic relist covers them, as with CRI-O's bounded channel.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::sandbox::SandboxRecord;
use crate::util::now_ns;

/// Events buffered per subscriber.
pub const CAPACITY: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One lifecycle event of a container, or of a pod (then `id` is the pod's id).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub pod_id: String,
    pub kind: EventKind,
    /// When it happened (ns since the epoch).
    pub at_ns: i64,
    /// The pod as it was right after the event; a deleted pod is only known from this.
    pub pod: Option<Arc<SandboxRecord>>,
}

/// The publish/subscribe hub. Publishing never blocks and never fails.
pub struct Events {
    tx: broadcast::Sender<Event>,
    closed: watch::Sender<bool>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        let (closed, _) = watch::channel(false);
        Events { tx, closed }
    }
}

impl Events {
    pub fn new() -> Arc<Self> {
        Arc::new(Events::default())
    }

    /// Publishes an event to every current subscriber (none: dropped).
    pub fn publish(&self, id: &str, kind: EventKind, pod: Option<Arc<SandboxRecord>>) {
        let pod_id = pod.as_ref().map(|p| p.id.clone()).unwrap_or_default();
        tracing::debug!(id, pod_id = %pod_id, kind = ?kind, "lifecycle event");
        let _ = self.tx.send(Event {
            id: id.to_string(),
            pod_id,
            kind,
            at_ns: now_ns(),
            pod,
        });
    }

    /// A receiver of every event published from now on, and a watch that turns true when the
    /// daemon shuts down (streams end then).
    pub fn subscribe(&self) -> (broadcast::Receiver<Event>, watch::Receiver<bool>) {
        (self.tx.subscribe(), self.closed.subscribe())
    }

    /// Ends every subscription (daemon shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// How many subscribers are listening.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_events_published_after_subscribing_in_order() {
        let events = Events::new();
        events.publish("early", EventKind::Created, None);
        let (mut rx, _) = events.subscribe();
        events.publish("a", EventKind::Created, None);
        events.publish("a", EventKind::Started, None);
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!((first.id.as_str(), first.kind), ("a", EventKind::Created));
        assert_eq!((second.id.as_str(), second.kind), ("a", EventKind::Started));
        assert!(second.at_ns >= first.at_ns);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_lost() {
        let events = Events::new();
        let (mut rx, _) = events.subscribe();
        for i in 0..CAPACITY + 5 {
            events.publish(&i.to_string(), EventKind::Stopped, None);
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(rx.recv().await.unwrap().id, "5");
    }

    #[tokio::test]
    async fn close_wakes_subscribers() {
        let events = Events::new();
        let (_rx, mut closed) = events.subscribe();
        assert_eq!(events.subscribers(), 1);
        events.close();
        closed.changed().await.unwrap();
        assert!(*closed.borrow());
    }
}
