//! Faults recover to the truth of the node (issue 12): a monitor killed under a live container,
//! a start the runtime did but the record missed, a pod whose network namespace pin is gone, a
//! simulated reboot, and a daemon killed in the middle of RunPodSandbox.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::cgroups::TestCgroup;
use crius_e2e::daemon::Options;
use crius_e2e::{leaks, network, pods, sweep};
use k8s_cri::v1 as cri;

struct Env {
    b: BusyboxDaemon,
    logs: tempfile::TempDir,
}

impl Env {
    async fn new(options: Options) -> Env {
        Env {
            b: BusyboxDaemon::start(options).await,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn pod_req(&self, name: &str, handler: &str) -> cri::RunPodSandboxRequest {
        let mut req = pods::pod(name);
        req.runtime_handler = handler.into();
        pods::config(&mut req).log_directory = self.logs.path().join(name).display().to_string();
        req
    }

    async fn pod(&self, name: &str, handler: &str) -> (String, cri::PodSandboxConfig) {
        let req = self.pod_req(name, handler);
        let config = req.config.clone().unwrap();
        let id = self
            .b
            .d
            .runtime()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    async fn create(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        name: &str,
        cmd: &[&str],
    ) -> String {
        let config = cri::ContainerConfig {
            log_path: format!("{name}.log"),
            ..pods::container(name, &self.b.image, cmd)
        };
        self.b
            .d
            .runtime()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id
    }

    async fn start(&self, id: &str) {
        self.b
            .d
            .runtime()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap();
    }

    async fn status(&self, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
        let resp = self
            .b
            .d
            .runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info = serde_json::from_str(&resp.info["info"]).unwrap();
        (resp.status.unwrap(), info)
    }

    async fn pod_info(&self, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
        let resp = self
            .b
            .d
            .runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info = serde_json::from_str(&resp.info["info"]).unwrap();
        (resp.status.unwrap(), info)
    }

    /// Removes every pod (and with them every container).
    async fn remove_all(&self) {
        let mut rt = self.b.d.runtime().await;
        let pods = pods::list_all(&mut rt).await;
        for p in pods {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("stop pod {}: {e:?}", p.id));
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove pod {}: {e:?}", p.id));
        }
    }

    /// After everything was removed: no netns, mount, veth, IP, monitor, runtime state or record.
    fn assert_nothing_left(&self) {
        let left = leaks::leftovers(&self.b.d, &self.b.net, None);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

async fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_monitor_leaves_its_container_running_until_it_is_stopped() {
    let env = Env::new(Options::default()).await;
    for handler in ["runc", "crun"] {
        let pod = env.pod(&format!("monitor-{handler}"), handler).await;
        let id = env.create(&pod, "long", &["sleep", "1000"]).await;
        env.start(&id).await;
        let (_, info) = env.status(&id).await;
        let (pid, monitor) = (
            info["pid"].as_u64().unwrap() as u32,
            info["monitorPid"].as_u64().unwrap() as u32,
        );
        sweep::kill(monitor as i32);
        until("the monitor to die", Duration::from_secs(10), || {
            !sweep::alive(monitor)
        })
        .await;
        // Reported running while it runs, with a message saying what happened.
        for _ in 0..3 {
            let (st, _) = env.status(&id).await;
            assert_eq!(
                st.state,
                cri::ContainerState::ContainerRunning as i32,
                "{handler}: {st:?}"
            );
            assert!(st.message.contains("monitor"), "{handler}: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(sweep::alive(pid));
        let listed = env
            .b
            .d
            .runtime()
            .await
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(listed
            .iter()
            .any(|c| c.id == id && c.state == cri::ContainerState::ContainerRunning as i32));
        // StopContainer stops it through the runtime; its exit is recorded.
        env.b
            .d
            .runtime()
            .await
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 1,
            })
            .await
            .unwrap();
        assert!(
            !sweep::alive(pid),
            "{handler}: StopContainer left the container running"
        );
        let (st, _) = env.status(&id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, 137, "{handler}: {st:?}");
        assert!(st.finished_at > 0);
        assert!(st.message.contains("monitor"), "{st:?}");

        // A container that exits by itself after its monitor died: the exit is learned
        // (through the init's pidfd) without anyone asking, with an unknown status.
        let id = env
            .create(&pod, "short", &["sh", "-c", "sleep 2; exit 3"])
            .await;
        env.start(&id).await;
        let (_, info) = env.status(&id).await;
        let monitor = info["monitorPid"].as_u64().unwrap() as u32;
        sweep::kill(monitor as i32);
        until("the monitor to die", Duration::from_secs(10), || {
            !sweep::alive(monitor)
        })
        .await;
        let (st, _) = env.status(&id).await;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerRunning as i32,
            "{st:?}"
        );
        let mut events = env
            .b
            .d
            .runtime()
            .await
            .get_container_events(cri::GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), events.message())
                .await
                .expect("a stopped event for the monitorless container")
                .unwrap()
                .unwrap();
            if ev.container_id == id
                && ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32
            {
                break;
            }
        }
        let (st, _) = env.status(&id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, 255, "{st:?}");
        assert!(st.message.contains("unknown"), "{st:?}");
    }
    assert!(env
        .b
        .d
        .log()
        .contains("monitor is gone but the container runs on"));
    env.remove_all().await;
    env.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_runtime_did_but_the_record_missed_is_reconciled() {
    let mut env = Env::new(Options::default()).await;
    let pod = env.pod("reconcile", "").await;
    let a = env.create(&pod, "a", &["sleep", "1000"]).await;
    let b = env.create(&pod, "b", &["sleep", "1000"]).await;
    let (_, info) = env.status(&a).await;
    let handler = info["runtimeHandler"].as_str().unwrap().to_string();
    let root = env.b.d.paths.runroot.join("runtimes").join(&handler);
    let binary = if handler == "crun" { "crun" } else { "runc" };
    // The runtime starts both (as the daemon does in StartContainer), the record does not know.
    for id in [&a, &b] {
        let out = Command::new(binary)
            .arg("--root")
            .arg(&root)
            .arg("start")
            .arg(id)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without a restart: StartContainer finds the runtime's start done and records it.
    env.start(&b).await;
    let (st, _) = env.status(&b).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    // kill -9 of the daemon right after the runtime's start: the restart reconciles.
    env.b.d.kill9();
    env.b.d.restart().await;
    let (st, _) = env.status(&a).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    assert!(st.started_at > 0);
    assert!(env.b.d.log().contains("reconciled to running"));
    env.b
        .d
        .runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: a.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let (st, _) = env.status(&a).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    env.remove_all().await;
    env.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_netns_pin_is_gone_stops_releases_its_ip_and_is_removed() {
    let env = Env::new(Options::default()).await;
    let pod = env.pod("pin", "").await;
    let (st, info) = env.pod_info(&pod.0).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(env.b.net.ip_files().len(), 1);
    let pin = PathBuf::from(info["runDir"].as_str().unwrap()).join("ns/net");
    let out = Command::new("umount").arg(&pin).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rt = env.b.d.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.0.clone(),
    })
    .await
    .expect("StopPodSandbox of a pod whose netns pin is gone");
    assert!(env.b.net.ip_files().is_empty(), "IP still allocated");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.0.clone(),
    })
    .await
    .unwrap();
    env.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_simulated_reboot_everything_is_not_ready_and_removable() {
    let mut env = Env::new(Options::default()).await;
    let cg = TestCgroup::new("reboot");
    let mut ids = Vec::new();
    for (name, handler) in [("reboot-runc", "runc"), ("reboot-crun", "crun")] {
        let mut req = env.pod_req(name, handler);
        pods::linux(&mut req).cgroup_parent = cg.child(name);
        pods::namespaces(&mut req).pid = cri::NamespaceMode::Pod as i32;
        let config = req.config.clone().unwrap();
        let id = env
            .b
            .d
            .runtime()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let pod = (id, config);
        let c = env.create(&pod, "main", &["sleep", "1000"]).await;
        env.start(&c).await;
        ids.push(c);
    }
    // The node goes down: the daemon, every monitor and container, every mount of the runroot
    // (a tmpfs on a real node), and the runroot itself.
    let d = &mut env.b.d;
    d.kill9();
    sweep::kill_monitors(&d.paths.runroot);
    sweep::delete_runtime_containers(&d.paths.runroot);
    sweep::unmount_under(&d.paths.runroot);
    std::fs::remove_dir_all(&d.paths.runroot).unwrap();
    d.restart().await;
    let mut rt = d.runtime().await;
    let pods = pods::list_all(&mut rt).await;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(
            p.state,
            cri::PodSandboxState::SandboxNotready as i32,
            "{p:?}"
        );
    }
    assert!(
        env.b.net.ip_files().is_empty(),
        "IPs of rebooted pods still allocated"
    );
    for id in &ids {
        let (st, _) = env.status(id).await;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerExited as i32,
            "{st:?}"
        );
    }
    env.remove_all().await;
    env.assert_nothing_left();
    for h in TestCgroup::hierarchies() {
        let dir = TestCgroup::dir(&h, &cg.path);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "pod cgroups left: {left:?}");
    }
}

