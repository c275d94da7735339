//! Foundation e2e: the real daemon over its socket — Version/Status/RuntimeConfig, metrics,
//! configuration errors and layering, socket ownership, graceful shutdown.

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

use std::time::{Duration, Instant};

use crius_e2e::daemon::{metric_value, Daemon, Options};
use crius_e2e::network::TestNetwork;
use crius_e2e::pods;
use k8s_cri::v1 as cri;

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"e2e","plugins":[{"type":"loopback"}]}"#;

fn condition<'a>(resp: &'a cri::StatusResponse, kind: &str) -> &'a cri::RuntimeCondition {
    resp.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {resp:?}"))
}

#[tokio::test]
async fn version_names_crius_and_the_v1_api() {
    let d = Daemon::start().await;
    let v = d
        .runtime()
        .await
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
}

#[test]
fn crius_version_prints_the_runtime_name_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("crius.toml");
    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(crius_e2e::daemon::crius_bin())
        .arg("--config")
        .arg(&config)
        .arg("--config-dir")
        .arg(tmp.path().join("none.d"))
        .arg("version")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("crius {} (CRI v1)", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().count() == 1,
        "`crius version` created files"
    );
}

#[tokio::test]
async fn network_ready_follows_the_cni_conf_dir_without_restart() {
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&status, "RuntimeReady").status, "{status:?}");
    let net = condition(&status, "NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message
            .contains(&d.paths.cni_conf_dir.display().to_string()),
        "{}",
        net.message
    );

    std::fs::write(d.paths.cni_conf_dir.join("10-e2e.conflist"), CONFLIST).unwrap();
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let net = condition(&status, "NetworkReady");
    assert!(net.status, "{net:?}");
    assert!(net.reason.is_empty());

    std::fs::remove_file(d.paths.cni_conf_dir.join("10-e2e.conflist")).unwrap();
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(!condition(&status, "NetworkReady").status);
}

#[tokio::test]
async fn status_verbose_reports_the_effective_config_and_handlers() {
    let d = Daemon::start().await;
    let status = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(
        config["api"]["listen"],
        d.paths.socket.display().to_string()
    );
    assert_eq!(config["runtime"]["cgroup_driver"], "cgroupfs");
    let names: Vec<_> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "crun", "runc"]);
}

/// Handler name → (recursive read-only mounts, user namespaces), as `Status` reports them.
async fn handler_features(d: &Daemon) -> std::collections::BTreeMap<String, (bool, bool)> {
    d.runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .into_iter()
        .map(|h| {
            let f = h.features.unwrap();
            (h.name, (f.recursive_read_only_mounts, f.user_namespaces))
        })
        .collect()
}

/// Issue 11 item 2: clients look up the handler they run with, `""` unless a RuntimeClass names
/// one; crius listed only the named handlers, so critest skipped its user namespace and
/// recursive read-only specs.
#[tokio::test]
async fn status_lists_the_default_handler_under_the_empty_name_with_its_features() {
    let d = Daemon::start().await;
    let features = handler_features(&d).await;
    assert_eq!(
        features.keys().map(String::as_str).collect::<Vec<_>>(),
        ["", "crun", "runc"]
    );
    // Unconfigured, the default handler is crun (installed here), as in CRI-O.
    assert!(
        crius_e2e::daemon::crun_installed(),
        "make deps-test installs crun"
    );
    assert_eq!(features[""], features["crun"], "{features:?}");
    drop(d);

    // The empty name follows `default_handler`: runc reports rro, crun 1.8.1 does not.
    let d = Daemon::start_with(Options {
        extra_config: "[runtime]\ndefault_handler = \"runc\"\n".into(),
        ..Options::default()
    })
    .await;
    let features = handler_features(&d).await;
    assert_eq!(features[""], features["runc"], "{features:?}");
    assert_ne!(features["crun"], features["runc"], "{features:?}");

    // crun not installed (its handler's binary missing): runc.
    let d2 = Daemon::start_with(Options {
        extra_config: "[runtime.handlers.crun]\npath = \"/nonexistent/crun\"\n".into(),
        ..Options::default()
    })
    .await;
    let status = d2
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(config["runtime"]["default_handler"], "runc", "{config}");
    // A pod asking for the missing one is refused up front, naming what to install or set,
    // and leaves nothing behind.
    let mut rt = d2.runtime().await;
    let mut req = pods::pod("no-crun");
    req.runtime_handler = "crun".into();
    let err = rt.run_pod_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("/nonexistent/crun is not installed"),
        "{err:?}"
    );
    let listed = pods::list_all(&mut rt).await;
    assert!(listed.is_empty(), "{listed:?}");
    drop(d);
}

