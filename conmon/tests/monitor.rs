//! End-to-end tests of `crius-conmon run` with real runc and busybox containers (root).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{process_running, stat_fields, wait_gone, Container, Record, Spec};
use crius_proto::monitor::{
    request, response, PingRequest, ReopenLogRequest, Request, ResizeRequest, StateRequest,
};
use crius_proto::{encode_frame, MAX_FRAME};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn stream_records(records: &[Record], stream: &str) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| (r.tag.clone(), r.content.clone()))
        .collect()
}

fn pair(tag: &str, content: &str) -> (String, String) {
    (tag.to_string(), content.to_string())
}

#[test]
fn stdout_and_stderr_lines_land_with_their_stream_and_full_tag() {
    let mut c = Container::new(
        "streams",
        &Spec::sh("echo out-1; echo err-1 >&2; echo out-2; echo; echo err-2 >&2"),
    );
    c.launch(&[]);
    c.start();
    let exit = c.wait_exit(EXIT_TIMEOUT);
    assert_eq!(exit.exit_code, 0);
    let records = c.records();
    assert_eq!(
        stream_records(&records, "stdout"),
        vec![pair("F", "out-1"), pair("F", "out-2"), pair("F", "")]
    );
    assert_eq!(
        stream_records(&records, "stderr"),
        vec![pair("F", "err-1"), pair("F", "err-2")]
    );
    for r in &records {
        // 2026-11-28T13:45:00.123456789Z
        let ts = r.timestamp.as_bytes();
        assert_eq!(ts.len(), 30, "{r:?}");
        assert_eq!(
            (ts[4], ts[10], ts[19], ts[29]),
            (b'-', b'T', b'.', b'Z'),
            "{r:?}"
        );
    }
}

#[test]
fn a_40_kib_line_splits_into_partial_records_and_an_unfinished_line_ends_partial() {
    let mut c = Container::new(
        "split",
        &Spec::sh("head -c 40960 /dev/zero | tr '\\0' a; echo; printf no-newline"),
    );
    c.launch(&[]);
    c.start();
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).exit_code, 0);
    let got = stream_records(&c.records(), "stdout");
    let a = |n| "a".repeat(n);
    assert_eq!(
        got,
        vec![
            pair("P", &a(16384)),
            pair("P", &a(16384)),
            pair("F", &a(40960 - 2 * 16384)),
            // Trailing data without a newline at EOF: a partial record (containerd, CRI-O).
            pair("P", "no-newline"),
        ]
    );
}

#[test]
fn log_max_line_sets_the_split_size() {
    let mut c = Container::new("maxline", &Spec::sh("echo 0123456789abcdefghij"));
    c.launch(&["--log-max-line", "8"]);
    c.start();
    c.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        stream_records(&c.records(), "stdout"),
        vec![
            pair("P", "01234567"),
            pair("P", "89abcdef"),
            pair("F", "ghij")
        ]
    );
}

#[test]
fn exit_code_3_is_recorded() {
    let mut c = Container::new("exit3", &Spec::sh("exit 3"));
    c.launch(&[]);
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    c.start();
    let exit = c.wait_exit(EXIT_TIMEOUT);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (3, 0, false)
    );
    let at = exit.finished_at_ns as u128;
    assert!(
        at >= before.as_nanos() && at <= after.as_nanos(),
        "{exit:?}"
    );
}

#[test]
fn sigkill_is_recorded_as_137_and_signal_9() {
    let mut c = Container::new("sigkill", &Spec::sh("sleep 1000"));
    c.launch(&[]);
    c.start();
    c.kill("KILL");
    let exit = c.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (137, 9, false)
    );
}

