//! Containers end to end: the real daemon, real runc and crun through crius-conmon, the busybox
//! image from the loopback registry fixture, pods on a private CNI bridge.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_e2e::daemon::{free_port, Daemon, Options};
use crius_e2e::network::TestNetwork;
use crius_e2e::{pods, registry, sweep};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

struct Env {
    d: Daemon,
    _net: TestNetwork,
    image: String,
    logs: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        let fx = registry::shared();
        let net = TestNetwork::new();
        let d = Daemon::start_with(Options {
            extra_config: format!(
                "[image.registries.\"{}\"]\ninsecure = true\n",
                fx.registry_addr()
            ),
            ..Options::default()
        })
        .await;
        net.install(&d.paths.cni_conf_dir, &[]);
        let image = fx.busybox_ref();
        d.image()
            .await
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .unwrap();
        Env {
            d,
            _net: net,
            image,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    async fn rt(&self) -> RuntimeServiceClient<Channel> {
        self.d.runtime().await
    }

    fn pod_config(&self, name: &str) -> cri::RunPodSandboxRequest {
        let mut req = pods::pod(name);
        pods::config(&mut req).log_directory = self.logs.path().join(name).display().to_string();
        req
    }

    async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let req = self.pod_config(name);
        let config = req.config.clone().unwrap();
        let id = self
            .rt()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    fn ctr(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(container_ns()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn run(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod, config).await.unwrap();
        self.rt()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        id
    }

    async fn status(&self, id: &str) -> cri::ContainerStatus {
        self.rt()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn wait_exited(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status(id).await;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still {}",
                st.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exec(&self, id: &str, cmd: &[&str], timeout: i64) -> cri::ExecSyncResponse {
        self.rt()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Output of a one-shot container: runs `cmd`, waits for the exit, returns the log text.
    async fn output_of(&self, config: cri::ContainerConfig) -> (cri::ContainerStatus, String) {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let pod = self.pod(&format!("p-{name}")).await;
        let id = self.run(&pod, config).await;
        let st = self.wait_exited(&id, Duration::from_secs(20)).await;
        let text = log_records(Path::new(&st.log_path))
            .into_iter()
            .map(|r| r.2)
            .collect::<Vec<_>>()
            .join("\n");
        (st, text)
    }
}

/// What kubelet sends by default: a per-container PID namespace.
fn container_ns() -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `(stream, tag, text)` of every CRI log record.
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap_or_default();
            assert!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts:?}");
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn procs_named(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test]
async fn logs_exit_codes_and_oom() {
    let env = Env::new().await;
    let pod = env.pod("logs").await;
    let id = env
        .run(
            &pod,
            env.ctr(
                "logger",
                &[
                    "sh",
                    "-c",
                    "echo to-stdout; echo to-stderr >&2; head -c 40960 /dev/zero | tr '\\0' a; echo; exit 3",
                ],
            ),
        )
        .await;
    let st = env.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.finished_at >= st.started_at && st.started_at >= st.created_at);
    let log = PathBuf::from(&st.log_path);
    assert_eq!(log, env.logs.path().join("logs/logger.log"));
    let records = log_records(&log);
    assert!(
        records.contains(&("stdout".into(), "F".into(), "to-stdout".into())),
        "{records:?}"
    );
    assert!(records.contains(&("stderr".into(), "F".into(), "to-stderr".into())));
    let long: Vec<_> = records.iter().filter(|r| r.2.starts_with("aaaa")).collect();
    assert!(
        long.len() >= 3,
        "40 KiB line split into partials: {}",
        long.len()
    );
    assert!(long[..long.len() - 1].iter().all(|r| r.1 == "P"));
    assert_eq!(long.last().unwrap().1, "F");
    assert_eq!(long.iter().map(|r| r.2.len()).sum::<usize>(), 40960);

    // exit 0 → Completed.
    let id = env.run(&pod, env.ctr("ok", &["true"])).await;
    let st = env.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));

    // 32 MiB limit, 100 MiB allocation → OOMKilled.
    let mut cfg = env.ctr("hog", &["sh", "-c", "tail /dev/zero"]);
    cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let id = env.run(&pod, cfg).await;
    let st = env.wait_exited(&id, Duration::from_secs(30)).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137);
    let (_, metrics) = env.d.http_get("/metrics");
    assert!(
        crius_e2e::daemon::metric_value(&metrics, "crius_containers_oom_total").unwrap() >= 1.0
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_security_settings_apply() {
    let env = Env::new().await;
    let pod = env.pod("sec").await;
    let id = env
        .run(
            &pod,
            env.ctr(
                "stubborn",
                &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
            ),
        )
        .await;
    let t = Instant::now();
    env.rt()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let st = env.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    // Stopping again, and stopping a missing container, succeed.
    for cid in [id.as_str(), "nope"] {
        env.rt()
            .await
            .stop_container(cri::StopContainerRequest {
                container_id: cid.into(),
                timeout: 0,
            })
            .await
            .unwrap();
    }

    // run_as_user 1000.
    let mut cfg = env.ctr("uid", &["id", "-u"]);
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        ..container_ns()
    });
    let (st, out) = env.output_of(cfg).await;
    assert_eq!((st.exit_code, out.trim()), (0, "1000"));
    assert_eq!(st.user.unwrap().linux.unwrap().uid, 1000);