/// Issue 11 item 5: grpc C-core clients (Python grpcio, Ruby, C++, C#) send the socket path,
/// percent-encoded, as `:authority` for `unix:` targets and grpc-java the plain path; h2 reset
/// every such stream with PROTOCOL_ERROR. Requests are written byte by byte the way C-core
/// encodes them: the first with literals entering the HPACK dynamic table, the next ones
/// referring to it.
#[tokio::test]
async fn grpc_c_core_style_authorities_are_accepted_on_the_socket() {
    use crius_e2e::grpc_raw::{self, hpack, Conn};
    let d = Daemon::start().await;
    let socket = d.paths.socket.display().to_string();
    let encoded = socket.replace('/', "%2F");
    let version = "/runtime.v1.RuntimeService/Version";
    let body = grpc_raw::grpc_message(&cri::VersionRequest {
        version: "v1".into(),
    });
    for authority in [
        encoded.as_str(),
        &socket,
        &format!("unix:{socket}"),
        "localhost",
    ] {
        let mut conn = Conn::connect(&d.paths.socket).await;
        let block = grpc_raw::c_core_block(version, authority, &[("user-agent", "grpc-c/47.0.0")]);
        let mut calls = vec![conn.call(&block, &body).await];
        // The same call from the dynamic table: te 62, user-agent... shifted by the extra.
        let mut again = Vec::new();
        hpack::indexed(&mut again, hpack::METHOD_POST);
        hpack::indexed(&mut again, hpack::SCHEME_HTTP);
        for index in [66, 65, 64, 63, 62] {
            hpack::indexed(&mut again, index);
        }
        calls.push(conn.call(&again, &body).await);
        for (i, call) in calls.iter().enumerate() {
            assert_eq!(call.reset, None, "{authority:?} call {i}: {call:?}");
            assert_eq!(
                call.grpc_status(),
                Some(0),
                "{authority:?} call {i}: {call:?}"
            );
            let v: cri::VersionResponse = call.message().unwrap();
            assert_eq!(v.runtime_name, "crius", "{authority:?}");
        }
        // Another RPC on the same connection: a new :path enters the table, the authority is
        // referred to by index.
        let mut status = Vec::new();
        hpack::indexed(&mut status, hpack::METHOD_POST);
        hpack::indexed(&mut status, hpack::SCHEME_HTTP);
        hpack::indexing(
            &mut status,
            hpack::PATH,
            "/runtime.v1.RuntimeService/Status",
        );
        for index in [66, 65, 64] {
            hpack::indexed(&mut status, index);
        }
        let call = conn
            .call(
                &status,
                &grpc_raw::grpc_message(&cri::StatusRequest { verbose: false }),
            )
            .await;
        assert_eq!(call.grpc_status(), Some(0), "{authority:?}: {call:?}");
        let st: cri::StatusResponse = call.message().unwrap();
        assert!(!st.runtime_handlers.is_empty(), "{st:?}");
    }
}

#[tokio::test]
async fn runtime_config_reports_cgroupfs_and_systemd_when_configured() {
    let d = Daemon::start().await;
    let resp = d
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

    let d = Daemon::start_with(Options {
        extra_config: "[runtime]\ncgroup_driver = \"systemd\"\n".into(),
        ..Options::default()
    })
    .await;
    let resp = d
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );
}

async fn pod_cidr(d: &Daemon) -> String {
    let status = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let state: serde_json::Value = serde_json::from_str(&status.info["runtimeState"]).unwrap();
    state["podCIDR"].as_str().unwrap().to_string()
}

fn cidr_request(cidr: &str) -> cri::UpdateRuntimeConfigRequest {
    cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    }
}

