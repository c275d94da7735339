//! crius-conmon: the per-container monitor.
//!
//! `run` (see `launcher.rs`, `monitor.rs` and `docs/monitor.md`): one monitor per container
//! owns the container's stdio, its CRI log, its exit record and its attach socket, and answers
//! the daemon on a control socket with the `crius-proto` monitor protocol. `infra` runs as a
//! pod's PID 1 (see `infra.rs`); `userns` creates and pins a pod's user namespace and the
//! namespaces it owns (see `userns.rs`). It must stay tiny: no tonic, no async runtime, one thread,
//! nothing per container that the kernel can do for it.

mod attach;
mod cli;
mod container_io;
mod container_log;
mod control;
mod infra;
mod launcher;
mod monitor;
mod oom_watcher;
mod runtime;
mod sys;
mod userns;

use crius_proto::monitor::PingResponse;

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version") | Some("version") => {
            let pong = PingResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
            };
            println!("crius-conmon {} (protocol crius.monitor.v1)", pong.version);
        }
        Some("run") => {
            let rest: Vec<String> = args.collect();
            std::process::exit(launcher::main(&rest));
        }
        Some("infra") => {
            let rest: Vec<String> = args.collect();
            if let Err(e) = infra::main(&rest) {
                eprintln!("crius-conmon infra: {e}");
                std::process::exit(1);
            }
        }
        Some("userns") => {
            let rest: Vec<String> = args.collect();
            if let Err(e) = userns::main(&rest) {
                eprintln!("crius-conmon userns: {e}");
                std::process::exit(1);
            }
        }
        other => {
            eprintln!(
                "crius-conmon: unsupported invocation {:?}; the monitor is started by crius",
                other.unwrap_or("")
            );
            std::process::exit(2);
        }
    }
}