#[test]
fn oom_kill_is_detected() {
    let mut spec = Spec::sh("tail /dev/zero");
    spec.memory_limit = Some(32 * 1024 * 1024);
    let mut c = Container::new("oom", &spec);
    c.launch(&[]);
    c.start();
    let exit = c.wait_exit(Duration::from_secs(60));
    assert_eq!((exit.exit_code, exit.signal), (137, 9), "{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
}

#[test]
fn reopen_log_keeps_every_line_exactly_once() {
    const LINES: usize = 100_000;
    // A pause every 10 000 lines keeps the writer busy while the log is rotated 10 times.
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); \
         [ $((i % 10000)) = 0 ] && sleep 0.05; done; true"
    );
    let mut c = Container::new("reopen", &Spec::sh(&script));
    c.launch(&[]);
    c.start();
    let mut files = vec![c.log_path.clone()];
    for n in 1..=10 {
        std::thread::sleep(Duration::from_millis(60));
        let rotated = c.log_path.with_extension(format!("log.{n}"));
        std::fs::rename(&c.log_path, &rotated).unwrap();
        files.push(rotated);
        match c.call(request::Kind::ReopenLog(ReopenLogRequest {})) {
            response::Kind::ReopenLog(_) => {}
            other => panic!("reopen {n}: {other:?}"),
        }
    }
    assert_eq!(c.wait_exit(Duration::from_secs(120)).exit_code, 0);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut non_empty_files = 0;
    for f in &files {
        let records = common::parse_records(&std::fs::read_to_string(f).unwrap());
        non_empty_files += usize::from(!records.is_empty());
        for r in records {
            assert_eq!(
                (r.stream.as_str(), r.tag.as_str()),
                ("stdout", "F"),
                "{r:?}"
            );
            *seen.entry(r.content).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), LINES, "distinct lines");
    for i in 0..LINES {
        assert_eq!(seen.get(&format!("line-{i}")), Some(&1), "line-{i}");
    }
    assert!(
        non_empty_files >= 3,
        "the rotations should have happened while lines were written ({non_empty_files} files)"
    );
}