#[tokio::test]
async fn update_runtime_config_keeps_the_pod_cidr_across_restarts() {
    let mut d = Daemon::start().await;
    let mut rt = d.runtime().await;
    rt.update_runtime_config(cidr_request("10.88.0.0/16"))
        .await
        .unwrap();
    assert_eq!(pod_cidr(&d).await, "10.88.0.0/16");
    // An empty update keeps what we have.
    rt.update_runtime_config(cidr_request("")).await.unwrap();
    assert_eq!(pod_cidr(&d).await, "10.88.0.0/16");
    let err = rt
        .update_runtime_config(cidr_request("10.88.0.0/99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("10.88.0.0/99"), "{}", err.message());

    d.kill9();
    d.restart().await;
    assert_eq!(pod_cidr(&d).await, "10.88.0.0/16");
}

#[tokio::test]
async fn rpcs_of_later_capabilities_answer_unimplemented_naming_the_rpc() {
    let d = Daemon::start().await;
    let err = d
        .runtime()
        .await
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(
        err.message().contains("CheckpointContainer") && err.message().contains("criu"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn metrics_count_operations_errors_and_latency() {
    let d = Daemon::start().await;
    let before = metric_value(
        &d.http_get("/metrics").1,
        "crius_operations_total{operation=\"Version\"}",
    )
    .unwrap_or(0.0);
    let mut rt = d.runtime().await;
    const N: usize = 25;
    for _ in 0..N {
        rt.version(cri::VersionRequest::default()).await.unwrap();
    }
    let _ = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    let unimplemented =
        "crius_operations_errors_total{code=\"Unimplemented\",operation=\"CheckpointContainer\"}";
    assert_eq!(metric_value(&d.http_get("/metrics").1, unimplemented), None);
    for _ in 0..2 {
        let err = rt
            .checkpoint_container(cri::CheckpointContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }

    let (code, body) = d.http_get("/metrics");
    assert_eq!(code, 200);
    let ops = metric_value(&body, "crius_operations_total{operation=\"Version\"}").unwrap();
    assert_eq!(ops - before, N as f64, "{body}");
    let count = metric_value(
        &body,
        "crius_operations_latency_seconds_count{operation=\"Version\"}",
    )
    .unwrap();
    assert_eq!(count, ops);
    assert!(body
        .contains("crius_operations_latency_seconds_bucket{operation=\"Version\",le=\"0.001\"}"));
    let errors = metric_value(
        &body,
        "crius_operations_errors_total{code=\"InvalidArgument\",operation=\"RunPodSandbox\"}",
    );
    assert_eq!(errors, Some(1.0), "{body}");
    assert_eq!(metric_value(&body, unimplemented), Some(2.0), "{body}");
    assert_eq!(
        metric_value(
            &body,
            "crius_operations_total{operation=\"CheckpointContainer\"}"
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(d.http_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(d.http_get("/nope").0, 404);
}

/// The daemon's log as JSON objects; every line must be one.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

/// The `rpc` span of the first event logged inside operation `op`.
fn rpc_span<'a>(lines: &'a [serde_json::Value], op: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .filter_map(|l| l.get("span"))
        .find(|s| s["name"] == "rpc" && s["op"] == op)
        .unwrap_or_else(|| panic!("no rpc span for {op} in {lines:#?}"))
}

#[tokio::test]
async fn json_logs_carry_the_rpc_span_with_the_operation_and_ids() {
    let d = Daemon::start_with(Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    })
    .await;
    let mut rt = d.runtime().await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "pod-7f3a".into(),
    })
    .await
    .unwrap();
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "ctr-51c2".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let _ = d
        .image()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: "e2e.invalid/gone:9".into(),
                ..Default::default()
            }),
        })
        .await;

    let lines = json_lines(&d.log());
    assert!(
        lines.iter().any(|l| l["message"] == "crius serving"),
        "{lines:#?}"
    );
    let pod = rpc_span(&lines, "RemovePodSandbox");
    assert_eq!(pod["pod_id"], "pod-7f3a", "{pod}");
    let ctr = rpc_span(&lines, "ContainerStatus");
    assert_eq!(ctr["container_id"], "ctr-51c2", "{ctr}");
    let failed = lines
        .iter()
        .find(|l| l["message"] == "rpc failed" && l["span"]["op"] == "ContainerStatus")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(failed["code"], "NotFound", "{failed}");
    assert_eq!(failed["level"], "WARN", "{failed}");
    let image = rpc_span(&lines, "RemoveImage");
    assert_eq!(image["image"], "e2e.invalid/gone:9", "{image}");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_refuses_and_the_first_keeps_serving() {
    let d = Daemon::start().await;
    let other = tempfile::tempdir().unwrap();
    let out = d
        .command()
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--runroot")
        .arg(other.path().join("run"))
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{}", crius_e2e::daemon::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("answering on") && stderr.contains("crius.sock"),
        "{stderr}"
    );
    let v = d
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await;
    assert!(v.is_ok(), "first daemon stopped answering: {v:?}");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_state_root_refuses() {
    let d = Daemon::start().await;
    let other = tempfile::tempdir().unwrap();
    let out = d
        .command()
        .arg("--listen")
        .arg(other.path().join("other.sock"))
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{}", crius_e2e::daemon::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another crius"), "{stderr}");
    assert!(!other.path().join("other.sock").exists());
}

