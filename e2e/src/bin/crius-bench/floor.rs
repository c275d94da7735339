//! The OCI runtime floor: bare `<runtime> create` + `<runtime> start`, `<runtime> exec` of a
//! command (`true`) and `delete --force` of one bundle, no CRI in between. Create+start and
//! ExecSync of any CRI runtime using that OCI runtime cannot be faster than this, so the table
//! shows each endpoint's overhead over it.
//!
//! The bundle's `config.json` is copied per container with its `root.path` made absolute and
//! its `cgroupsPath` moved under `/crius-bench/`; the rootfs is shared read-only-by-convention.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Report, Row};

/// Measures `runtimes` (binaries on PATH or paths) `iterations` times each, interleaved.
pub fn run(bundle: &Path, runtimes: &[String], iterations: usize, report: &mut Report) -> bool {
    let mut ok = true;
    let spec = match read_spec(bundle) {
        Ok(s) => s,
        Err(e) => {
            report.note(format!("floor: {e:#}"));
            return false;
        }
    };
    let Ok(scratch) = tempfile::Builder::new()
        .prefix("crius-bench-floor-")
        .tempdir()
    else {
        report.note("floor: no temp dir".into());
        return false;
    };
    let mut live: Vec<&String> = Vec::new();
    for r in runtimes {
        if which(r) {
            live.push(r);
            report.subject(
                &format!("bare {r}"),
                &format!("`{r} create` + `{r} start` of the same bundle, no CRI"),
            );
        } else {
            report.note(format!("floor: {r} not installed; skipped"));
        }
    }
    let mut samples: Vec<[Vec<Duration>; 3]> = live.iter().map(|_| Default::default()).collect();
    'outer: for i in 0..iterations {
        for (k, r) in live.iter().enumerate() {
            match once(r, &spec, scratch.path(), i) {
                Ok(times) => {
                    for (into, t) in samples[k].iter_mut().zip(times) {
                        into.push(t);
                    }
                }
                Err(e) => {
                    report.note(format!("floor: {r}: {e:#}"));
                    ok = false;
                    break 'outer;
                }
            }
        }
    }
    for (k, operation) in [
        "CreateContainer+StartContainer",
        "ExecSync",
        "runtime delete --force (running)",
    ]
    .into_iter()
    .enumerate()
    {
        for (r, times) in live.iter().zip(&samples) {
            report.push(Row::new(
                operation,
                &format!("bare {r}"),
                times[k].clone(),
                None,
            ));
        }
    }
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join("crius-bench"));
        }
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/crius-bench");
    ok
}

fn read_spec(bundle: &Path) -> Result<serde_json::Value> {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))?;
    let root = spec["root"]["path"].as_str().unwrap_or("rootfs").to_owned();
    spec["root"]["path"] = serde_json::json!(bundle.join(root));
    Ok(spec)
}

fn which(runtime: &str) -> bool {
    Command::new(runtime)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One container: [create+start, exec of `true`, delete --force].
fn once(
    runtime: &str,
    spec: &serde_json::Value,
    scratch: &Path,
    i: usize,
) -> Result<[Duration; 3]> {
    let id = format!("crius-bench-{}-{runtime}-{i}", std::process::id()).replace('/', "_");
    let dir = scratch.join(&id);
    std::fs::create_dir_all(&dir)?;
    let mut spec = spec.clone();
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/crius-bench/{id}"));
    std::fs::write(dir.join("config.json"), spec.to_string())?;
    let root = scratch.join(format!("root-{}", runtime.replace('/', "_")));
    let call = |args: &[&str]| -> Result<()> {
        // Not pipes: the container inherits the runtime's stdio and would hold them open.
        let err_path = dir.join("stderr");
        let err = std::fs::File::create(&err_path)?;
        let status = Command::new(runtime)
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .with_context(|| format!("spawn {runtime}"))?;
        if !status.success() {
            let msg = std::fs::read_to_string(&err_path).unwrap_or_default();
            bail!("{runtime} {args:?}: {}", msg.trim());
        }
        Ok(())
    };
    let dir_s = dir.to_string_lossy();
    let t = Instant::now();
    call(&["create", "--bundle", &dir_s, &id])?;
    call(&["start", &id])?;
    let up = t.elapsed();
    let t = Instant::now();
    call(&["exec", &id, "true"])?;
    let exec = t.elapsed();
    let t = Instant::now();
    call(&["delete", "--force", &id])?;
    Ok([up, exec, t.elapsed()])
}