#[test]
fn control_socket_answers_ping_state_and_refuses_bad_requests() {
    let mut c = Container::new("control", &Spec::sh("sleep 1000"));
    let launched = c.launch(&[]);
    match c.call(request::Kind::Ping(PingRequest {})) {
        response::Kind::Ping(p) => {
            assert_eq!(p.pid, launched.monitor_pid);
            assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("{other:?}"),
    }
    match c.call(request::Kind::State(StateRequest {})) {
        response::Kind::State(s) => {
            assert_eq!(s.container_pid, launched.pid);
            assert!(s.exit.is_none());
        }
        other => panic!("{other:?}"),
    }
    match c.call(request::Kind::Resize(ResizeRequest {
        width: 80,
        height: 24,
    })) {
        response::Kind::Error(e) => assert!(e.message.contains("no terminal"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let sock = c.dir.join("monitor.sock");
    // A request of a kind the monitor does not know (empty oneof) → error, same id.
    let mut s = UnixStream::connect(&sock).unwrap();
    let mut buf = Vec::new();
    s.write_all(&encode_frame(&Request { id: 7, kind: None }))
        .unwrap();
    let resp = common::read_response(&mut s, &mut buf).unwrap();
    assert_eq!(resp.id, 7);
    assert!(
        matches!(resp.kind, Some(response::Kind::Error(_))),
        "{resp:?}"
    );
    // Two requests in one write are answered in order on the same connection.
    let mut two = encode_frame(&Request {
        id: 8,
        kind: Some(request::Kind::Ping(PingRequest {})),
    });
    two.extend(encode_frame(&Request {
        id: 9,
        kind: Some(request::Kind::State(StateRequest {})),
    }));
    s.write_all(&two).unwrap();
    assert_eq!(common::read_response(&mut s, &mut buf).unwrap().id, 8);
    assert_eq!(common::read_response(&mut s, &mut buf).unwrap().id, 9);
    // Garbage → an error response, then the connection is closed.
    let mut s = UnixStream::connect(&sock).unwrap();
    let mut buf = Vec::new();
    s.write_all(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let resp = common::read_response(&mut s, &mut buf).unwrap();
    assert!(
        matches!(resp.kind, Some(response::Kind::Error(_))),
        "{resp:?}"
    );
    assert!(common::read_response(&mut s, &mut buf).is_none());
    // An oversized frame announcement → error, never an allocation of that size.
    let mut s = UnixStream::connect(&sock).unwrap();
    let mut buf = Vec::new();
    let mut huge = Vec::new();
    prost::encoding::encode_varint((MAX_FRAME * 64) as u64, &mut huge);
    s.write_all(&huge).unwrap();
    let resp = common::read_response(&mut s, &mut buf).unwrap();
    assert!(
        matches!(resp.kind, Some(response::Kind::Error(_))),
        "{resp:?}"
    );
    // A client that connects and hangs up without a word.
    drop(UnixStream::connect(&sock).unwrap());
    // Still alive and answering.
    assert!(matches!(
        c.call(request::Kind::Ping(PingRequest {})),
        response::Kind::Ping(_)
    ));
    c.start();
    c.kill("KILL");
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).exit_code, 137);
}

#[test]
fn monitor_is_detached_from_its_launcher_and_leaks_no_descriptors_or_signal_state() {
    // `sleep` itself, not `sh -c`: busybox sh ignores SIGQUIT before it execs a command.
    let mut spec = Spec::sh("");
    spec.args = vec!["sleep".into(), "1000".into()];
    let mut c = Container::new("detached", &spec);
    // fd 7 is open without close-on-exec in the launcher (as a careless parent would leave it).
    let cmd = c.launcher_command(&[]);
    let launcher_args: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    // The launcher also starts with SIGQUIT ignored, as it may be under a daemon: the
    // container must get default dispositions all the same.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</etc/hostname; trap '' QUIT; exec {}",
            launcher_args.join(" ")
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let launched = common::parse_launch(&String::from_utf8_lossy(&out.stdout));
    c.monitor_pid = Some(launched.monitor_pid);
    // The launcher has exited; the monitor lives on in its own session, not our child.
    let stat = stat_fields(launched.monitor_pid).expect("monitor running");
    let my_sid = stat_fields(std::process::id()).unwrap()[3].clone();
    assert_ne!(stat[1], std::process::id().to_string(), "parent");
    assert_ne!(stat[3], my_sid, "session");
    // setsid ran in the intermediate process, which is gone: the monitor is in a session
    // whose leader no longer exists, so it can never get a controlling terminal back.
    assert!(
        !process_running(stat[3].parse().unwrap()),
        "session leader {}",
        stat[3]
    );
    // The container's init is the monitor's child (it is the subreaper).
    assert_eq!(
        stat_fields(launched.pid).unwrap()[1],
        launched.monitor_pid.to_string()
    );
    // No descriptor of the launcher's parent leaked into the monitor; its stdio is /dev/null.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", launched.monitor_pid)).unwrap();
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap();
        let target = target.to_string_lossy();
        assert!(!target.contains("hostname"), "leaked {target}");
        let n: u32 = fd.file_name().to_string_lossy().parse().unwrap();
        if n <= 2 {
            assert_eq!(target, "/dev/null", "fd {n}");
        }
    }
    c.start();
    // Once `runc init` has exec'd the container's command, it holds exactly its stdio.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_link(format!("/proc/{}/exe", launched.pid))
        .map(|p| p.ends_with("busybox"))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "container never exec'd");
        std::thread::sleep(Duration::from_millis(10));
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", launched.pid))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(fds.len(), 3, "container fds {fds:?}");
    // Nor did the monitor's blocked signals (its signalfd set) or ignored SIGPIPE reach it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", launched.pid)).unwrap();
    for field in ["SigBlk:", "SigIgn:"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        assert!(line.ends_with("0000000000000000"), "container {line}");
    }
    c.kill("KILL");
    c.wait_exit(EXIT_TIMEOUT);
}

#[test]
fn sigterm_to_the_monitor_is_ignored() {
    let mut c = Container::new("sigterm", &Spec::sh("sleep 1000"));
    let launched = c.launch(&[]);
    c.start();
    for sig in ["-TERM", "-INT", "-HUP"] {
        let st = Command::new("kill")
            .args([sig, &launched.monitor_pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(process_running(launched.monitor_pid));
    assert!(process_running(launched.pid));
    assert!(matches!(
        c.call(request::Kind::Ping(PingRequest {})),
        response::Kind::Ping(_)
    ));
    c.kill("KILL");
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).signal, 9);
}

#[test]
fn nothing_is_left_behind_after_exit() {
    let mut c = Container::new("cleanup", &Spec::sh("echo bye"));
    let launched = c.launch(&[]);
    for f in [
        "monitor.sock",
        "attach.sock",
        "monitor.pid",
        "container.pid",
    ] {
        assert!(c.dir.join(f).exists(), "{f} missing while running");
    }
    assert_eq!(
        std::fs::read_to_string(c.dir.join("monitor.pid")).unwrap(),
        launched.monitor_pid.to_string()
    );
    c.start();
    c.wait_exit(EXIT_TIMEOUT);
    wait_gone(launched.monitor_pid, Duration::from_secs(5));
    wait_gone(launched.pid, Duration::from_secs(5));
    for f in ["monitor.sock", "attach.sock", "console.sock", ".exit.tmp"] {
        assert!(!c.dir.join(f).exists(), "{f} left behind");
    }
    // The runtime still knows the stopped container until the daemon deletes it.
    let state = c.runc(&["state", &c.id]);
    assert!(String::from_utf8_lossy(&state.stdout).contains("\"stopped\""));
}

#[test]
fn failing_create_reports_the_runtime_error_and_leaves_no_monitor() {
    let c = Container::new("badbundle", &Spec::sh("true"));
    std::fs::remove_file(c.bundle.join("config.json")).unwrap();
    let started = Instant::now();
    let out = c.launch_raw(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json"), "runtime message: {stderr}");
    assert!(stderr.contains(&c.id), "names the container: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let monitor: u32 = std::fs::read_to_string(c.dir.join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_gone(monitor, Duration::from_secs(5));
    for f in ["monitor.sock", "attach.sock", "exit"] {
        assert!(!c.dir.join(f).exists(), "{f} left behind");
    }
    assert!(!c.runc(&["state", &c.id]).status.success());
}

#[test]
fn missing_runtime_is_reported() {
    let c = Container::new("noruntime", &Spec::sh("true"));
    let out = Command::new(common::MONITOR)
        .arg("run")
        .args(["--id", &c.id, "--runtime", "/nonexistent/runc"])
        .arg("--bundle")
        .arg(&c.bundle)
        .arg("--dir")
        .arg(&c.dir)
        .arg("--log-path")
        .arg(&c.log_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/runc"));
    let out = Command::new(common::MONITOR)
        .args(["run", "--id", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("required"));
}

#[test]
fn terminal_output_lands_in_the_log_as_stdout_and_resize_reaches_the_pty() {
    let mut spec = Spec::sh("echo tty-out; echo tty-err >&2; stty size; printf partial");
    spec.terminal = true;
    let mut c = Container::new("tty", &spec);
    c.launch(&["--terminal"]);
    assert!(
        !c.dir.join("console.sock").exists(),
        "console.sock removed after use"
    );
    match c.call(request::Kind::Resize(ResizeRequest {
        width: 100,
        height: 40,
    })) {
        response::Kind::Resize(_) => {}
        other => panic!("{other:?}"),
    }
    c.start();
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).exit_code, 0);
    let records = c.records();
    assert!(records.iter().all(|r| r.stream == "stdout"), "{records:?}");
    assert_eq!(
        stream_records(&records, "stdout"),
        vec![
            pair("F", "tty-out"),
            pair("F", "tty-err"),
            pair("F", "40 100"),
            pair("P", "partial"),
        ]
    );
}

/// Reads attach frames until EOF; returns (stream id, bytes) in order, merged per stream.
fn read_frames(stream: &mut UnixStream) -> Vec<(u8, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let mut frames: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "truncated frame header");
        let id = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let data = &rest[5..5 + len];
        match frames.last_mut() {
            Some((last, buf)) if *last == id => buf.extend_from_slice(data),
            _ => frames.push((id, data.to_vec())),
        }
        rest = &rest[5 + len..];
    }
    frames
}

#[test]
fn attach_streams_framed_output_and_feeds_stdin_once() {
    let mut c = Container::new(
        "attach",
        &Spec::sh("read first; echo got:$first; echo to-stderr >&2; cat; echo done"),
    );
    c.launch(&["--stdin", "--stdin-once"]);
    let sock = c.dir.join("attach.sock");
    let mut watcher = UnixStream::connect(&sock).unwrap();
    // The monitor registered the watcher before any output exists.
    c.barrier();
    c.start();
    let mut writer = UnixStream::connect(&sock).unwrap();
    writer.write_all(b"hello\nworld\n").unwrap();
    // The first client to leave closes the container's stdin: `cat` ends. Its input is read
    // before its hang-up, so nothing it sent is lost.
    drop(writer);
    let frames = read_frames(&mut watcher);
    let stdout: Vec<u8> = frames
        .iter()
        .filter(|(id, _)| *id == 2)
        .flat_map(|(_, d)| d.clone())
        .collect();
    let stderr: Vec<u8> = frames
        .iter()
        .filter(|(id, _)| *id == 3)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout), "got:hello\nworld\ndone\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "to-stderr\n");
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).exit_code, 0);
    // The log has the same output.
    assert_eq!(
        stream_records(&c.records(), "stdout"),
        vec![
            pair("F", "got:hello"),
            pair("F", "world"),
            pair("F", "done")
        ]
    );
}

