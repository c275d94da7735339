//! A remote command client over SPDY/3.1 as client-go speaks it (stream order and headers), shared
//! by the streaming and exec identity tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use crius::streaming::spdy::{Connection, Stream, StreamReader, StreamWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the upgrade request for `url` and returns the raw response head and, on 101, the
/// client side of the SPDY connection.
pub async fn upgrade(url: &str, protocols: &[&str]) -> (String, Option<Connection>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut tcp = TcpStream::connect(host).await.unwrap();
    let mut req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read the response head byte by byte: nothing after it may be consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n == 1, "connection closed in the response head: {head:?}");
        head.push(byte[0]);
        assert!(head.len() < 16 << 10);
    }
    let head = String::from_utf8(head).unwrap();
    if head.starts_with("HTTP/1.1 101") {
        // Go clients refuse an upgrade whose Connection header lacks "Upgrade".
        assert!(
            head.to_ascii_lowercase().contains("connection: upgrade"),
            "{head}"
        );
    } else {
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut body))
            .await
            .map(|r| r.unwrap_or(0))
            .unwrap_or(0);
        return (head + &String::from_utf8_lossy(&body[..n]), None);
    }
    let (conn, _incoming) = Connection::client(tcp);
    (head, Some(conn))
}

pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The streams of a remote command session, opened in client-go's order.
pub struct Session {
    pub conn: Connection,
    pub error: StreamReader,
    pub stdin: Option<StreamWriter>,
    pub stdout: StreamReader,
    pub stderr: Option<StreamReader>,
    pub resize: Option<StreamWriter>,
}

pub async fn open(conn: &Connection, kind: &str) -> Stream {
    tokio::time::timeout(
        Duration::from_secs(10),
        conn.open(headers(&[("streamtype", kind)])),
    )
    .await
    .expect("stream reply in time")
    .unwrap()
}

pub async fn session(url: &str, stdin: bool, stderr: bool, resize: bool) -> Session {
    let (head, conn) = upgrade(url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    let conn = conn.unwrap();
    let (error, _) = open(&conn, "error").await.split();
    let stdin = if stdin {
        Some(open(&conn, "stdin").await.split().1)
    } else {
        None
    };
    let (stdout, _) = open(&conn, "stdout").await.split();
    let stderr = if stderr {
        Some(open(&conn, "stderr").await.split().0)
    } else {
        None
    };
    let resize = if resize {
        Some(open(&conn, "resize").await.split().1)
    } else {
        None
    };
    Session {
        conn,
        error,
        stdin,
        stdout,
        stderr,
        resize,
    }
}

pub async fn read_all(mut r: StreamReader) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut out))
        .await
        .expect("stream ends in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `r` until `needle` has arrived; returns everything read.
pub async fn read_until(r: &mut StreamReader, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = tokio::time::timeout_at(deadline, r.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&out)))
            .unwrap();
        assert!(
            n > 0,
            "EOF before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn status_of(error: &str) -> serde_json::Value {
    serde_json::from_str(error).unwrap_or_else(|e| panic!("status {error:?}: {e}"))
}