    // Strict supplemental groups: the primary gid and exactly the given groups.
    let mut cfg = env.ctr("groups", &["id", "-G"]);
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        supplemental_groups: vec![3000],
        supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
        ..container_ns()
    });
    let (st, out) = env.output_of(cfg).await;
    assert_eq!(out.trim(), "1000 3000");
    let user = st.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));
    assert!(user.supplemental_groups.contains(&3000), "{user:?}");

    // drop ALL → CapEff 0; RuntimeDefault seccomp → mode 2.
    let mut cfg = env.ctr(
        "caps",
        &["grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"],
    );
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..container_ns()
    });
    let (_, out) = env.output_of(cfg).await;
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");

    // Readonly rootfs refuses writes; a read-only hostPath bind is read-only; env and workdir.
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("data"), "from-host").unwrap();
    let mut cfg = env.ctr(
        "ro",
        &[
            "sh",
            "-c",
            "cat /data/data; touch /x && echo ROOT-WRITABLE; touch /data/y && echo BIND-WRITABLE; echo \"$GREETING\"; pwd",
        ],
    );
    cfg.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hello env".into(),
    }];
    cfg.working_dir = "/tmp".into();
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        readonly_rootfs: true,
        ..container_ns()
    });
    let (_, out) = env.output_of(cfg).await;
    assert!(out.contains("from-host"), "{out}");
    assert!(!out.contains("ROOT-WRITABLE"), "{out}");
    assert!(!out.contains("BIND-WRITABLE"), "{out}");
    assert!(out.contains("hello env"), "{out}");
    assert!(out.contains("/tmp"), "{out}");
    assert!(!host_dir.path().join("y").exists());

    // A tty container: output through the pty lands in the log.
    let mut cfg = env.ctr("tty", &["sh", "-c", "tty; echo tty-ok"]);
    cfg.tty = true;
    let (st, out) = env.output_of(cfg).await;
    assert_eq!(st.exit_code, 0, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("tty-ok"), "{out}");
}

#[tokio::test]
async fn exec_sync_update_resources_and_errors() {
    let env = Env::new().await;
    let pod = env.pod("exec").await;
    let mut cfg = env.ctr("sleeper", &["sleep", "1000"]);
    cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let id = env.run(&pod, cfg.clone()).await;

    let out = env
        .exec(&id, &["sh", "-c", "echo hi; echo oops >&2; exit 4"], 10)
        .await;
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.exit_code, 4);

    let t = Instant::now();
    let err = env
        .rt()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "10".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ps = env.exec(&id, &["ps"], 10).await;
    let ps = String::from_utf8_lossy(&ps.stdout);
    // The killed process may linger as a zombie (`[sleep]`: PID 1 here does not reap), but
    // nothing runs `sleep 10` any more.
    assert!(
        !ps.lines().any(|l| l.trim_end().ends_with("sleep 10")),
        "{ps}"
    );

    // UpdateContainerResources: visible in the cgroup and in the status.
    env.rt()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let limit = env
        .exec(
            &id,
            &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
            10,
        )
        .await;
    let host_limit = String::from_utf8_lossy(&limit.stdout).trim().to_string();
    let st = env.status(&id).await;
    assert_eq!(
        st.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        96 << 20
    );
    if !host_limit.is_empty() {
        assert_eq!(host_limit, (96u64 << 20).to_string());
    }

    // Errors: duplicate name → AlreadyExists naming the id; unknown pod → NotFound; image not
    // present → NotFound; missing host path → InvalidArgument.
    let err = env.create(&pod, cfg.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());
    let err = env
        .create(&("0".repeat(64), pod.1.clone()), env.ctr("x", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut bad = env.ctr("noimage", &["true"]);
    bad.image = Some(cri::ImageSpec {
        image: "127.0.0.1:1/not/pulled:1".into(),
        ..Default::default()
    });
    assert_eq!(
        env.create(&pod, bad).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let mut bad = env.ctr("badmount", &["true"]);
    bad.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: "/nonexistent/crius/path".into(),
        ..Default::default()
    }];
    let err = env.create(&pod, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("/nonexistent/crius/path"),
        "{}",
        err.message()
    );

    // RemoveImage is refused while the container exists.
    let err = env
        .d
        .image()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: env.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Remove of a running container kills it; twice is fine.
    for _ in 0..2 {
        env.rt()
            .await
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let listed = env
        .rt()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.iter().all(|c| c.id != id));
}