#[test]
fn attach_without_stdin_discards_input() {
    let mut c = Container::new("nostdin", &Spec::sh("cat; echo eof"));
    c.launch(&[]);
    let mut client = UnixStream::connect(c.dir.join("attach.sock")).unwrap();
    c.barrier();
    c.start();
    // Best effort: the container may be gone (and the socket closed) already.
    let _ = client.write_all(b"ignored\n");
    // stdin is /dev/null: cat ends at once.
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).exit_code, 0);
    let frames = read_frames(&mut client);
    assert_eq!(frames, vec![(2, b"eof\n".to_vec())]);
}

/// `kB` value of a `/proc/<pid>/status` field.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// Memory ceiling, enforced in CI: one monitor runs per container. Measured on this machine:
/// RssAnon ≈ 170 kB, VmRSS ≈ 1.3 MB (release) / 1.6 MB (debug); see docs/monitor.md.
#[test]
fn idle_monitor_stays_within_its_memory_ceiling() {
    let mut c = Container::new(
        "rss",
        &Spec::sh("head -c 40960 /dev/zero | tr '\\0' a; echo; echo ready; sleep 1000"),
    );
    let launched = c.launch(&[]);
    let _attached = UnixStream::connect(c.dir.join("attach.sock")).unwrap();
    c.barrier();
    c.start();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !c.records().iter().any(|r| r.content == "ready") {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(20));
    }
    let anon = status_kb(launched.monitor_pid, "RssAnon:");
    let rss = status_kb(launched.monitor_pid, "VmRSS:");
    println!("idle monitor: VmRSS {rss} kB, RssAnon {anon} kB");
    assert!(anon <= 512, "RssAnon {anon} kB");
    assert!(rss <= 4096, "VmRSS {rss} kB");
    c.kill("KILL");
    c.wait_exit(EXIT_TIMEOUT);
}

