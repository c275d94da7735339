//! The OCI runtime's command lines: the only place the monitor builds runtime argv.
//!
//! Owns the global flags (`--root`, `--log`, `--log-format json`, understood by runc and crun)
//! and turns a failed runtime call into one readable message. Must not run or wait for
//! anything itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cli::RunConfig;

/// Name of the runtime's own log inside the monitor dir.
pub const RUNTIME_LOG: &str = "runtime.log";

fn global_args(cfg: &RunConfig) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(root) = &cfg.runtime_root {
        args.push("--root".into());
        args.push(root.into());
    }
    args.push("--log".into());
    args.push(cfg.dir.join(RUNTIME_LOG).into());
    args.push("--log-format".into());
    args.push("json".into());
    args
}

/// `RUNTIME [--root R] --log DIR/runtime.log --log-format json create --bundle B
/// --pid-file P [--console-socket S] ID`
pub fn create_args(cfg: &RunConfig, pid_file: &Path, console: Option<&Path>) -> Vec<OsString> {
    let mut args = global_args(cfg);
    args.push("create".into());
    args.push("--bundle".into());
    args.push(cfg.bundle.clone().into());
    args.push("--pid-file".into());
    args.push(pid_file.into());
    if let Some(sock) = console {
        args.push("--console-socket".into());
        args.push(sock.into());
    }
    args.push(cfg.id.clone().into());
    args
}

/// `RUNTIME [--root R] --log ... delete --force ID`
pub fn delete_args(cfg: &RunConfig) -> Vec<OsString> {
    let mut args = global_args(cfg);
    args.push("delete".into());
    args.push("--force".into());
    args.push(cfg.id.clone().into());
    args
}

/// The runtime's log file for `cfg`.
pub fn log_path(cfg: &RunConfig) -> PathBuf {
    cfg.dir.join(RUNTIME_LOG)
}

/// One message for a failed runtime call: what it printed on stderr (runc and crun print
/// their final error there), else the last `error` entry of its JSON log, else `fallback`.
pub fn error_message(stderr: &[u8], json_log: &str, fallback: String) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        return stderr.to_string();
    }
    json_log
        .lines()
        .rev()
        .filter(|l| l.contains("\"level\":\"error\""))
        .find_map(json_string_field("msg"))
        .unwrap_or(fallback)
}

/// Extracts a top-level string field from one line of JSON (the runtime's log entries), enough
/// for the flat objects runc and crun write; no JSON library for one field.
fn json_string_field(name: &str) -> impl Fn(&str) -> Option<String> + '_ {
    move |line: &str| {
        let key = format!("\"{name}\":");
        let start = line.find(&key)? + key.len();
        let rest = line[start..].trim_start().strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RunConfig {
        RunConfig {
            id: "abc".into(),
            bundle: "/b".into(),
            runtime: "/usr/sbin/runc".into(),
            runtime_root: Some("/run/r".into()),
            dir: "/m".into(),
            log_path: "/l".into(),
            terminal: false,
            stdin: false,
            stdin_once: false,
            log_max_line: 16384,
        }
    }

    #[test]
    fn create_and_delete_argv() {
        let c = cfg();
        let args = create_args(&c, Path::new("/m/container.pid"), None);
        assert_eq!(
            args,
            [
                "--root",
                "/run/r",
                "--log",
                "/m/runtime.log",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/m/container.pid",
                "abc"
            ]
            .map(OsString::from)
        );
        let args = create_args(&c, Path::new("/p"), Some(Path::new("/m/console.sock")));
        assert_eq!(args[args.len() - 3], "--console-socket");
        let mut c = c;
        c.runtime_root = None;
        assert_eq!(
            delete_args(&c),
            [
                "--log",
                "/m/runtime.log",
                "--log-format",
                "json",
                "delete",
                "--force",
                "abc"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn error_prefers_stderr_then_json_log() {
        let log = concat!(
            r#"{"level":"warning","msg":"ignored","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"container_linux.go: \"bad\"\nrootfs \u0041","time":"t"}"#,
            "\n",
        );
        assert_eq!(error_message(b" boom\n", log, "x".into()), "boom");
        assert_eq!(
            error_message(b"", log, "x".into()),
            "container_linux.go: \"bad\"\nrootfs A"
        );
        assert_eq!(error_message(b"", "", "exit 1".into()), "exit 1");
    }
}
