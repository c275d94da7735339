//! Shared helpers of the monitor tests: a busybox bundle for real runc, launching
//! `crius-conmon run`, reading the CRI log and the exit record, talking to the control socket,
//! and cleanup that runs even when a test fails (`Drop`).
//!
//! Needs root, runc at /usr/sbin/runc and a static busybox at /bin/busybox (Debian
//! `busybox-static`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crius_proto::monitor::{request, response, ExitRecord, Request, Response};
use crius_proto::{decode_frame, encode_frame};
use prost::Message;

pub const RUNC: &str = "/usr/sbin/runc";
pub const BUSYBOX: &str = "/bin/busybox";
pub const MONITOR: &str = env!("CARGO_BIN_EXE_crius-conmon");
/// Parent of every test container's cgroup (cgroupfs, absolute).
pub const CGROUP_PARENT: &str = "crius-conmon-test";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "yes", "tail", "head", "tr", "seq", "stty", "printf", "true",
    "dd", "kill",
];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails loudly when the machine cannot run the tests (they are meant to run as root in CI).
pub fn require_prerequisites() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap().to_string())
        })
        .unwrap();
    assert_eq!(
        uid, "0",
        "the monitor tests need root (they run real runc containers)"
    );
    assert!(
        Path::new(RUNC).exists(),
        "{RUNC} missing: apt-get install runc"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} missing: apt-get install busybox-static"
    );
}

/// What the test container runs.
#[derive(Clone, Debug)]
pub struct Spec {
    pub args: Vec<String>,
    pub terminal: bool,
    pub memory_limit: Option<u64>,
}

impl Spec {
    /// `sh -c SCRIPT`, no terminal, no limit.
    pub fn sh(script: &str) -> Self {
        Spec {
            args: vec!["sh".into(), "-c".into(), script.into()],
            terminal: false,
            memory_limit: None,
        }
    }
}

/// A test container: temp dir with bundle, monitor dir and log dir; cleaned up on drop.
pub struct Container {
    pub id: String,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub pid: Option<u32>,
    pub monitor_pid: Option<u32>,
}

/// The launcher's result on success.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    pub monitor_pid: u32,
}

/// One CRI log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub timestamp: String,
    pub stream: String,
    pub tag: String,
    pub content: String,
}

