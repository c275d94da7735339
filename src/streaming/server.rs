//! The streaming HTTP server: `Exec`, `Attach` and `PortForward` return a URL on it; the client
//! (kubelet's proxy, crictl) connects there and upgrades to SPDY/3.1.
//!
//! Owns the listener, the request cache, URL building and the upgrade handshake (protocol
//! negotiation through `X-Stream-Protocol-Version`, as Kubernetes' `httpstream.Handshake`), and
//! the limits that keep it standing under abuse: one deadline for a connection's whole HTTP
//! phase ([`REQUEST_HEAD_TIMEOUT`], TLS handshake included), at most [`MAX_HTTP_CONNECTIONS`] in
//! that phase, `api.stream_max_sessions` sessions, and the idle timeout of every session.
//! Hands the upgraded connection to [`super::remotecommand`] or [`super::portforward`]. Must
//! not run processes or enter namespaces itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::cache::{Pending, RequestCache};
use super::idle::IdleTimeout;
use super::remotecommand::Transport;
use super::spdy;
use crate::config::ApiConfig;
use crate::daemon::Daemon;
use crate::error::Result;

/// `X-Stream-Protocol-Version`: offered by the client (once per protocol), chosen by the server.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// Sent with a refusal: what the server supports.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";

/// Remote command protocols over SPDY, preferred first (v5 exists only over WebSocket).
pub const REMOTECOMMAND_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol over SPDY.
pub const PORTFORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];

/// How long a client has, from connecting, to send its request head (and finish the TLS
/// handshake): slow or half-sent requests are dropped after this.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still in their HTTP phase (before the upgrade) at once; more are closed at once.
pub const MAX_HTTP_CONNECTIONS: usize = 512;

/// How the streaming server treats its clients (`[api] stream_*`).
#[derive(Clone)]
pub struct StreamSettings {
    /// No traffic this long ends a session; zero: never.
    pub idle_timeout: Duration,
    /// Sessions at once.
    pub max_sessions: usize,
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
}

impl StreamSettings {
    /// From a validated config; reads the TLS files (errors name them).
    pub fn from_config(api: &ApiConfig) -> std::result::Result<StreamSettings, String> {
        let idle_timeout = crate::config::parse_duration(&api.stream_idle_timeout)
            .map_err(|e| format!("api.stream_idle_timeout: {e}"))?;
        let tls = if api.stream_tls_cert.as_os_str().is_empty() {
            None
        } else {
            Some(super::tls::acceptor(
                &api.stream_tls_cert,
                &api.stream_tls_key,
            )?)
        };
        Ok(StreamSettings {
            idle_timeout,
            max_sessions: api.stream_max_sessions,
            tls,
        })
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            idle_timeout: Duration::from_secs(4 * 3600),
            max_sessions: 1000,
            tls: None,
        }
    }
}

/// The streaming server's shared half: where it listens and what waits for a client.
pub struct StreamServer {
    addr: SocketAddr,
    cache: RequestCache,
    settings: StreamSettings,
    sessions: Arc<Semaphore>,
    http_connections: Arc<Semaphore>,
}

impl StreamServer {
    pub fn new(addr: SocketAddr, settings: StreamSettings) -> Arc<Self> {
        Arc::new(StreamServer {
            addr,
            cache: RequestCache::default(),
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
            http_connections: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
            settings,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sessions running now.
    pub fn sessions(&self) -> usize {
        self.settings.max_sessions - self.sessions.available_permits()
    }

    /// Keeps `pending` for its client and returns the URL to connect to.
    pub fn url(&self, pending: Pending) -> Result<String> {
        let path = pending.path();
        let token = self.cache.insert(pending)?;
        let scheme = if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(format!("{scheme}://{}/{path}/{token}", self.addr))
    }
}

/// Serves the streaming endpoint until `stop` turns true. Sessions already upgraded keep
/// running until their client or process ends (or they idle out).
pub async fn serve(
    listener: TcpListener,
    server: Arc<StreamServer>,
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::metrics::stopped(&mut stop) => return,
        };
        let Ok(permit) = server.http_connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many streaming connections in their HTTP phase; closed");
            continue;
        };
        let daemon = daemon.clone();
        let server = server.clone();
        tokio::spawn(async move {
            // The whole HTTP phase (TLS handshake, request head, response) has one deadline; an
            // upgraded session lives on after it.
            let phase = async {
                match &server.settings.tls {
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => http_phase(s, daemon, server, peer).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "streaming TLS handshake"),
                    },
                    None => http_phase(stream, daemon, server, peer).await,
                }
            };
            if tokio::time::timeout(REQUEST_HEAD_TIMEOUT, phase)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "streaming request not complete in time; closed");
            }
            drop(permit);
        });
    }
}