/// The cgroup directories of `path` that exist, in any hierarchy.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    TestCgroup::hierarchies()
        .iter()
        .map(|h| TestCgroup::dir(h, path))
        .filter(|d| d.exists())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_in_run_pod_sandbox_leaves_no_cgroup_after_retry_and_removal() {
    let bin = tempfile::tempdir().unwrap();
    let mut env = Env::new(Options {
        drop_in: format!(
            "[network]\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            bin.path()
        ),
        ..Options::default()
    })
    .await;
    env.b.net.install(
        &env.b.d.paths.cni_conf_dir,
        &[&network::gate_plugin(bin.path())],
    );
    let cg = TestCgroup::new("killrun");
    let parent = cg.child("pod");
    let mut req = env.pod_req("killed", "");
    pods::linux(&mut req).cgroup_parent = parent.clone();
    let mut rt = env.b.d.runtime().await;
    let first = req.clone();
    let in_flight = tokio::spawn(async move { rt.run_pod_sandbox(first).await });
    until("CNI ADD", Duration::from_secs(20), || {
        bin.path().join("started").exists()
    })
    .await;
    assert!(
        !cgroup_dirs(&parent).is_empty(),
        "the pod cgroup was not made yet"
    );
    env.b.d.kill9();
    let _ = in_flight.await;
    std::fs::write(bin.path().join("release"), "").unwrap();
    env.b.d.restart().await;
    assert!(
        cgroup_dirs(&parent).is_empty(),
        "the restart left the interrupted pod's cgroups: {:?}",
        cgroup_dirs(&parent)
    );
    assert!(
        env.b.net.ip_files().is_empty(),
        "the interrupted pod's IP is still allocated"
    );
    // The retry creates the pod; stop and remove leave nothing.
    env.b.d.runtime().await.run_pod_sandbox(req).await.unwrap();
    assert!(!cgroup_dirs(&parent).is_empty());
    env.remove_all().await;
    assert!(
        cgroup_dirs(&parent).is_empty(),
        "{:?}",
        cgroup_dirs(&parent)
    );
    env.assert_nothing_left();
    let _ = network::run("true", &[]);
}