#[tokio::test]
async fn log_reopen_keeps_every_line_exactly_once() {
    let env = Env::new().await;
    let pod = env.pod("rotate").await;
    let id = env
        .run(
            &pod,
            env.ctr("writer", &["sh", "-c", "sleep 1; seq 1 100000; sleep 1000"]),
        )
        .await;
    let log = PathBuf::from(env.status(&id).await.log_path);
    let mut rotated = Vec::new();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let to = log.with_extension(format!("log.{i}"));
        if std::fs::rename(&log, &to).is_ok() {
            rotated.push(to);
        }
        env.rt()
            .await
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut lines: Vec<u64> = Vec::new();
        for f in rotated.iter().chain(std::iter::once(&log)) {
            lines.extend(
                log_records(f)
                    .iter()
                    .filter_map(|r| r.2.parse::<u64>().ok()),
            );
        }
        if lines.len() >= 100_000 || Instant::now() > deadline {
            lines.sort_unstable();
            assert_eq!(
                lines.len(),
                100_000,
                "lines across {} files",
                rotated.len() + 1
            );
            assert!(lines.iter().enumerate().all(|(i, n)| *n == i as u64 + 1));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated.len() >= 5, "only {} renames", rotated.len());
}

#[tokio::test]
async fn kill9_leaves_containers_running_and_restart_readopts_them() {
    let mut env = Env::new().await;
    let pod = env.pod("durable").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let cmd = if i == 0 {
            "sleep 2; exit 7".to_string()
        } else {
            "while true; do echo tick; sleep 0.2; done".to_string()
        };
        ids.push(
            env.run(&pod, env.ctr(&format!("c{i}"), &["sh", "-c", &cmd]))
                .await,
        );
    }
    let log1 = PathBuf::from(env.status(&ids[1]).await.log_path);
    env.d.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = log_records(&log1).len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        log_records(&log1).len() > before,
        "container stopped logging"
    );
    env.d.restart().await;
    let st = env.status(&ids[0]).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 7);
    for id in &ids[1..] {
        assert_eq!(
            env.status(id).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
    }
    let out = env.exec(&ids[1], &["echo", "still-here"], 10).await;
    assert_eq!(out.stdout, b"still-here\n");
    // SIGTERM of the daemon never stops containers either.
    env.d.terminate(Duration::from_secs(5));
    env.d.restart().await;
    assert_eq!(
        env.status(&ids[2]).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let mut rt = env.rt().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.0.clone(),
    })
    .await
    .unwrap();
    for id in &ids {
        assert_eq!(
            env.status(id).await.state,
            cri::ContainerState::ContainerExited as i32
        );
    }
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.0.clone(),
    })
    .await
    .unwrap();
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn hundred_containers_leave_nothing_behind_on_runc_and_crun() {
    let env = Env::new().await;
    let runroot_text = env.d.paths.runroot.display().to_string();
    let monitors_before = procs_named(&runroot_text);
    let mounts = |dir: &Path| crius_e2e::network::mounts_under(dir);
    for (handler, n) in [("runc", 60), ("crun", 40)] {
        let mut req = env.pod_config(&format!("many-{handler}"));
        req.runtime_handler = handler.into();
        let config = req.config.clone().unwrap();
        let pod_id = env
            .rt()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let pod = (pod_id, config);
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(
                env.run(&pod, env.ctr(&format!("c{i}"), &["sleep", "1000"]))
                    .await,
            );
        }
        let listed = env
            .rt()
            .await
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.0.clone(),
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(listed.len(), n, "{handler}");
        for id in &ids {
            let mut rt = env.rt().await;
            rt.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .unwrap();
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        }
        let mut rt = env.rt().await;
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    }
    let runroot = &env.d.paths.runroot;
    assert_eq!(
        mounts(runroot),
        0,
        "mounts left under {}",
        runroot.display()
    );
    assert_eq!(procs_named(&runroot_text), monitors_before, "monitors left");
    for dir in ["containers", "m"] {
        let left = std::fs::read_dir(runroot.join(dir))
            .map(|e| e.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{dir} entries left");
    }
    for handler in ["runc", "crun"] {
        let state = runroot.join("runtimes").join(handler);
        let left = std::fs::read_dir(&state).map(|e| e.count()).unwrap_or(0);
        assert_eq!(left, 0, "{handler} state dirs left");
    }
    let zombies = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .map(|s| s.contains(") Z ") && s.contains("(sleep)"))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(zombies, 0);
}

