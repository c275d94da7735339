//! The `run` command line, the daemon's contract with the monitor:
//!
//! ```text
//! crius-conmon run --id ID --bundle DIR --runtime PATH [--runtime-root DIR] --dir DIR
//!                  --log-path FILE [--terminal] [--stdin] [--stdin-once]
//!                  [--log-max-line BYTES (default 16384)]
//! ```
//!
//! Owns parsing and validation only; relative paths are made absolute here because the monitor
//! changes its working directory to `--dir`.

use std::path::{Path, PathBuf};

/// Default and bounds of `--log-max-line`.
pub const DEFAULT_LOG_MAX_LINE: usize = 16 * 1024;
const MAX_LOG_MAX_LINE: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: Option<PathBuf>,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub log_max_line: usize,
}

fn absolute(flag: &str, p: PathBuf) -> Result<PathBuf, String> {
    std::path::absolute(&p).map_err(|e| format!("{flag} {}: {e}", p.display()))
}

pub fn parse_run(args: &[String]) -> Result<RunConfig, String> {
    let mut id = None;
    let mut bundle = None;
    let mut runtime = None;
    let mut runtime_root = None;
    let mut dir = None;
    let mut log_path = None;
    let mut terminal = false;
    let mut stdin = false;
    let mut stdin_once = false;
    let mut log_max_line = DEFAULT_LOG_MAX_LINE;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--id" => id = Some(value()?),
            "--bundle" => bundle = Some(absolute(flag, value()?.into())?),
            "--runtime" => runtime = Some(PathBuf::from(value()?)),
            "--runtime-root" => runtime_root = Some(absolute(flag, value()?.into())?),
            "--dir" => dir = Some(absolute(flag, value()?.into())?),
            "--log-path" => log_path = Some(absolute(flag, value()?.into())?),
            "--terminal" => terminal = true,
            "--stdin" => stdin = true,
            "--stdin-once" => stdin_once = true,
            "--log-max-line" => {
                let v = value()?;
                log_max_line = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LOG_MAX_LINE).contains(n))
                    .ok_or_else(|| {
                        format!("--log-max-line {v:?}: want a byte count in 1..={MAX_LOG_MAX_LINE}")
                    })?;
            }
            other => return Err(format!("unknown run flag {other:?}")),
        }
    }
    let id: String = id.ok_or("--id is required")?;
    if id.is_empty() || id.contains('/') {
        return Err(format!("--id {id:?} is not a valid container id"));
    }
    let runtime = runtime.ok_or("--runtime is required")?;
    // A bare name is looked up in PATH by the runtime spawn; a relative path is made absolute.
    let runtime = if runtime.components().count() > 1 {
        absolute("--runtime", runtime)?
    } else {
        runtime
    };
    let dir = dir.ok_or("--dir is required")?;
    if !Path::new(&dir).is_dir() {
        return Err(format!("--dir {} is not a directory", dir.display()));
    }
    Ok(RunConfig {
        id,
        bundle: bundle.ok_or("--bundle is required")?,
        runtime,
        runtime_root,
        dir,
        log_path: log_path.ok_or("--log-path is required")?,
        terminal,
        stdin,
        stdin_once,
        log_max_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_contract() {
        let cfg = parse_run(&args(
            "--id c1 --bundle /b --runtime /usr/sbin/runc --runtime-root /run/runc --dir /tmp \
             --log-path /l/0.log --terminal --stdin --stdin-once --log-max-line 100",
        ))
        .unwrap();
        assert_eq!(cfg.id, "c1");
        assert_eq!(cfg.runtime_root.as_deref(), Some(Path::new("/run/runc")));
        assert!(cfg.terminal && cfg.stdin && cfg.stdin_once);
        assert_eq!(cfg.log_max_line, 100);
        let cfg = parse_run(&args(
            "--id c1 --bundle /b --runtime runc --dir /tmp --log-path /l",
        ))
        .unwrap();
        assert_eq!(cfg.log_max_line, DEFAULT_LOG_MAX_LINE);
        assert_eq!(cfg.runtime, Path::new("runc"));
        assert!(!cfg.terminal && cfg.runtime_root.is_none());
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "--id c1 --bundle /b --runtime runc --dir /tmp",
            "--id c1 --bundle /b --runtime runc --dir /tmp --log-path /l --bogus",
            "--id c1 --bundle /b --runtime runc --dir /tmp --log-path /l --log-max-line 0",
            "--id a/b --bundle /b --runtime runc --dir /tmp --log-path /l",
            "--id c1 --bundle /b --runtime runc --dir /nonexistent-dir --log-path /l",
            "--id",
        ] {
            assert!(parse_run(&args(bad)).is_err(), "{bad}");
        }
    }
}
