//! `crius-conmon run`: the launcher, the process the daemon starts.
//!
//! Owns the detaching: closes inherited descriptors, creates the sync pipe and double-forks
//! (the child calls setsid and forks the monitor, then exits), so the monitor is reparented
//! away from the daemon and outlives it. The launcher then waits for the monitor's report on
//! the sync pipe and prints `pid=<container pid> monitor_pid=<monitor pid>` (exit 0), or the
//! error (stderr, exit 1). It never hangs: if the monitor dies before reporting, the pipe
//! reads EOF. Must not do any of the monitor's work.

use std::fs::File;
use std::io::Read;

use crate::{cli, monitor, sys};

/// Runs the launcher; returns its exit code.
pub fn main(args: &[String]) -> i32 {
    let cfg = match cli::parse_run(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("crius-conmon run: {e}");
            return 1;
        }
    };
    // Nothing of the daemon (sockets, store files) may leak into the monitor or the container.
    sys::close_fds_from(3);
    let (read_end, write_end) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("crius-conmon run: sync pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("crius-conmon run: fork: {e}");
            1
        }
        Ok(sys::Fork::Child) => {
            drop(read_end);
            if sys::setsid().is_err() {
                sys::exit_now(1);
            }
            match sys::fork() {
                Ok(sys::Fork::Child) => monitor::run(cfg, File::from(write_end)),
                // The intermediate process: gone at once, so the monitor's parent becomes the
                // nearest subreaper or init, never the daemon.
                Ok(sys::Fork::Parent(_)) | Err(_) => sys::exit_now(0),
            }
        }
        Ok(sys::Fork::Parent(middle)) => {
            drop(write_end);
            let _ = sys::wait_pid(middle);
            let mut report = String::new();
            let _ = File::from(read_end).read_to_string(&mut report);
            match parse_report(&report) {
                Ok((pid, monitor_pid)) => {
                    println!("pid={pid} monitor_pid={monitor_pid}");
                    0
                }
                Err(msg) => {
                    eprintln!("crius-conmon run: container {}: {msg}", cfg.id);
                    1
                }
            }
        }
    }
}

/// The monitor's report: `ok <container pid> <monitor pid>\n` or `error <message>`.
fn parse_report(report: &str) -> Result<(u32, u32), String> {
    if let Some(rest) = report.strip_prefix("ok ") {
        let mut it = rest.split_whitespace().map(str::parse::<u32>);
        if let (Some(Ok(pid)), Some(Ok(monitor))) = (it.next(), it.next()) {
            return Ok((pid, monitor));
        }
        return Err(format!("garbled monitor report {report:?}"));
    }
    if let Some(msg) = report.strip_prefix("error ") {
        return Err(msg.to_string());
    }
    Err("the monitor exited before reporting whether the container was created".into())
}

#[cfg(test)]
mod tests {
    use super::parse_report;

    #[test]
    fn reports() {
        assert_eq!(parse_report("ok 12 34\n"), Ok((12, 34)));
        assert_eq!(
            parse_report("error runc create c: boom"),
            Err("runc create c: boom".into())
        );
        assert!(parse_report("").unwrap_err().contains("before reporting"));
        assert!(parse_report("ok x").unwrap_err().contains("garbled"));
    }
}
