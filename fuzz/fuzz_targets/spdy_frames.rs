//! SPDY/3.1 frame parsing, through the public server connection: the bytes arrive as if from a
//! client, every stream the peer opens is taken and drained. Nothing may panic or hang.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use crius::streaming::spdy::Connection;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (conn, mut incoming) = Connection::server(server);
        let (mut rd, mut wr) = tokio::io::split(client);
        // What the server answers is read and dropped, so it never blocks on a full pipe.
        let sink = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        drop(wr);
        let drain = async {
            while let Some(stream) = incoming.recv().await {
                let (mut r, _w) = stream.split();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        };
        let bounded = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(drain, conn.closed());
        })
        .await;
        assert!(bounded.is_ok(), "connection did not end after the peer's EOF");
        conn.close().await;
        sink.abort();
    });
});
