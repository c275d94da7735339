//! Containers end to end: the real daemon, real runc and crun through crius-conmon, the busybox
//! image from the loopback registry fixture, pods on a private CNI bridge.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::{free_port, Daemon, Options};
use crius_e2e::network::TestNetwork;
use crius_e2e::{pods, sweep};
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
        Env::with(Options::default()).await
    }

    async fn with(options: Options) -> Env {
        let BusyboxDaemon { d, net, image } = BusyboxDaemon::start(options).await;
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
        self.pod_on(name, "").await
    }

    /// A pod on runtime handler `handler` (`""`: the default, runc).
    async fn pod_on(&self, name: &str, handler: &str) -> (String, cri::PodSandboxConfig) {
        let mut req = self.pod_config(name);
        req.runtime_handler = handler.into();
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

    /// The `info` JSON of a verbose `ContainerStatus`.
    async fn info(&self, id: &str) -> serde_json::Value {
        let resp = self
            .rt()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        serde_json::from_str(&resp.info["info"]).unwrap()
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
        self.output_in(&pod, config).await
    }

    /// [`Env::output_of`] in an existing pod.
    async fn output_in(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> (cri::ContainerStatus, String) {
        let id = self.run(pod, config).await;
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

/// The OCI runtime handlers every lifecycle check runs on.
const HANDLERS: [&str; 2] = ["runc", "crun"];

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq)]
struct ProcStat {
    pid: u32,
    comm: String,
    state: char,
    ppid: u32,
    /// Clock ticks since boot: with the pid, identifies a process across pid reuse.
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` may hold spaces and parentheses: it ends at the last ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn all_procs() -> Vec<ProcStat> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(proc_stat)
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// Mount points of every cgroup hierarchy (each v1 controller and the cgroup2 mount):
/// `(mount point, options)`: a v1 hierarchy's controllers (or `name=`), empty for cgroup2.
fn cgroup_hierarchies() -> Vec<(PathBuf, Vec<String>)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let found: Vec<(PathBuf, Vec<String>)> = info
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let super_opts = post.nth(1).unwrap_or_default();
            let controllers = match fstype {
                "cgroup" => super_opts
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro"))
                    .map(str::to_string)
                    .collect(),
                "cgroup2" => Vec::new(),
                _ => return None,
            };
            Some((PathBuf::from(mount_point), controllers))
        })
        .collect();
    assert!(!found.is_empty(), "no cgroup hierarchy mounted");
    found
}

/// The directories of the cgroup `path` (an OCI `linux.cgroupsPath`) that exist in any
/// hierarchy.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    assert!(!rel.is_empty(), "empty cgroups path");
    cgroup_hierarchies()
        .into_iter()
        .map(|(mount, _)| mount.join(rel))
        .filter(|d| d.exists())
        .collect()
}

/// The container's memory limit as the host's cgroup files show it: v1 `memory.limit_in_bytes`,
/// else cgroup2 `memory.max`.
fn host_memory_limit(cgroups_path: &str) -> String {
    let rel = cgroups_path.trim_start_matches('/');
    let hierarchies = cgroup_hierarchies();
    let file = hierarchies
        .iter()
        .find(|(_, c)| c.iter().any(|c| c == "memory"))
        .map(|(m, _)| m.join(rel).join("memory.limit_in_bytes"))
        .or_else(|| {
            hierarchies
                .iter()
                .find(|(_, c)| c.is_empty())
                .map(|(m, _)| m.join(rel).join("memory.max"))
        })
        .unwrap();
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_string()
}

/// Directory entries of `dir` (empty when it does not exist).
fn entries(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The 64-hex container id a runtime error message names.
fn id_in(message: &str) -> Option<String> {
    message
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .map(str::to_string)
}

#[tokio::test]
async fn logs_exit_codes_and_oom() {
    let env = Env::new().await;
    for (n, handler) in HANDLERS.into_iter().enumerate() {
        let pod_name = format!("logs-{handler}");
        let pod = env.pod_on(&pod_name, handler).await;
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
        assert_eq!(env.info(&id).await["runtimeHandler"], handler);
        let st = env.wait_exited(&id, Duration::from_secs(20)).await;
        assert_eq!(st.exit_code, 3, "{handler}");
        assert_eq!(st.reason, "Error", "{handler}");
        assert!(
            st.finished_at >= st.started_at && st.started_at >= st.created_at,
            "{handler}: {st:?}"
        );
        let log = PathBuf::from(&st.log_path);
        assert_eq!(log, env.logs.path().join(&pod_name).join("logger.log"));
        let records = log_records(&log);
        assert!(
            records.contains(&("stdout".into(), "F".into(), "to-stdout".into())),
            "{handler}: {records:?}"
        );
        assert!(
            records.contains(&("stderr".into(), "F".into(), "to-stderr".into())),
            "{handler}: {records:?}"
        );
        let long: Vec<_> = records.iter().filter(|r| r.2.starts_with("aaaa")).collect();
        assert!(
            long.len() >= 3,
            "{handler}: 40 KiB line split into partials: {}",
            long.len()
        );
        assert!(
            long[..long.len() - 1].iter().all(|r| r.1 == "P"),
            "{handler}"
        );
        assert_eq!(long.last().unwrap().1, "F", "{handler}");
        assert_eq!(
            long.iter().map(|r| r.2.len()).sum::<usize>(),
            40960,
            "{handler}"
        );

        // exit 0 → Completed.
        let id = env.run(&pod, env.ctr("ok", &["true"])).await;
        let st = env.wait_exited(&id, Duration::from_secs(20)).await;
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (0, "Completed"),
            "{handler}"
        );

        // 32 MiB limit, 100 MiB allocation → OOMKilled.
        let mut cfg = env.ctr("hog", &["sh", "-c", "tail /dev/zero"]);
        cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        });
        let id = env.run(&pod, cfg).await;
        let st = env.wait_exited(&id, Duration::from_secs(30)).await;
        assert_eq!(st.reason, "OOMKilled", "{handler}: {st:?}");
        assert_eq!(st.exit_code, 137, "{handler}");
        let (_, metrics) = env.d.http_get("/metrics");
        assert_eq!(
            crius_e2e::daemon::metric_value(&metrics, "crius_containers_oom_total"),
            Some((n + 1) as f64),
            "{handler}"
        );
    }
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_security_settings_apply() {
    let env = Env::new().await;
    for handler in HANDLERS {
        let pod = env.pod_on(&format!("sec-{handler}"), handler).await;
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
        let took = t.elapsed();
        // SIGTERM is ignored, so the stop waits out the timeout before SIGKILL.
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
            "{handler}: {took:?}"
        );
        let st = env.status(&id).await;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerExited as i32,
            "{handler}"
        );
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
    let mut running = Vec::new();
    for handler in HANDLERS {
        let pod = env.pod_on(&format!("exec-{handler}"), handler).await;
        let mut cfg = env.ctr("sleeper", &["sleep", "1000"]);
        cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
        let id = env.run(&pod, cfg.clone()).await;

        let out = env
            .exec(&id, &["sh", "-c", "echo hi; echo oops >&2; exit 4"], 10)
            .await;
        assert_eq!(out.stdout, b"hi\n", "{handler}");
        assert_eq!(out.stderr, b"oops\n", "{handler}");
        assert_eq!(out.exit_code, 4, "{handler}");

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
        assert_eq!(
            err.code(),
            tonic::Code::DeadlineExceeded,
            "{handler}: {err:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{handler}: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ps = env.exec(&id, &["ps"], 10).await;
        let ps = String::from_utf8_lossy(&ps.stdout);
        // The killed process may linger as a zombie (`[sleep]`: PID 1 here does not reap), but
        // nothing runs `sleep 10` any more.
        assert!(ps.contains("sleep 1000"), "{handler}: {ps}");
        assert!(
            !ps.lines().any(|l| l.trim_end().ends_with("sleep 10")),
            "{handler}: {ps}"
        );

        // UpdateContainerResources: visible in the host's cgroup file and in the status.
        let cgroups_path = env.info(&id).await["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            host_memory_limit(&cgroups_path),
            (64u64 << 20).to_string(),
            "{handler}: limit at create"
        );
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
        assert_eq!(
            host_memory_limit(&cgroups_path),
            (96u64 << 20).to_string(),
            "{handler}: limit after update"
        );
        let st = env.status(&id).await;
        assert_eq!(
            st.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
            96 << 20,
            "{handler}"
        );
        running.push((pod, cfg, id));
    }
    let (pod, cfg, id) = running[0].clone();

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
    for (_, _, id) in &running {
        for _ in 0..2 {
            env.rt()
                .await
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap();
        }
    }
    let listed = env
        .rt()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn log_reopen_keeps_every_line_exactly_once() {
    const LINES: u64 = 100_000;
    const RENAMES: usize = 12;
    let env = Env::new().await;
    let pod = env.pod("rotate").await;
    // 200 chunks of 500 lines with a pause after each: writing lasts at least 4 s, so every
    // rename and reopen below lands while lines are still coming.
    let writer = "i=0; while [ $i -lt 200 ]; do seq $((i*500+1)) $((i*500+500)); i=$((i+1)); \
                  sleep 0.02; done; sleep 1000";
    let id = env
        .run(&pod, env.ctr("writer", &["sh", "-c", writer]))
        .await;
    let log = PathBuf::from(env.status(&id).await.log_path);
    let numbers = |f: &Path| -> Vec<u64> {
        log_records(f)
            .iter()
            .filter_map(|r| r.2.parse::<u64>().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while numbers(&log).is_empty() {
        assert!(Instant::now() < deadline, "the writer never wrote");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rotated = Vec::new();
    for i in 0..RENAMES {
        let to = log.with_extension(format!("log.{i}"));
        // The monitor has (re)created the log: the rename must find it.
        std::fs::rename(&log, &to).unwrap();
        rotated.push(to);
        env.rt()
            .await
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let files: Vec<PathBuf> = rotated
        .iter()
        .chain(std::iter::once(&log))
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines: Vec<u64> = loop {
        let lines: Vec<u64> = files.iter().flat_map(|f| numbers(f)).collect();
        if lines.len() as u64 >= LINES || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Let a late duplicate show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if lines.len() as u64 >= LINES {
        lines = files.iter().flat_map(|f| numbers(f)).collect();
    }
    assert!(files.len() >= 11, "{} files", files.len());
    // Every file got lines: each rename happened while the writer was still writing (the
    // last file holds lines written after the last reopen).
    for f in &files {
        assert!(!numbers(f).is_empty(), "{} is empty", f.display());
    }
    lines.sort_unstable();
    assert_eq!(
        lines.len() as u64,
        LINES,
        "lines across {} files",
        files.len()
    );
    assert!(
        lines.iter().enumerate().all(|(i, n)| *n == i as u64 + 1),
        "a line is missing or duplicated"
    );
}

#[tokio::test]
async fn kill9_leaves_containers_running_and_restart_readopts_them() {
    let mut env = Env::new().await;
    let pod = env.pod("durable").await;
    // c0 exits with 7 once the test lets it, which it does only while the daemon is down.
    let gate = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut cfg = if i == 0 {
            env.ctr(
                "c0",
                &[
                    "sh",
                    "-c",
                    "while [ ! -e /gate/go ]; do sleep 0.1; done; exit 7",
                ],
            )
        } else {
            env.ctr(
                &format!("c{i}"),
                &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
            )
        };
        if i == 0 {
            cfg.mounts.push(cri::Mount {
                container_path: "/gate".into(),
                host_path: gate.path().display().to_string(),
                readonly: true,
                ..Default::default()
            });
        }
        ids.push(env.run(&pod, cfg).await);
    }
    assert_eq!(
        env.status(&ids[0]).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let log1 = PathBuf::from(env.status(&ids[1]).await.log_path);
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    };
    env.d.kill9();
    let killed_at = now_ns();
    std::fs::write(gate.path().join("go"), "").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = log_records(&log1).len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        log_records(&log1).len() > before,
        "container stopped logging"
    );
    let restarting_at = now_ns();
    env.d.restart().await;
    let st = env.status(&ids[0]).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 7);
    assert_eq!(st.reason, "Error");
    // The exit time comes from the monitor's exit record: during the downtime, before the
    // restart even began.
    assert!(
        killed_at < st.finished_at && st.finished_at < restarting_at,
        "finished_at {} not between the kill ({killed_at}) and the restart ({restarting_at})",
        st.finished_at
    );
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
    // Every container's cgroup (the spec's linux.cgroupsPath), init and monitor.
    let mut cgroups = Vec::new();
    let mut processes: Vec<(String, ProcStat)> = Vec::new();
    for (handler, n) in [("runc", 60), ("crun", 40)] {
        let pod = env.pod_on(&format!("many-{handler}"), handler).await;
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
            let info = env.info(id).await;
            let path = info["runtimeSpec"]["linux"]["cgroupsPath"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(path.ends_with(id.as_str()), "{handler}: {path}");
            // The check below can fail: the cgroup is there while the container runs.
            assert!(
                !cgroup_dirs(&path).is_empty(),
                "{handler}: cgroup {path} of {id} not found"
            );
            cgroups.push((id.clone(), path));
            for key in ["pid", "monitorPid"] {
                let pid = info[key].as_u64().unwrap() as u32;
                let st = proc_stat(pid).unwrap_or_else(|| panic!("{handler}: {key} {pid} of {id}"));
                assert_ne!(st.state, 'Z', "{handler}: {key} of {id}: {st:?}");
                processes.push((format!("{handler} {key} of {id}"), st));
            }
        }
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
    for handler in HANDLERS {
        let state = runroot.join("runtimes").join(handler);
        let left = std::fs::read_dir(&state).map(|e| e.count()).unwrap_or(0);
        assert_eq!(left, 0, "{handler} state dirs left");
    }

    // No container cgroup is left in any hierarchy (v1 controllers and the cgroup2 mount).
    let left: Vec<_> = cgroups
        .iter()
        .flat_map(|(id, path)| cgroup_dirs(path).into_iter().map(move |d| (id, d)))
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");

    // No init or monitor survives, not even as a zombie of ours. A zombie whose parent is
    // PID 1 is tolerated: the double fork reparents every monitor to PID 1, and on this
    // machine PID 1 (`process_api`) reaps orphans only late (seconds after they exit: right
    // after the loop the crun monitors are typically still its zombies), so an exited monitor
    // stays such a zombie for a while; it holds no resources (docs/monitor.md). Zombies are
    // attributed by pid and start time, never by a name another test could share.
    let daemon_pid = env.d.pid().unwrap();
    let mut tolerated = 0;
    for (what, before) in &processes {
        let Some(now) = proc_stat(before.pid) else {
            continue;
        };
        if now.start_time != before.start_time {
            continue; // the pid was reused by another process
        }
        assert!(
            now.state == 'Z' && now.ppid == 1,
            "{what} is still there: {now:?} {}",
            cmdline(now.pid)
        );
        tolerated += 1;
    }
    for z in all_procs().iter().filter(|p| p.state == 'Z') {
        let parent = cmdline(z.ppid);
        assert!(
            z.ppid != daemon_pid && !parent.contains(&runroot_text),
            "zombie {z:?} of the daemon or one of its monitors ({parent})"
        );
    }
    if tolerated > 0 {
        eprintln!("{tolerated} zombies of PID 1 (not reaped by this machine's init)");
    }
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
    // The runtime's start returns once the init was told to exec (crun: before the exec is
    // done): wait for the command to show.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut running = sleepers(marker);
    while running.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        running = sleepers(marker);
    }
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

/// A tmpfs mounted at a path in the host's mount namespace (the daemon must see it), unmounted
/// on drop.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path) -> TmpfsMount {
        std::fs::create_dir_all(at).unwrap();
        let at_text = at.display().to_string();
        let (ok, out) = crius_e2e::network::run(
            "mount",
            &["-t", "tmpfs", "-o", "size=1m", "crius-e2e", &at_text],
        );
        assert!(ok, "mount tmpfs at {at_text}: {out}");
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = crius_e2e::network::run("umount", &["-l", &self.0.display().to_string()]);
    }
}

#[tokio::test]
async fn recursive_read_only_mounts_cover_submounts_on_runc_and_are_refused_on_crun() {
    let env = Env::new().await;
    let features: std::collections::BTreeMap<String, bool> = env
        .rt()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .into_iter()
        .map(|h| (h.name, h.features.unwrap().recursive_read_only_mounts))
        .collect();
    // runc 1.1.5 lists `rro` in `runc features`; crun 1.8.1 has no `features` command.
    assert_eq!(features.get("runc"), Some(&true), "{features:?}");
    assert_eq!(features.get("crun"), Some(&false), "{features:?}");

    // A host dir with a tmpfs submount (the guard is dropped, and unmounts, before the dir).
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("top"), "in-top\n").unwrap();
    let sub = host.path().join("sub");
    let _tmpfs = TmpfsMount::new(&sub);
    std::fs::write(sub.join("marker"), "in-submount\n").unwrap();
    let mount = |recursive_read_only: bool| cri::Mount {
        container_path: "/data".into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        recursive_read_only,
        ..Default::default()
    };
    let script = "cat /data/top /data/sub/marker; \
                  touch /data/sub/new && echo SUB-WRITABLE; \
                  touch /data/new && echo TOP-WRITABLE; echo done";

    let pod = env.pod_on("rro-runc", "runc").await;
    let mut cfg = env.ctr("rro", &["sh", "-c", script]);
    cfg.mounts = vec![mount(true)];
    let (_, out) = env.output_in(&pod, cfg).await;
    assert!(
        out.contains("in-top") && out.contains("in-submount"),
        "{out}"
    );
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains("TOP-WRITABLE"), "{out}");
    assert!(
        !out.contains("SUB-WRITABLE"),
        "rro: submount writable: {out}"
    );
    assert!(!sub.join("new").exists() && !host.path().join("new").exists());

    // The control: a plain read-only bind leaves the submount writable, which is what the
    // recursive option is for (and shows the check above can fail).
    let mut cfg = env.ctr("ro", &["sh", "-c", script]);
    cfg.mounts = vec![mount(false)];
    let (_, out) = env.output_in(&pod, cfg).await;
    assert!(out.contains("in-submount") && out.contains("done"), "{out}");
    assert!(!out.contains("TOP-WRITABLE"), "{out}");
    assert!(out.contains("SUB-WRITABLE"), "{out}");
    assert!(sub.join("new").exists());

    // crun cannot do it: refused, naming the mount.
    let pod = env.pod_on("rro-crun", "crun").await;
    let mut cfg = env.ctr("rro", &["sh", "-c", script]);
    cfg.mounts = vec![mount(true)];
    let err = env.create(&pod, cfg).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/data"), "{}", err.message());
}

#[tokio::test]
async fn failed_creates_leave_nothing_behind_and_release_the_name() {
    let env = Env::new().await;
    let (root, runroot) = (&env.d.paths.root, &env.d.paths.runroot);
    let runroot_text = runroot.display().to_string();
    for handler in HANDLERS {
        let snapshot = || {
            (
                crius_e2e::network::mounts_under(root),
                crius_e2e::network::mounts_under(runroot),
                entries(&runroot.join("containers")),
                entries(&runroot.join("m")),
                entries(&root.join("containers")),
                entries(&root.join("container")),
                entries(&root.join("i")),
                entries(&runroot.join("runtimes").join(handler)),
                procs_named(&runroot_text),
            )
        };
        let pod = env.pod_on(&format!("fail-{handler}"), handler).await;
        let before = snapshot();

        // Fails after the directories and the rootfs mount: a host path that does not exist.
        let mut bad = env.ctr("broken", &["sleep", "1000"]);
        bad.mounts = vec![cri::Mount {
            container_path: "/x".into(),
            host_path: "/nonexistent/crius/path".into(),
            ..Default::default()
        }];
        let err = env.create(&pod, bad).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{handler}: {err:?}"
        );
        assert!(
            err.message().contains("/nonexistent/crius/path"),
            "{handler}: {}",
            err.message()
        );
        assert_eq!(snapshot(), before, "{handler}: after a missing host path");

        // Fails in `<runtime> create`: the command is not in the image (both runtimes look it
        // up before the container waits for start).
        let err = env
            .create(&pod, env.ctr("broken", &["/no/such/command"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{handler}: {err:?}");
        assert!(
            err.message().contains("/no/such/command"),
            "{handler}: {err:?}"
        );
        let id = id_in(err.message())
            .unwrap_or_else(|| panic!("{handler}: no id in {:?}", err.message()));
        assert_eq!(
            snapshot(),
            before,
            "{handler}: after a failed runtime create"
        );
        assert!(!runroot.join("runtimes").join(handler).join(&id).exists());
        assert_eq!(procs_named(&id), 0, "{handler}: a process names {id}");
        // Without a pod cgroup parent a container's cgroup is /crius/crius-<id>
        // (src/container/spec/linux.rs).
        let cgroup = format!("/crius/crius-{id}");
        assert_eq!(cgroup_dirs(&cgroup), Vec::<PathBuf>::new(), "{handler}");

        // The name is free again.
        let id = env.run(&pod, env.ctr("broken", &["sleep", "1000"])).await;
        let listed = env
            .rt()
            .await
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.0.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, [id.as_str()], "{handler}");
        assert_eq!(
            env.status(&id).await.state,
            cri::ContainerState::ContainerRunning as i32,
            "{handler}"
        );
    }
}

#[tokio::test]
async fn list_filters_status_fields_and_metrics() {
    let env = Env::new().await;
    let pod = env.pod("inspect").await;
    let host = tempfile::tempdir().unwrap();
    let kv = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut web = env.ctr("web", &["sleep", "1000"]);
    web.labels = kv(&[("app", "shop"), ("tier", "web")]);
    web.annotations = kv(&[("note", "hello"), ("example.com/x", "y")]);
    web.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/scratch".into(),
            host_path: host.path().display().to_string(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
    ];
    let web_id = env.run(&pod, web.clone()).await;
    let mut db = env.ctr("db", &["sleep", "1000"]);
    db.labels = kv(&[("app", "shop"), ("tier", "db")]);
    let db_id = env.run(&pod, db).await;
    let idle_id = env
        .create(&pod, env.ctr("idle", &["sleep", "1000"]))
        .await
        .unwrap();
    let done_id = env.run(&pod, env.ctr("done", &["true"])).await;
    env.wait_exited(&done_id, Duration::from_secs(20)).await;

    // ListContainers: id prefix, label selector, both.
    let list = |id: &str, labels: &[(&str, &str)]| {
        let filter = cri::ContainerFilter {
            id: id.into(),
            label_selector: kv(labels),
            ..Default::default()
        };
        let env = &env;
        async move {
            let mut ids: Vec<String> = env
                .rt()
                .await
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(list(&web_id[..12], &[]).await, [web_id.as_str()]);
    assert_eq!(list(&web_id, &[]).await, [web_id.as_str()]);
    assert_eq!(list(&db_id[..12], &[]).await, [db_id.as_str()]);
    assert_eq!(list(&"f".repeat(64), &[]).await, Vec::<String>::new());
    assert_eq!(
        list("", &[("app", "shop")]).await,
        sorted(vec![web_id.clone(), db_id.clone()])
    );
    assert_eq!(
        list("", &[("app", "shop"), ("tier", "web")]).await,
        [web_id.as_str()]
    );
    assert_eq!(list("", &[("tier", "nope")]).await, Vec::<String>::new());
    assert_eq!(
        list(&web_id[..12], &[("tier", "db")]).await,
        Vec::<String>::new()
    );
    assert_eq!(list("", &[]).await.len(), 4);

    // ContainerStatus: image, image_ref, labels, annotations and mounts as sent.
    let image = env
        .d
        .image()
        .await
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: env.image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    let st = env.status(&web_id).await;
    assert_eq!(st.id, web_id);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.image.as_ref().unwrap().image, env.image);
    assert!(
        image.repo_digests.contains(&st.image_ref),
        "{} not in {:?}",
        st.image_ref,
        image.repo_digests
    );
    assert_eq!(st.image_id, image.id);
    assert_eq!(st.labels, web.labels);
    assert_eq!(st.annotations, web.annotations);
    assert_eq!(st.mounts, web.mounts);
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);

    // Verbose: pid, sandbox, handler, the OCI spec and the monitor pid.
    let info = env.info(&web_id).await;
    let pid = info["pid"].as_u64().unwrap() as u32;
    assert_eq!(cmdline(pid).trim(), "sleep 1000", "pid {pid}");
    assert_eq!(info["sandboxID"], pod.0.as_str());
    assert_eq!(info["runtimeHandler"], crius_e2e::daemon::default_handler());
    let spec = &info["runtimeSpec"];
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["sleep", "1000"])
    );
    let data = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/data")
        .unwrap_or_else(|| panic!("no /data mount in {spec}"));
    assert_eq!(data["source"], host.path().display().to_string().as_str());
    assert!(
        spec["linux"]["cgroupsPath"]
            .as_str()
            .unwrap()
            .ends_with(&web_id),
        "{spec}"
    );
    let monitor = info["monitorPid"].as_u64().unwrap() as u32;
    let monitor_cmd = cmdline(monitor);
    assert!(
        monitor_cmd.contains("crius-conmon") && monitor_cmd.contains(&web_id),
        "monitor {monitor}: {monitor_cmd}"
    );
    assert_eq!(
        proc_stat(pid).unwrap().ppid,
        monitor,
        "the monitor reaps the init"
    );

    // Metrics: containers by state, and the create/start histograms.
    let metric = |body: &str, series: &str| crius_e2e::daemon::metric_value(body, series);
    let (_, body) = env.d.http_get("/metrics");
    assert_eq!(
        metric(&body, "crius_containers{state=\"running\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "crius_containers{state=\"created\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "crius_containers{state=\"exited\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "crius_container_create_seconds_count"),
        Some(4.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "crius_container_start_seconds_count"),
        Some(3.0),
        "{body}"
    );
    assert!(metric(&body, "crius_container_create_seconds_sum").unwrap() > 0.0);
    assert!(metric(&body, "crius_container_start_seconds_sum").unwrap() > 0.0);
    env.rt()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: db_id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let (_, body) = env.d.http_get("/metrics");
    assert_eq!(
        metric(&body, "crius_containers{state=\"running\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "crius_containers{state=\"exited\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        env.status(&idle_id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
}

/// Reads events from a `GetContainerEvents` stream until `done` holds for the last one, within
/// `timeout`; returns them all.
async fn events_until(
    stream: &mut tonic::Streaming<cri::ContainerEventResponse>,
    timeout: Duration,
    done: impl Fn(&cri::ContainerEventResponse) -> bool,
) -> Vec<cri::ContainerEventResponse> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let event = match next {
            Ok(Ok(Some(event))) => event,
            other => panic!(
                "no matching event ({other:?}); got {:?}",
                seen.iter().map(event_line).collect::<Vec<_>>()
            ),
        };
        let last = done(&event);
        seen.push(event);
        if last {
            return seen;
        }
    }
}

/// `(container id prefix, type)` of an event, for assertions and messages.
fn event_line(e: &cri::ContainerEventResponse) -> (String, i32) {
    (
        e.container_id.chars().take(12).collect(),
        e.container_event_type,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_follow_pods_and_containers_and_exits_are_pushed() {
    use cri::ContainerEventType::*;
    let mut env = Env::new().await;
    let mut events = env
        .rt()
        .await
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut second = env
        .rt()
        .await
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    let pod = env.pod("events").await;
    let pod_id = pod.0.clone();
    // Exits by itself: the STOPPED event must come without any status or list call.
    let id = env
        .run(&pod, env.ctr("short", &["sh", "-c", "sleep 1; exit 3"]))
        .await;
    let got = events_until(&mut events, Duration::from_secs(20), |e| {
        e.container_event_type == ContainerStoppedEvent as i32
    })
    .await;
    let lines: Vec<_> = got.iter().map(event_line).collect();
    let short = |s: &str| s.chars().take(12).collect::<String>();
    assert_eq!(
        lines,
        [
            (short(&pod_id), ContainerCreatedEvent as i32),
            (short(&pod_id), ContainerStartedEvent as i32),
            (short(&id), ContainerCreatedEvent as i32),
            (short(&id), ContainerStartedEvent as i32),
            (short(&id), ContainerStoppedEvent as i32),
        ]
    );
    for e in &got {
        let pod_status = e.pod_sandbox_status.as_ref().expect("pod status");
        assert_eq!(pod_status.id, pod_id);
        assert_eq!(
            pod_status.metadata.as_ref().unwrap().uid,
            pod.1.metadata.as_ref().unwrap().uid
        );
        assert!(e.created_at > 0);
    }
    assert!(got.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    let stopped = got.last().unwrap();
    let st = &stopped.containers_statuses;
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].id, id);
    assert_eq!(st[0].state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st[0].exit_code, 3);
    assert_eq!(st[0].reason, "Error");

    // Removing the container, then the pod.
    let rt = &mut env.rt().await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    let got = events_until(&mut events, Duration::from_secs(20), |e| {
        e.container_event_type == ContainerDeletedEvent as i32 && e.container_id == pod_id
    })
    .await;
    let lines: Vec<_> = got.iter().map(event_line).collect();
    assert_eq!(
        lines,
        [
            (short(&id), ContainerDeletedEvent as i32),
            (short(&pod_id), ContainerStoppedEvent as i32),
            (short(&pod_id), ContainerDeletedEvent as i32),
        ]
    );
    assert!(got[0].containers_statuses.is_empty());
    let gone = got[2]
        .pod_sandbox_status
        .as_ref()
        .expect("a deleted pod keeps its status");
    assert_eq!(gone.id, pod_id);
    assert_eq!(gone.state, cri::PodSandboxState::SandboxNotready as i32);

    // A second subscriber saw the same sequence.
    let all = events_until(&mut second, Duration::from_secs(5), |e| {
        e.container_event_type == ContainerDeletedEvent as i32 && e.container_id == pod_id
    })
    .await;
    assert_eq!(all.len(), 8);

    // Containers re-adopted after kill -9 still push their exit.
    let pod = env.pod("events-restart").await;
    let id = env
        .run(&pod, env.ctr("later", &["sh", "-c", "sleep 3; exit 7"]))
        .await;
    env.d.kill9();
    env.d.restart().await;
    let mut events = env
        .rt()
        .await
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let got = events_until(&mut events, Duration::from_secs(20), |e| {
        e.container_event_type == ContainerStoppedEvent as i32
    })
    .await;
    let last = got.last().unwrap();
    assert_eq!(last.container_id, id);
    assert_eq!(last.containers_statuses[0].exit_code, 7);
    env.rt()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();

    // Shutdown ends open streams: SIGTERM still exits quickly (the client's connection tasks
    // keep running on the other worker while this one waits).
    let (status, took) = tokio::task::block_in_place(|| env.d.terminate(Duration::from_secs(5)))
        .expect("crius exits");
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_millis(1500),
        "{took:?}: the drain waited for the stream"
    );
    // What was published before is still delivered, then the stream ends.
    let mut rest = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), events.message()).await {
            Ok(Ok(Some(_))) if rest < 10 => rest += 1,
            Ok(Ok(None)) | Ok(Err(_)) => break,
            other => panic!("the stream did not end: {other:?}"),
        }
    }
}

/// The `Seccomp:` mode of a one-shot container's process (0 = none, 2 = filter).
async fn seccomp_mode(
    env: &Env,
    pod: &(String, cri::PodSandboxConfig),
    name: &str,
    sc: cri::LinuxContainerSecurityContext,
) -> String {
    let mut cfg = env.ctr(name, &["grep", "^Seccomp:", "/proc/self/status"]);
    cfg.linux.as_mut().unwrap().security_context = Some(sc);
    let (st, out) = env.output_in(pod, cfg).await;
    assert_eq!(st.exit_code, 0, "{name}: {out}");
    out.trim().to_string()
}

/// Issue 11 item 4: (a) no seccomp field meant RuntimeDefault, where kubelet, containerd and
/// critest mean Unconfined (the old behaviour is `seccomp_use_default_when_empty`); (b) a
/// privileged container was confined by its Localhost profile.
#[tokio::test]
async fn seccomp_unset_is_unconfined_and_privileged_containers_ignore_every_profile() {
    let profiles = tempfile::tempdir().unwrap();
    // A harmless profile: where it applies, the process shows seccomp mode 2.
    let deny = profiles.path().join("deny-kexec.json");
    std::fs::write(
        &deny,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kexec_load"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let profile = |kind: cri::security_profile::ProfileType, path: &Path| cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: path.display().to_string(),
    };
    let runtime_default = profile(
        cri::security_profile::ProfileType::RuntimeDefault,
        Path::new(""),
    );

    let env = Env::new().await;
    let pod = env.pod("seccomp").await;
    let unset = seccomp_mode(&env, &pod, "unset", container_ns()).await;
    assert_eq!(unset, "Seccomp:\t0");
    let explicit = cri::LinuxContainerSecurityContext {
        seccomp: Some(runtime_default.clone()),
        ..container_ns()
    };
    assert_eq!(
        seccomp_mode(&env, &pod, "default", explicit).await,
        "Seccomp:\t2"
    );

    // A privileged pod: its privileged containers run without seccomp whatever they ask for,
    // even a Localhost profile that exists, or one that does not.
    let mut req = env.pod_config("seccomp-privileged");
    pods::linux(&mut req)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let config = req.config.clone().unwrap();
    let id = env
        .rt()
        .await
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let privileged_pod = (id, config);
    let missing = profiles.path().join("missing.json");
    for (name, seccomp) in [
        (
            "p-localhost",
            profile(cri::security_profile::ProfileType::Localhost, &deny),
        ),
        (
            "p-missing",
            profile(cri::security_profile::ProfileType::Localhost, &missing),
        ),
        ("p-default", runtime_default.clone()),
    ] {
        let sc = cri::LinuxContainerSecurityContext {
            privileged: true,
            seccomp: Some(seccomp),
            ..container_ns()
        };
        assert_eq!(
            seccomp_mode(&env, &privileged_pod, name, sc).await,
            "Seccomp:\t0",
            "{name}"
        );
    }
    // The same Localhost profile confines an unprivileged container.
    let sc = cri::LinuxContainerSecurityContext {
        seccomp: Some(profile(
            cri::security_profile::ProfileType::Localhost,
            &deny,
        )),
        ..container_ns()
    };
    assert_eq!(
        seccomp_mode(&env, &pod, "localhost", sc).await,
        "Seccomp:\t2"
    );
    drop(env);

    // The old behaviour, configured.
    let env = Env::with(Options {
        extra_config: "[runtime]\nseccomp_use_default_when_empty = true\n".into(),
        ..Options::default()
    })
    .await;
    let pod = env.pod("seccomp-default").await;
    assert_eq!(
        seccomp_mode(&env, &pod, "unset", container_ns()).await,
        "Seccomp:\t2"
    );
}