fn userns_options(host_base: u32) -> cri::UserNamespace {
    let map = cri::IdMapping {
        host_id: host_base,
        container_id: 0,
        length: 65536,
    };
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    }
}

fn uid_of_pid(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn user_namespace_pods_map_root_and_idmap_rootfs_and_volumes() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new().await;
    let handlers = env
        .rt()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers;
    assert!(!handlers.is_empty());
    for h in &handlers {
        assert!(
            h.features.as_ref().unwrap().user_namespaces,
            "handler {} does not report user namespaces",
            h.name
        );
    }

    // Refusals name what is wrong and leave nothing behind.
    let mut bad = env.pod_config("userns-hostnet");
    {
        let ns = pods::config(&mut bad)
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default);
        ns.network = cri::NamespaceMode::Node as i32;
        ns.userns_options = Some(userns_options(300_000));
    }
    let err = env.rt().await.run_pod_sandbox(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("host's network"),
        "{}",
        err.message()
    );
    let mut bad = env.pod_config("userns-noroot");
    let mut opts = userns_options(300_000);
    opts.uids[0].container_id = 1;
    pods::config(&mut bad)
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(opts);
    let err = env.rt().await.run_pod_sandbox(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("id 0 must be mapped"),
        "{}",
        err.message()
    );

    // A volume owned by host root.
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("f"), "from the host\n").unwrap();

    // runc with a pod-level PID namespace (the infra PID 1 joins the user namespace), crun
    // with the container's own.
    for (handler, base, pid_mode) in [
        ("runc", 200_000u32, cri::NamespaceMode::Pod),
        ("crun", 265_536u32, cri::NamespaceMode::Container),
    ] {
        let mut req = env.pod_config(&format!("userns-{handler}"));
        req.runtime_handler = handler.into();
        {
            let ns = pods::config(&mut req)
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
                .namespace_options
                .get_or_insert_with(Default::default);
            ns.pid = pid_mode as i32;
            ns.userns_options = Some(userns_options(base));
        }
        let config = req.config.clone().unwrap();
        let pod_id = env
            .rt()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let pod = (pod_id, config);
        let mut ctr = env.ctr("u", &["sleep", "1000"]);
        let sc = ctr
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.namespace_options.as_mut().unwrap().pid = pid_mode as i32;
        ctr.mounts.push(cri::Mount {
            container_path: "/vol".into(),
            host_path: vol.path().display().to_string(),
            ..Default::default()
        });
        let id = env.run(&pod, ctr).await;

        let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let run = |script: &'static str| {
            let env = &env;
            let id = id.clone();
            async move {
                let cmd = sh(script);
                let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let out = env.exec(&id, &cmd, 10).await;
                (
                    out.exit_code,
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                )
            }
        };
        // Root inside, an unprivileged uid outside.
        let (code, out, _) = run("cat /proc/self/uid_map; id -u").await;
        assert_eq!(code, 0, "{handler}");
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(
            words,
            ["0", &base.to_string(), "65536", "0"],
            "{handler}: {out}"
        );
        let st = env
            .rt()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
        let pid = info["pid"].as_u64().unwrap() as u32;
        assert_eq!(
            uid_of_pid(pid),
            base.to_string(),
            "{handler}: host uid of the container"
        );

        // The rootfs and the volume are idmapped: host root's files are root's inside, and
        // writes work (the rootfs's /etc is copied up, the volume is written through).
        let (code, out, err) =
            run("stat -c %u:%g / /bin/busybox /etc /etc/hosts /vol/f; cat /vol/f; echo c > /etc/made && echo v > /vol/made-$(hostname) && echo ok").await;
        assert_eq!(code, 0, "{handler}: {out} {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..5], ["0:0"; 5], "{handler}: {out}");
        assert_eq!(lines[5..], ["from the host", "ok"], "{handler}: {out}");
        let made = vol.path().join(format!("made-userns-{handler}"));
        assert_eq!(
            std::fs::metadata(&made).unwrap().uid(),
            0,
            "{handler}: volume write"
        );
        let upper = env
            .d
            .paths
            .root
            .join("containers")
            .join(&id)
            .join("upper/etc/made");
        let meta = std::fs::metadata(&upper).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (base, base),
            "{handler}: rootfs write"
        );
        if pid_mode == cri::NamespaceMode::Pod {
            // The pod's PID 1 runs as the user namespace's root too.
            let (code, out, _) = run("stat -c %u /proc/1").await;
            assert_eq!(
                (code, out.as_str()),
                (0, "0"),
                "{handler}: infra uid inside"
            );
        }

        // Teardown leaves no pin, staging or rootfs mount.
        let mut rt = env.rt().await;
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(crius_e2e::network::mounts_under(&env.d.paths.runroot), 0);
    assert_eq!(crius_e2e::network::mounts_under(&env.d.paths.root), 0);
    let staging = std::fs::read_dir(env.d.paths.root.join("i"))
        .map(|e| e.count())
        .unwrap_or(0);
    assert_eq!(staging, 0, "idmap staging dirs left");
}

