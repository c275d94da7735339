//! Port-forward sessions over SPDY (`portforward.k8s.io`), as kubelet's streaming library
//! serves them.
//!
//! The client opens two streams per forwarded connection, both with the headers `port` and
//! `requestid`: `streamtype: data` and `streamtype: error` (a client without `requestid` gets
//! kubelet's fallback: the error stream's id, the data stream's id minus 2). Once both streams
//! of a request are there, one TCP connection is made to `localhost:<port>` in the pod's network
//! namespace and bytes are copied both ways; a failed connect is reported as text on that
//! request's error stream and the session goes on. Half-closes are passed on in both
//! directions: the client's FIN shuts down the TCP write side, the pod's EOF sends FIN on the
//! data stream and ends the error stream without a message (client-go waits for that). A pair
//! not complete within [`STREAM_CREATION_TIMEOUT`] gets a timeout on its error stream. The
//! session ends when the client closes the connection.
//!
//! Owns the stream pairing and copying. Must not enter namespaces itself
//! ([`crate::sandbox::port_forward`] connects).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::remotecommand::{pump, STREAM_CREATION_TIMEOUT};
use super::spdy::{Connection, Stream, StreamWriter};
use crate::app::Daemon;
use crate::sandbox::port_forward::{self, Target};

/// Most incomplete stream pairs a session keeps at once; more are reset.
pub const MAX_PENDING_PAIRS: usize = 1024;

/// The two streams of one forwarded connection, as they arrive.
struct Pair {
    port: u16,
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Instant,
}

/// A stream's role, port and request id, from its headers (kubelet's rules).
fn classify(stream: &Stream) -> Result<(bool, u16, String), String> {
    let kind = stream.header("streamtype").unwrap_or_default();
    let is_data = match kind {
        "data" => true,
        "error" => false,
        other => return Err(format!("invalid stream type {other:?}")),
    };
    let port = match stream.header("port") {
        None | Some("") => return Err("\"port\" header is required".into()),
        Some(p) => p
            .parse::<u16>()
            .map_err(|e| format!("unable to parse {p:?} as a port: {e}"))?,
    };
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    let id = match stream.header("requestid") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if is_data => stream.id().saturating_sub(2).to_string(),
        _ => stream.id().to_string(),
    };
    Ok((is_data, port, id))
}

/// Serves one port-forward connection until the client leaves.
pub async fn serve(
    daemon: Arc<Daemon>,
    req: cri::PortForwardRequest,
    conn: Connection,
    mut incoming: mpsc::Receiver<Stream>,
) {
    let target = match daemon
        .sandboxes()
        .and_then(|s| s.port_forward_target(&req.pod_sandbox_id))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(pod_id = %req.pod_sandbox_id, error = %e, "port-forward session");
            conn.close().await;
            return;
        }
    };
    let target = Arc::new(target);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwarded = 0u64;
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        let expired = async {
            match next_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let stream = tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            () = expired => {
                expire(&mut pairs).await;
                continue;
            }
            _ = conn.closed() => break,
        };
        let (is_data, port, id) = match classify(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(pod_id = %target.pod_id, error = %e, "port-forward stream reset");
                stream.reset();
                continue;
            }
        };
        if !pairs.contains_key(&id) && pairs.len() >= MAX_PENDING_PAIRS {
            tracing::debug!(pod_id = %target.pod_id, "too many incomplete port-forward pairs");
            stream.reset();
            continue;
        }
        let pair = pairs.entry(id.clone()).or_insert_with(|| Pair {
            port,
            data: None,
            error: None,
            deadline: Instant::now() + STREAM_CREATION_TIMEOUT,
        });
        let slot = if is_data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() || pair.port != port {
            tracing::debug!(pod_id = %target.pod_id, request_id = %id, "duplicate or mismatched port-forward stream");
            stream.reset();
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            if let Some(Pair {
                port,
                data: Some(data),
                error: Some(error),
                ..
            }) = pairs.remove(&id)
            {
                forwarded += 1;
                tokio::spawn(forward(target.clone(), port, data, error, conn.clone()));
            }
        }
    }
    for (_, pair) in pairs.drain() {
        for s in [pair.data, pair.error].into_iter().flatten() {
            s.reset();
        }
    }
    tracing::info!(pod_id = %target.pod_id, connections = forwarded, "port-forward session ended");
    conn.close().await;
}

/// Pairs past their deadline: the error stream (if any) gets the timeout, the rest is reset.
async fn expire(pairs: &mut HashMap<String, Pair>) {
    let now = Instant::now();
    let late: Vec<String> = pairs
        .iter()
        .filter(|(_, p)| p.deadline <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in late {
        let Some(pair) = pairs.remove(&id) else {
            continue;
        };
        if let Some(data) = pair.data {
            data.reset();
        }
        if let Some(error) = pair.error {
            let (_, mut w) = error.split();
            let msg = format!("timed out waiting for the data stream of request {id}");
            tokio::spawn(async move {
                let _ = w.write_all(msg.as_bytes()).await;
                let _ = w.shutdown().await;
            });
        }
    }
}

/// One forwarded connection: connect in the pod, copy both ways with half-closes.
async fn forward(target: Arc<Target>, port: u16, data: Stream, error: Stream, conn: Connection) {
    // The client never writes on the error stream; its reader is not needed.
    let (_, mut error) = error.split();
    let (from_client, mut to_client) = data.split();
    let tcp = match port_forward::connect(&target, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}: connect to localhost:{port}: {e}",
                target.pod_id
            );
            tracing::debug!(pod_id = %target.pod_id, port, error = %e, "port-forward connect");
            report(&mut error, &msg).await;
            let _ = to_client.shutdown().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (from_pod, to_pod) = tcp.into_split();
    let up = tokio::spawn(pump(from_client, to_pod));
    let down = async {
        pump(from_pod, &mut to_client).await;
        // The pod's side ended: end the error stream without a message (client-go reads it to
        // the end before it lets go of the connection). The client may still send.
        let _ = error.shutdown().await;
    };
    tokio::select! {
        () = async { down.await; let _ = up.await; } => {}
        _ = conn.closed() => {}
    }
}

async fn report(error: &mut StreamWriter, msg: &str) {
    let _ = error.write_all(msg.as_bytes()).await;
    let _ = error.shutdown().await;
}