/// The HTTP/1.1 requests of one connection, until one is upgraded (or the deadline ends it).
async fn http_phase<IO>(io: IO, daemon: Arc<Daemon>, server: Arc<StreamServer>, peer: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let daemon = daemon.clone();
        let server = server.clone();
        async move { Ok::<_, Infallible>(route(daemon, &server, req, peer)) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "streaming connection");
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    resp
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// The first protocol the client offers that the server supports (Kubernetes' order). `""`
/// when the client offers none (a legacy client); `None` when none matches.
pub fn negotiate<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    if offered.is_empty() {
        return Some("");
    }
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

fn route(
    daemon: Arc<Daemon>,
    streaming: &Arc<StreamServer>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_matches('/').to_string();
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let Ok(session) = streaming.sessions.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} streaming sessions are running (api.stream_max_sessions); retry later",
                streaming.settings.max_sessions
            ),
        );
    };
    let idle_timeout = streaming.settings.idle_timeout;
    let Some(pending) = streaming.cache.take(token) else {
        return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    if pending.path() != kind {
        return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    }
    let websocket = header_has(&req, UPGRADE, "websocket");
    if !websocket && !header_has(&req, UPGRADE, "SPDY/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "this endpoint needs a connection upgrade to SPDY/3.1 or websocket",
        );
    }
    let ws_key = if websocket {
        let key = req.headers().get("sec-websocket-key").cloned();
        let version_ok = req
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13");
        match key {
            Some(k) if version_ok => Some(super::ws::accept_key(k.as_bytes())),
            _ => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "a websocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
                )
            }
        }
    } else {
        None
    };
    let protocol_header = if websocket {
        "sec-websocket-protocol"
    } else {
        PROTOCOL_HEADER
    };
    let offered: Vec<String> = req
        .headers()
        .get_all(protocol_header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    let supported: &[&str] = match (&pending, websocket) {
        (Pending::PortForward(_), false) => &PORTFORWARD_PROTOCOLS,
        (Pending::PortForward(_), true) => &super::ws::PORTFORWARD_PROTOCOLS,
        (_, false) => &REMOTECOMMAND_PROTOCOLS,
        (_, true) => &super::ws::REMOTECOMMAND_PROTOCOLS,
    };
    let protocol = negotiate(&offered, supported);
    let Some(protocol) = protocol else {
        let mut resp = plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
            resp.headers_mut().insert(ACCEPTED_PROTOCOLS_HEADER, v);
        }
        return resp;
    };
    // The WebSocket channel protocol of port-forward names its ports in the query.
    let ws_ports = if websocket
        && matches!(pending, Pending::PortForward(_))
        && protocol != super::ws::PORTFORWARD_TUNNEL
    {
        match super::portforward::query_ports(req.uri().query()) {
            Ok(ports) => ports,
            Err(e) => return plain(StatusCode::BAD_REQUEST, e),
        }
    } else {
        Vec::new()
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let transport = if websocket { "websocket" } else { "spdy" };
    tracing::info!(%peer, kind, protocol, transport, "streaming session");
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let io = IdleTimeout::new(hyper_util::rt::TokioIo::new(upgraded), idle_timeout);
        if websocket {
            let ws = super::ws::Upgraded::new(io).await;
            match pending {
                Pending::Exec(r) => {
                    super::remotecommand::exec(daemon, r, protocol, Transport::WebSocket(ws)).await
                }
                Pending::Attach(r) => {
                    super::remotecommand::attach(daemon, r, protocol, Transport::WebSocket(ws))
                        .await
                }
                Pending::PortForward(r) if protocol == super::ws::PORTFORWARD_TUNNEL => {
                    let (conn, streams) = spdy::Connection::server(super::ws::tunnel(ws));
                    super::portforward::serve(daemon, r, conn, streams).await
                }
                Pending::PortForward(r) => {
                    super::portforward::serve_websocket(daemon, r, ws_ports, protocol, ws).await
                }
            }
        } else {
            let (conn, streams) = spdy::Connection::server(io);
            match pending {
                Pending::Exec(r) => {
                    super::remotecommand::exec(daemon, r, protocol, Transport::Spdy(conn, streams))
                        .await
                }
                Pending::Attach(r) => {
                    super::remotecommand::attach(
                        daemon,
                        r,
                        protocol,
                        Transport::Spdy(conn, streams),
                    )
                    .await
                }
                Pending::PortForward(r) => {
                    super::portforward::serve(daemon, r, conn, streams).await
                }
            }
        }
        drop(session);
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(accept) = ws_key {
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            headers.insert("sec-websocket-accept", v);
        }
    } else {
        headers.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    }
    if let Ok(v) = HeaderValue::from_str(protocol) {
        if !protocol.is_empty() {
            headers.insert(protocol_header, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let offered = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &offered(&[
                    "v5.channel.k8s.io",
                    "v4.channel.k8s.io",
                    "v3.channel.k8s.io"
                ]),
                &REMOTECOMMAND_PROTOCOLS
            ),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            negotiate(&offered(&["channel.k8s.io"]), &REMOTECOMMAND_PROTOCOLS),
            Some("channel.k8s.io")
        );
        assert_eq!(negotiate(&[], &REMOTECOMMAND_PROTOCOLS), Some(""));
        assert_eq!(
            negotiate(&offered(&["v5.channel.k8s.io"]), &REMOTECOMMAND_PROTOCOLS),
            None
        );
    }
}