#[test]
fn terminal_stdin_comes_from_attach_and_stdin_once_ends_it() {
    // `cat` on a tty sees EOF when the first client leaves (the monitor sends ^D).
    let mut spec = Spec::sh("stty -echo; read x; echo got:$x; cat; echo done");
    spec.terminal = true;
    let mut c = Container::new("ttyin", &spec);
    c.launch(&["--terminal", "--stdin", "--stdin-once"]);
    c.start();
    let mut writer = UnixStream::connect(c.dir.join("attach.sock")).unwrap();
    writer.write_all(b"hi\n").unwrap();
    c.barrier();
    drop(writer);
    assert_eq!(c.wait_exit(EXIT_TIMEOUT).exit_code, 0);
    let stdout = stream_records(&c.records(), "stdout");
    assert!(stdout.contains(&pair("F", "got:hi")), "{stdout:?}");
    assert_eq!(stdout.last(), Some(&pair("F", "done")), "{stdout:?}");
}

#[test]
fn failing_create_with_a_terminal_reports_the_error_and_removes_the_console_socket() {
    let mut spec = Spec::sh("true");
    spec.terminal = true;
    let c = Container::new("badtty", &spec);
    std::fs::remove_file(c.bundle.join("config.json")).unwrap();
    let out = c.launch_raw(&["--terminal"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config.json"),
        "{out:?}"
    );
    for f in ["monitor.sock", "attach.sock", "console.sock", "exit"] {
        assert!(!c.dir.join(f).exists(), "{f} left behind");
    }
}

/// Writes an executable fake runtime script into the container's temp dir.
fn fake_runtime(c: &Container, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = c.root.join("fake-runtime");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn launch_with_runtime(c: &Container, runtime: &std::path::Path) -> std::process::Output {
    Command::new(common::MONITOR)
        .arg("run")
        .args(["--id", &c.id])
        .arg("--bundle")
        .arg(&c.bundle)
        .arg("--runtime")
        .arg(runtime)
        .arg("--dir")
        .arg(&c.dir)
        .arg("--log-path")
        .arg(&c.log_path)
        .output()
        .unwrap()
}

#[test]
fn launcher_never_hangs_when_the_monitor_dies_before_reporting() {
    let c = Container::new("monitordies", &Spec::sh("true"));
    // The runtime's parent is the monitor: kill it in the middle of `create`.
    let runtime = fake_runtime(&c, "case \"$*\" in *create*) kill -9 $PPID; sleep 1;; esac");
    let started = Instant::now();
    let out = launch_with_runtime(&c, &runtime);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited before reporting"), "{stderr}");
}

#[test]
fn create_that_writes_no_pid_fails_and_is_undone() {
    let c = Container::new("nopid", &Spec::sh("true"));
    let marker = c.root.join("deleted");
    let runtime = fake_runtime(
        &c,
        &format!(
            "case \"$*\" in *create*) exit 0;; *delete*--force*) touch '{}';; esac",
            marker.display()
        ),
    );
    let out = launch_with_runtime(&c, &runtime);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pid"),
        "{out:?}"
    );
    assert!(marker.exists(), "delete --force ran to undo the create");
}