impl Container {
    pub fn new(name: &str, spec: &Spec) -> Self {
        require_prerequisites();
        let id = format!(
            "cct-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let root = PathBuf::from("/tmp/crius-conmon-tests").join(&id);
        let _ = std::fs::remove_dir_all(&root);
        let bundle = root.join("bundle");
        let dir = root.join("mon");
        let logs = root.join("logs");
        let bin = bundle.join("rootfs/bin");
        for d in [&bin, &dir, &logs] {
            std::fs::create_dir_all(d).unwrap();
        }
        let c = Container {
            log_path: logs.join("0.log"),
            id,
            root,
            bundle,
            dir,
            pid: None,
            monitor_pid: None,
        };
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        c.write_config(spec);
        c
    }

    /// `runc spec`, then a small textual patch: args, terminal, cgroupsPath, memory limit.
    fn write_config(&self, spec: &Spec) {
        let out = Command::new(RUNC)
            .args(["spec", "--bundle"])
            .arg(&self.bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec: {out:?}");
        let path = self.bundle.join("config.json");
        let mut json = std::fs::read_to_string(&path).unwrap();
        let mut patch = |from: &str, to: &str| {
            assert!(json.contains(from), "runc spec output lacks {from:?}");
            json = json.replacen(from, to, 1);
        };
        patch(
            "\"terminal\": true",
            &format!("\"terminal\": {}", spec.terminal),
        );
        let args: Vec<String> = spec.args.iter().map(|a| json_string(a)).collect();
        patch(
            "\"args\": [\n\t\t\t\"sh\"\n\t\t]",
            &format!("\"args\": [{}]", args.join(", ")),
        );
        patch(
            "\"linux\": {",
            &format!(
                "\"linux\": {{\n\t\t\"cgroupsPath\": \"/{CGROUP_PARENT}/{}\",",
                self.id
            ),
        );
        if let Some(limit) = spec.memory_limit {
            patch(
                "\"resources\": {",
                &format!("\"resources\": {{\n\t\t\t\"memory\": {{\"limit\": {limit}}},"),
            );
        }
        std::fs::write(&path, json).unwrap();
    }

    /// Runs the launcher with the contract's flags plus `extra`; returns its raw output.
    pub fn launch_raw(&self, extra: &[&str]) -> Output {
        self.launcher_command(extra).output().unwrap()
    }

    pub fn launcher_command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(MONITOR);
        cmd.arg("run")
            .args(["--id", &self.id])
            .arg("--bundle")
            .arg(&self.bundle)
            .args(["--runtime", RUNC])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--log-path")
            .arg(&self.log_path)
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    /// Launches and expects success: `pid=N monitor_pid=M` on stdout, exit 0.
    pub fn launch(&mut self, extra: &[&str]) -> Launched {
        let out = self.launch_raw(extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "launcher failed: {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let launched = parse_launch(&stdout);
        self.pid = Some(launched.pid);
        self.monitor_pid = Some(launched.monitor_pid);
        launched
    }

    pub fn runc(&self, args: &[&str]) -> Output {
        Command::new(RUNC).args(args).output().unwrap()
    }

    /// `runc start`, as the daemon does after a successful launch.
    pub fn start(&self) {
        let out = self.runc(&["start", &self.id]);
        assert!(out.status.success(), "runc start: {out:?}");
    }

    pub fn kill(&self, signal: &str) {
        let out = self.runc(&["kill", &self.id, signal]);
        assert!(out.status.success(), "runc kill: {out:?}");
    }

    /// Waits for the exit record.
    pub fn wait_exit(&self, timeout: Duration) -> ExitRecord {
        let path = self.dir.join("exit");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                return ExitRecord::decode(bytes.as_slice()).expect("exit record decodes");
            }
            assert!(
                Instant::now() < deadline,
                "no exit record in {} after {timeout:?}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every record of the log file.
    pub fn records(&self) -> Vec<Record> {
        parse_records(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Returns once the monitor has accepted every connection made before the call: both
    /// listeners are in one poll set, so by the time a Ping sent after them is answered, the
    /// earlier attach connections were accepted in the same or an earlier round.
    pub fn barrier(&self) {
        match self.call(request::Kind::Ping(Default::default())) {
            response::Kind::Ping(_) => {}
            other => panic!("ping: {other:?}"),
        }
    }

    /// Sends one control request on a fresh connection.
    pub fn call(&self, kind: request::Kind) -> response::Kind {
        control_call(&self.dir.join("monitor.sock"), kind)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(RUNC)
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        let monitor = self.monitor_pid.or_else(|| {
            std::fs::read_to_string(self.dir.join("monitor.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        if let Some(pid) = monitor {
            if process_running(pid) && is_monitor(pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        remove_cgroup(&self.id);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Removes the container's cgroup (if runc left it) and the test parent when empty.
pub fn remove_cgroup(id: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let parent = h.path().join(CGROUP_PARENT);
        let _ = std::fs::remove_dir(parent.join(id));
        let _ = std::fs::remove_dir(&parent);
    }
}

pub fn parse_launch(stdout: &str) -> Launched {
    let line = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "one line expected: {stdout:?}");
    let mut pid = None;
    let mut monitor_pid = None;
    for field in line.split(' ') {
        match field.split_once('=') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("monitor_pid", v)) => monitor_pid = v.parse().ok(),
            _ => panic!("unexpected launcher output {line:?}"),
        }
    }
    Launched {
        pid: pid.expect("pid="),
        monitor_pid: monitor_pid.expect("monitor_pid="),
    }
}

pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let mut next = || {
                parts
                    .next()
                    .unwrap_or_else(|| panic!("bad record {line:?}"))
            };
            Record {
                timestamp: next().to_string(),
                stream: next().to_string(),
                tag: next().to_string(),
                content: next().to_string(),
            }
        })
        .collect()
}

/// Sends one request on a new connection to `sock` and returns the answer.
pub fn control_call(sock: &Path, kind: request::Kind) -> response::Kind {
    let mut stream = UnixStream::connect(sock).unwrap();
    let req = Request {
        id: 42,
        kind: Some(kind),
    };
    stream.write_all(&encode_frame(&req)).unwrap();
    let resp = read_response(&mut stream, &mut Vec::new()).expect("a response");
    assert_eq!(resp.id, 42);
    resp.kind.expect("response kind")
}

/// Reads one response frame, keeping bytes of later frames in `buf`; `None` on EOF before a
/// whole frame.
pub fn read_response(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Option<Response> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((resp, used)) = decode_frame::<Response>(buf).unwrap() {
            buf.drain(..used);
            return Some(resp);
        }
        let n = stream.read(&mut chunk).unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `/proc/<pid>/stat` fields after the command name: state is index 0, ppid 1, session 3.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split(' ').map(String::from).collect())
}

/// Whether `pid` is a live process (not gone, not a zombie). On this machine PID 1 does not
/// reap orphans, so an exited monitor may linger as a zombie of PID 1: that is not a process
/// left behind.
pub fn process_running(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(f) => f[0] != "Z" && f[0] != "X",
        None => false,
    }
}

fn is_monitor(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("crius-conmon"))
        .unwrap_or(false)
}

/// Waits until `pid` is no longer running.
pub fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while process_running(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