#[tokio::test]
async fn sigterm_exits_zero_quickly_and_removes_the_socket() {
    let mut d = Daemon::start().await;
    let (status, took) = d
        .terminate(Duration::from_secs(5))
        .expect("daemon did not exit on SIGTERM");
    assert!(status.success(), "exit status {status}\n{}", d.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!d.paths.socket.exists());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_rpc_finish_and_refuses_new_connections() {
    let net = TestNetwork::new();
    let bin = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(Options {
        drop_in: format!(
            "[network]\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            bin.path()
        ),
        ..Options::default()
    })
    .await;
    net.install(
        &d.paths.cni_conf_dir,
        &[&crius_e2e::network::gate_plugin(bin.path())],
    );

    let mut rt = d.runtime().await;
    let in_flight = tokio::spawn(async move { rt.run_pod_sandbox(pods::pod("slow")).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bin.path().join("started").exists() {
        assert!(
            Instant::now() < deadline,
            "RunPodSandbox never reached CNI ADD"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!in_flight.is_finished());

    d.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    while tokio::net::UnixStream::connect(&d.paths.socket)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "new connections still accepted after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!in_flight.is_finished(), "the RPC ended before its CNI ADD");
    std::fs::write(bin.path().join("release"), "").unwrap();

    let id = in_flight
        .await
        .unwrap()
        .expect("the in-flight RunPodSandbox failed")
        .into_inner()
        .pod_sandbox_id;
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("daemon did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}\n{}", d.log());
    assert!(!d.paths.socket.exists());
    assert!(!d.log().contains("grace period over"), "{}", d.log());

    // The pod the drained RPC created is real: the next daemon has it, and removes it.
    d.restart().await;
    let mut rt = d.runtime().await;
    let pods = pods::list_all(&mut rt).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, id);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert!(net.ip_files().is_empty(), "{:?}", net.ip_files());
}

#[tokio::test]
async fn a_stale_socket_left_by_kill_9_is_replaced() {
    let mut d = Daemon::start().await;
    d.kill9();
    assert!(
        d.paths.socket.exists(),
        "kill -9 leaves the socket file behind"
    );
    d.restart().await;
    let v = d
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await;
    assert!(v.is_ok());
    assert!(d.log().contains("replacing stale socket"));
}

#[tokio::test]
async fn bad_config_stops_the_daemon_before_it_binds_naming_file_and_key() {
    let d = Daemon::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("bad.sock");
    let cases = [
        (
            "[image]\nmax_concurent_downloads = 2\n",
            "image.max_concurent_downloads",
        ),
        (
            "[image]\nmax_concurrent_downloads = 0\n",
            "image.max_concurrent_downloads",
        ),
        (
            "[metrics]\naddress = \"not-an-address\"\n",
            "metrics.address",
        ),
        ("[runtime]\ncgroup_driver = 3\n", "runtime.cgroup_driver"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(crius_e2e::daemon::crius_bin())
            .arg("--config")
            .arg(&file)
            .arg("--config-dir")
            .arg(tmp.path().join("none.d"))
            .arg("--listen")
            .arg(&socket)
            .arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--runroot")
            .arg(tmp.path().join("run"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(!socket.exists(), "a socket was created for {text}");
        assert!(
            !tmp.path().join("root").exists(),
            "state root created for {text}"
        );
    }
    drop(d);
}

#[tokio::test]
async fn drop_ins_override_only_their_keys_and_crius_config_prints_the_result() {
    let d = Daemon::start().await;
    std::fs::write(
        d.paths.config_dir.join("20-mirror.toml"),
        "[image.registries.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000/hub\"]\n",
    )
    .unwrap();
    std::fs::write(
        d.paths.config_dir.join("10-dl.toml"),
        "[image]\nmax_concurrent_downloads = 9\n",
    )
    .unwrap();
    let out = d
        .command()
        .arg("--log-level")
        .arg("warn")
        .arg("config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_eq!(
        printed["image"]["max_concurrent_downloads"].as_integer(),
        Some(9)
    );
    assert_eq!(
        printed["image"]["default_registry"].as_str(),
        Some("docker.io")
    );
    assert_eq!(
        printed["image"]["registries"]["docker.io"]["mirrors"][0].as_str(),
        Some("127.0.0.1:5000/hub")
    );
    assert_eq!(
        printed["log"]["level"].as_str(),
        Some("warn"),
        "flag beats files"
    );
    assert_eq!(
        printed["api"]["listen"].as_str(),
        Some(d.paths.socket.display().to_string().as_str()),
        "main file keys survive"
    );
}
