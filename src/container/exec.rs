//! The exec'd process: the one place that decides who an `ExecSync` or streaming `Exec` runs as.
//!
//! An exec runs with the container's own identity, as CRI-O and containerd do: the process is
//! the container's OCI `process` (from the bundle's `config.json`, as resolved at create: user
//! uid/gid/additional gids after SupplementalGroupsPolicy, all five capability sets,
//! `noNewPrivileges`, environment, cwd, rlimits, AppArmor profile, SELinux label, OOM score)
//! with the exec's own `args` and terminal. It is handed to the runtime as `exec --process FILE`,
//! a private file (0600, created exclusively, never following a symlink) in the container's
//! monitor dir, so nothing is left to the runtime's own exec defaults (runc and crun differ:
//! crun ran every exec as root with its default capabilities).
//!
//! Must not build runtime argv (`runtime::oci` does) or run anything.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::runtime::oci::ExecFiles;

/// The OCI process for an exec of `cmd` in the container whose runtime spec is `spec`: the
/// container's process with `args` replaced, `terminal` set to `tty`, no console size (resizes
/// follow), and `TERM=xterm` added for a terminal when the container's env has no `TERM` (as
/// containerd does). Everything else is the container's, verbatim (fields this version does not
/// know included).
pub fn process_for(spec: &[u8], cmd: &[String], tty: bool) -> Result<Value> {
    let spec: Value = serde_json::from_slice(spec)
        .map_err(|e| Error::Internal(format!("container runtime spec is not JSON: {e}")))?;
    let Some(Value::Object(process)) = spec.get("process") else {
        return Err(Error::Internal(
            "container runtime spec has no process".into(),
        ));
    };
    let mut process = process.clone();
    process.insert(
        "args".into(),
        Value::Array(cmd.iter().cloned().map(Value::String).collect()),
    );
    process.insert("terminal".into(), Value::Bool(tty));
    process.remove("consoleSize");
    process.remove("commandLine");
    if tty {
        let env = process
            .entry("env")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(env) = env {
            let has_term = env
                .iter()
                .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")));
            if !has_term {
                env.push(Value::String("TERM=xterm".into()));
            }
        }
    }
    Ok(Value::Object(process))
}

/// Writes the process of an exec of `cmd` into the container's monitor dir, read from its
/// bundle's `config.json`. Blocking.
pub fn prepare(
    bundle: &Path,
    monitor_dir: &Path,
    token: &str,
    cmd: &[String],
    tty: bool,
) -> Result<ExecFiles> {
    let spec_path = bundle.join("config.json");
    let spec = std::fs::read(&spec_path).map_err(|e| {
        Error::FailedPrecondition(format!(
            "read the container's runtime spec {}: {e}",
            spec_path.display()
        ))
    })?;
    let process = process_for(&spec, cmd, tty)?;
    let files = ExecFiles {
        pid_file: monitor_dir.join(format!("exec-{token}.pid")),
        process_file: monitor_dir.join(format!("exec-{token}.json")),
    };
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&files.process_file)?;
        f.write_all(process.to_string().as_bytes())
    };
    write().map_err(|e| {
        Error::Internal(format!(
            "write exec process {}: {e}",
            files.process_file.display()
        ))
    })?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Vec<u8> {
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "consoleSize": {"height": 10, "width": 20},
                "user": {"uid": 1001, "gid": 2002, "additionalGids": [3003, 4004], "umask": 18},
                "args": ["sleep", "1000"],
                "env": ["PATH=/bin", "HOME=/home/u"],
                "cwd": "/work",
                "capabilities": {
                    "bounding": ["CAP_CHOWN"], "effective": [], "inheritable": [],
                    "permitted": [], "ambient": []
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true,
                "apparmorProfile": "crius-default",
                "selinuxLabel": "system_u:system_r:container_t:s0",
                "oomScoreAdj": 500,
                "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0}
            },
            "root": {"path": "rootfs"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn exec_process_is_the_containers_with_the_exec_args() {
        let cmd = vec!["id".to_string(), "-u".to_string()];
        let p = process_for(&spec(), &cmd, false).unwrap();
        assert_eq!(p["args"], json!(["id", "-u"]));
        assert_eq!(p["terminal"], json!(false));
        assert_eq!(
            p["user"],
            json!({"uid": 1001, "gid": 2002, "additionalGids": [3003, 4004], "umask": 18})
        );
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_CHOWN"]));
        assert_eq!(p["capabilities"]["effective"], json!([]));
        assert_eq!(p["noNewPrivileges"], json!(true));
        assert_eq!(p["env"], json!(["PATH=/bin", "HOME=/home/u"]));
        assert_eq!(p["cwd"], json!("/work"));
        assert_eq!(p["rlimits"][0]["type"], json!("RLIMIT_NOFILE"));
        assert_eq!(p["apparmorProfile"], json!("crius-default"));
        assert_eq!(p["selinuxLabel"], json!("system_u:system_r:container_t:s0"));
        assert_eq!(p["oomScoreAdj"], json!(500));
        // Fields the daemon does not model are passed on verbatim.
        assert_eq!(p["ioPriority"]["class"], json!("IOPRIO_CLASS_IDLE"));
        assert!(p.get("consoleSize").is_none());
    }

    #[test]
    fn a_terminal_exec_gets_term_unless_the_container_sets_it() {
        let p = process_for(&spec(), &["sh".to_string()], true).unwrap();
        assert_eq!(p["terminal"], json!(true));
        assert_eq!(p["env"], json!(["PATH=/bin", "HOME=/home/u", "TERM=xterm"]));
        let mut with_term: Value = serde_json::from_slice(&spec()).unwrap();
        with_term["process"]["env"] = json!(["TERM=vt100"]);
        let p = process_for(with_term.to_string().as_bytes(), &["sh".to_string()], true).unwrap();
        assert_eq!(p["env"], json!(["TERM=vt100"]));
    }

    #[test]
    fn a_spec_without_process_is_an_error() {
        assert!(process_for(b"{}", &["id".to_string()], false).is_err());
        assert!(process_for(b"not json", &["id".to_string()], false).is_err());
    }

    #[test]
    fn the_process_file_is_private_and_never_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let mon = dir.path().join("mon");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&mon).unwrap();
        std::fs::write(bundle.join("config.json"), spec()).unwrap();
        let files = prepare(&bundle, &mon, "t1", &["id".to_string()], false).unwrap();
        let meta = std::fs::metadata(&files.process_file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let written: Value =
            serde_json::from_slice(&std::fs::read(&files.process_file).unwrap()).unwrap();
        assert_eq!(written["args"], json!(["id"]));
        let (pid, proc_file) = (files.pid_file.clone(), files.process_file.clone());
        drop(files);
        assert!(!proc_file.exists() && !pid.exists());

        let target = dir.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, mon.join("exec-t2.json")).unwrap();
        assert!(prepare(&bundle, &mon, "t2", &["id".to_string()], false).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
