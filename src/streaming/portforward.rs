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

use super::remotecommand::{pump, Reader, Writer, STREAM_CREATION_TIMEOUT};
use super::spdy::{Connection, Stream};
use super::ws;
use crate::daemon::Daemon;
use crate::sandbox::port_forward::{self, Target};

/// Most incomplete stream pairs a session keeps at once; more are reset.
pub const MAX_PENDING_PAIRS: usize = 1024;
/// Without half-closes from the client, how long a pair lives on after the pod's side ended.
pub const NO_HALF_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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

/// One forwarded connection of an SPDY session; ends with the connection at the latest.
async fn forward(target: Arc<Target>, port: u16, data: Stream, error: Stream, conn: Connection) {
    // The client never writes on the error stream; its reader is not needed.
    let (_, error) = error.split();
    let (from_client, to_client) = data.split();
    tokio::select! {
        () = copy_pair(&target, port, Box::new(from_client), Box::new(to_client), Box::new(error), true) => {}
        _ = conn.closed() => {}
    }
}

/// Connects in the pod and copies both ways. With `client_half_closes` the client's end of
/// data is passed on and awaited; without (WebSocket v4 has no close signal) the pair ends
/// [`NO_HALF_CLOSE_GRACE`] after the pod's side ended, as containerd does.
async fn copy_pair(
    target: &Target,
    port: u16,
    from_client: Reader,
    mut to_client: Writer,
    mut error: Writer,
    client_half_closes: bool,
) {
    let tcp = match port_forward::connect(target, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}: connect to localhost:{port}: {e}",
                target.pod_id
            );
            tracing::debug!(pod_id = %target.pod_id, port, error = %e, "port-forward connect");
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            let _ = to_client.shutdown().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (from_pod, to_pod) = tcp.into_split();
    let mut up = tokio::spawn(pump(from_client, to_pod));
    pump(from_pod, &mut to_client).await;
    // The pod's side ended: end the error stream without a message (client-go reads it to the
    // end before it lets go of the connection). The client may still send.
    let _ = error.shutdown().await;
    if client_half_closes {
        let _ = up.await;
    } else if tokio::time::timeout(NO_HALF_CLOSE_GRACE, &mut up)
        .await
        .is_err()
    {
        up.abort();
    }
}

/// The WebSocket port-forward protocol kubelet serves besides the SPDY tunnel
/// (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or none): the ports come from the URL's
/// `port` query parameters, channel `2i` carries the data of port `i` and `2i+1` its errors,
/// each starting with the port as 2 bytes little endian; one connection per port, and the
/// session ends when all of them ended.
pub async fn serve_websocket(
    daemon: Arc<Daemon>,
    req: cri::PortForwardRequest,
    ports: Vec<u16>,
    protocol: &str,
    upgraded: ws::Upgraded,
) {
    let count = u8::try_from(ports.len() * 2).unwrap_or(u8::MAX);
    let readable: Vec<u8> = (0..count).step_by(2).collect();
    let ws::Opened {
        handle,
        mut readers,
        mut writers,
    } = ws::open(upgraded, protocol, count, &readable);
    let target = match daemon
        .sandboxes()
        .and_then(|s| s.port_forward_target(&req.pod_sandbox_id))
    {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::warn!(pod_id = %req.pod_sandbox_id, error = %e, "port-forward session");
            handle.close().await;
            return;
        }
    };
    let mut pairs = Vec::new();
    for (i, port) in ports
        .iter()
        .copied()
        .enumerate()
        .take(usize::from(count / 2))
    {
        let (Some(from_client), Some(mut to_client), Some(mut error)) = (
            readers.get_mut(2 * i).and_then(Option::take),
            writers.get_mut(2 * i).and_then(Option::take),
            writers.get_mut(2 * i + 1).and_then(Option::take),
        ) else {
            continue;
        };
        let target = target.clone();
        pairs.push(tokio::spawn(async move {
            let _ = to_client.write_all(&port.to_le_bytes()).await;
            let _ = error.write_all(&port.to_le_bytes()).await;
            copy_pair(&target, port, from_client, to_client, error, false).await;
        }));
    }
    let all = async {
        for p in pairs {
            let _ = p.await;
        }
    };
    tokio::select! {
        () = all => {}
        () = handle.closed() => {}
    }
    tracing::info!(pod_id = %target.pod_id, ports = ?ports, "port-forward session ended");
    handle.close().await;
}

/// The `port` query parameters of a WebSocket port-forward URL (`port=80&port=8080,9090`), as
/// kubelet reads them: at least one, each in 1-65535.
pub fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let Some(value) = pair.strip_prefix("port=") else {
            continue;
        };
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        let value = value.replace("%2C", ",").replace("%2c", ",");
        for p in value.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {p:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {p:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > 64 {
        return Err(format!("{} ports requested, at most 64", ports.len()));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ports_follow_kubelet() {
        assert_eq!(query_ports(Some("port=80")).unwrap(), [80]);
        assert_eq!(
            query_ports(Some("x=1&port=80&port=8080,9090")).unwrap(),
            [80, 8080, 9090]
        );
        assert!(query_ports(None).unwrap_err().contains("required"));
        assert!(query_ports(Some("port=")).unwrap_err().contains("empty"));
        assert!(query_ports(Some("port=0")).unwrap_err().contains("> 0"));
        assert!(query_ports(Some("port=70000")).is_err());
    }
}