#[tokio::test]
async fn stats_report_cpu_memory_writable_layer_and_pod_network() {
    let env = Env::new().await;
    let parent = format!("/crius-e2e-stats-{}", std::process::id());
    let mut req = env.pod_config("stats");
    pods::config(&mut req)
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = parent.clone();
    let config = req.config.clone().unwrap();
    let pod_id = env
        .rt()
        .await
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let pod = (pod_id.clone(), config);
    let mut ctr = env.ctr(
        "busy",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1024 count=4096 2>/dev/null; i=0; \
             while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000",
        ],
    );
    ctr.labels.insert("app".into(), "stats".into());
    let id = env.run(&pod, ctr).await;

    let stats_of = |id: String| async {
        let env = &env;
        env.rt()
            .await
            .container_stats(cri::ContainerStatsRequest { container_id: id })
            .await
            .map(|r| r.into_inner().stats.unwrap())
    };
    // The writable layer grows to the 4 MiB file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let s = stats_of(id.clone()).await.unwrap();
        let used = s.writable_layer.as_ref().unwrap().used_bytes.unwrap().value;
        if used >= 4 << 20 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "writable layer stays at {used} bytes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attrs = first.attributes.as_ref().unwrap();
    assert_eq!(attrs.id, id);
    assert_eq!(attrs.metadata.as_ref().unwrap().name, "busy");
    assert_eq!(attrs.labels.get("app").map(String::as_str), Some("stats"));
    let cpu = first.cpu.as_ref().unwrap();
    assert!(cpu.usage_core_nano_seconds.unwrap().value > 0);
    let mem = first.memory.as_ref().unwrap();
    let working_set = mem.working_set_bytes.unwrap().value;
    assert!(working_set > 0 && working_set <= mem.usage_bytes.unwrap().value);
    let layer = first.writable_layer.as_ref().unwrap();
    assert!(layer.inodes_used.unwrap().value >= 1);
    assert!(!layer.fs_id.as_ref().unwrap().mountpoint.is_empty());
    // A second sample gives a CPU rate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = stats_of(id.clone()).await.unwrap();
    assert!(second.cpu.unwrap().usage_nano_cores.is_some());
    let err = stats_of("0".repeat(64)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let list = |filter: cri::ContainerStatsFilter| async {
        let env = &env;
        env.rt()
            .await
            .list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(filter),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .into_iter()
            .map(|s| s.attributes.unwrap().id)
            .collect::<Vec<_>>()
    };
    let by_pod = cri::ContainerStatsFilter {
        pod_sandbox_id: pod_id.clone(),
        ..Default::default()
    };
    assert_eq!(list(by_pod).await, [id.as_str()]);
    let by_label = cri::ContainerStatsFilter {
        label_selector: [("app".to_string(), "stats".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(list(by_label).await, [id.as_str()]);
    let other_label = cri::ContainerStatsFilter {
        label_selector: [("app".to_string(), "other".to_string())].into(),
        ..Default::default()
    };
    assert!(list(other_label).await.is_empty());

    // The pod: its cgroup parent, its eth0, its processes, its container.
    let pod_stats = env
        .rt()
        .await
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(pod_stats.attributes.as_ref().unwrap().id, pod_id);
    let linux = pod_stats.linux.unwrap();
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let net = linux.network.unwrap();
    assert_eq!(net.default_interface.unwrap().name, "eth0");
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
    assert_eq!(linux.containers.len(), 1);
    let listed = env
        .rt()
        .await
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let err = env
        .rt()
        .await
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "f".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let mut rt = env.rt().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .unwrap();
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(&parent[1..])
            .exists(),
        "pod cgroup {parent} left behind"
    );
}

/// The memory cgroup directory of process `pid` (cgroup v1 or v2).
fn memory_cgroup(pid: i32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
        match controllers {
            Some("") => return Path::new("/sys/fs/cgroup").join(&path[1..]),
            Some(c) if c.split(',').any(|c| c == "memory") => {
                return Path::new("/sys/fs/cgroup/memory").join(&path[1..])
            }
            _ => {}
        }
    }
    panic!("no memory cgroup for {pid}: {text}");
}

/// Processes running busybox `sleep <marker>`.
fn sleepers(marker: &str) -> Vec<sweep::Process> {
    sweep::processes(|args| args.len() == 2 && args[0].ends_with("sleep") && args[1] == marker)
}

/// Creates a pod (own PID namespace, so an infra process; a host port, so portmap nat rules)
/// with a running `sleep <marker>`, then drops the daemon without stopping anything (killed
/// first when `kill_first`) and checks that nothing of it is left on the host.
async fn dropping_the_daemon_leaves_nothing(kill_first: bool, marker: &str) {
    let env = Env::new().await;
    let mut req = env.pod_config("left-running");
    pods::namespaces(&mut req).pid = cri::NamespaceMode::Pod as i32;
    pods::config(&mut req).port_mappings = vec![pods::tcp_port(free_port().into(), 80)];
    let config = req.config.clone().unwrap();
    let pod_id = env
        .rt()
        .await
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut ctr = env.ctr("sleeper", &["sleep", marker]);
    ctr.linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .unwrap()
        .pid = cri::NamespaceMode::Pod as i32;
    env.run(&(pod_id, config), ctr).await;

    let dir = env.d.dir().to_path_buf();
    let runroot = env.d.paths.runroot.clone();
    let net_name = env._net.name.clone();
    let running = sleepers(marker);
    assert_eq!(running.len(), 1, "the container is not running");
    let cgroup = memory_cgroup(running[0].pid);
    assert!(cgroup.exists(), "{}", cgroup.display());
    let monitors = sweep::monitors(&runroot);
    assert!(monitors.len() >= 2, "a monitor and an infra process");
    assert!(!sweep::mount_points_under(&dir).is_empty());
    let chains = env._net.nat_chains();
    assert!(!chains.is_empty(), "portmap made no chain");

    let Env {
        mut d, _net: net, ..
    } = env;
    if kill_first {
        d.kill9();
    }
    drop(d);
    if !kill_first {
        // A live daemon removed the pod itself: CNI DEL released the address and the port.
        assert!(net.ip_files().is_empty(), "{:?}", net.ip_files());
        assert_eq!(net.nat_rules(), 0);
    }
    drop(net);

    let mounts = sweep::mount_points_under(&dir);
    assert!(mounts.is_empty(), "{mounts:?}");
    assert!(!dir.exists(), "{} not removed", dir.display());
    let left: Vec<_> = sweep::monitors(&runroot)
        .into_iter()
        .map(|p| p.args)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(sleepers(marker).is_empty(), "the container still runs");
    assert!(!cgroup.exists(), "{} left", cgroup.display());
    let (_, nat) = crius_e2e::network::run("iptables", &["-t", "nat", "-S"]);
    let rules: Vec<_> = nat
        .lines()
        .filter(|l| l.contains(&net_name) || chains.iter().any(|c| l.contains(c.as_str())))
        .collect();
    assert!(rules.is_empty(), "{rules:#?}");
}

#[tokio::test]
async fn dropping_a_live_daemon_removes_its_pods_and_containers() {
    let marker = format!("{}", 900_000_000 + std::process::id() * 2);
    dropping_the_daemon_leaves_nothing(false, &marker).await;
}

#[tokio::test]
async fn dropping_a_killed_daemon_sweeps_monitors_containers_mounts_and_nat_rules() {
    let marker = format!("{}", 900_000_001 + std::process::id() * 2);
    dropping_the_daemon_leaves_nothing(true, &marker).await;
}
