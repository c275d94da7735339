//! Chaos: the daemon is killed (SIGKILL) at seeded random moments inside every mutating RPC,
//! restarted, and after each restart what it reports must match the node — a Running container
//! runs (the runtime says so, its pid lives), an Exited one does not, a Ready pod has its
//! network namespace — and the interrupted operation's retry succeeds or is answered
//! idempotently. At the end everything is removed and nothing may be left: no netns, mount,
//! veth, IP, cgroup, monitor, runtime state or record (issue 12).
//!
//! `make test` runs 12 kills; `make chaos` runs 60 or more (`CRIUS_CHAOS_KILLS`, seed
//! `CRIUS_CHAOS_SEED`). The delays before each kill are the fault injection itself, not waits
//! for a condition.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::cgroups::TestCgroup;
use crius_e2e::daemon::Options;
use crius_e2e::{leaks, pods};
use k8s_cri::v1 as cri;

/// xorshift64*: a seeded sequence, so a failing run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
enum Op {
    RunPod,
    CreateContainer,
    StartContainer,
    StopContainer,
    RemoveContainer,
    UpdateResources,
    ExecSync,
    StopPod,
    RemovePod,
}

const OPS: [Op; 9] = [
    Op::RunPod,
    Op::CreateContainer,
    Op::StartContainer,
    Op::StopContainer,
    Op::RemoveContainer,
    Op::UpdateResources,
    Op::ExecSync,
    Op::StopPod,
    Op::RemovePod,
];

struct Chaos {
    b: BusyboxDaemon,
    cg: TestCgroup,
    logs: tempfile::TempDir,
    /// Pod names handed out so far.
    pods: u32,
    /// Container names handed out so far.
    containers: u32,
}

impl Chaos {
    fn pod_req(&mut self) -> cri::RunPodSandboxRequest {
        self.pods += 1;
        let name = format!("chaos-{}", self.pods);
        let mut req = pods::pod(&name);
        req.runtime_handler = if self.pods.is_multiple_of(2) {
            "crun"
        } else {
            "runc"
        }
        .into();
        pods::config(&mut req).log_directory = self.logs.path().join(&name).display().to_string();
        pods::linux(&mut req).cgroup_parent = self.cg.child(&name);
        if self.pods.is_multiple_of(3) {
            pods::namespaces(&mut req).pid = cri::NamespaceMode::Pod as i32;
        }
        req
    }

    async fn rt(
        &self,
    ) -> cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        self.b.d.runtime().await
    }

    async fn pods(&self) -> Vec<cri::PodSandbox> {
        self.rt()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
    }

    async fn containers(&self) -> Vec<cri::Container> {
        self.rt()
            .await
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
    }

    fn container_req(&mut self, pod: &cri::PodSandbox) -> cri::CreateContainerRequest {
        self.containers += 1;
        let name = format!("c{}", self.containers);
        let mut sandbox = pods::pod(&pod.metadata.as_ref().unwrap().name);
        {
            let cfg = pods::config(&mut sandbox);
            cfg.metadata = pod.metadata.clone();
            cfg.log_directory = self
                .logs
                .path()
                .join(&pod.metadata.as_ref().unwrap().name)
                .display()
                .to_string();
        }
        cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cri::ContainerConfig {
                log_path: format!("{name}.log"),
                ..pods::container(&name, &self.b.image, &["sleep", "1000"])
            }),
            sandbox_config: sandbox.config,
        }
    }

    /// A ready pod, made if there is none.
    async fn ready_pod(&mut self) -> cri::PodSandbox {
        let ready: Vec<_> = self
            .pods()
            .await
            .into_iter()
            .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
            .collect();
        if let Some(p) = ready.into_iter().next() {
            return p;
        }
        let req = self.pod_req();
        let id = self
            .rt()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        self.pods().await.into_iter().find(|p| p.id == id).unwrap()
    }

    /// A container of a ready pod in `state`, made (and started) if there is none.
    async fn container_in(&mut self, state: cri::ContainerState) -> cri::Container {
        let pods = self.pods().await;
        let ready = |c: &cri::Container| {
            pods.iter().any(|p| {
                p.id == c.pod_sandbox_id && p.state == cri::PodSandboxState::SandboxReady as i32
            })
        };
        if let Some(c) = self
            .containers()
            .await
            .into_iter()
            .find(|c| c.state == state as i32 && ready(c))
        {
            return c;
        }
        let pod = self.ready_pod().await;
        let req = self.container_req(&pod);
        let id = self
            .rt()
            .await
            .create_container(req)
            .await
            .unwrap()
            .into_inner()
            .container_id;
        if state == cri::ContainerState::ContainerRunning {
            self.rt()
                .await
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap();
        }
        self.containers()
            .await
            .into_iter()
            .find(|c| c.id == id)
            .unwrap()
    }

    /// Prepares `op`, then runs it in a task; returns what its retry is.
    async fn start(
        &mut self,
        op: Op,
    ) -> (tokio::task::JoinHandle<Result<(), tonic::Status>>, Retry) {
        let mut rt = self.rt().await;
        match op {
            Op::RunPod => {
                let req = self.pod_req();
                let retry = Retry::RunPod(req.clone());
                (
                    tokio::spawn(async move { rt.run_pod_sandbox(req).await.map(|_| ()) }),
                    retry,
                )
            }
            Op::CreateContainer => {
                let pod = self.ready_pod().await;
                let req = self.container_req(&pod);
                let retry = Retry::Create(req.clone());
                (
                    tokio::spawn(async move { rt.create_container(req).await.map(|_| ()) }),
                    retry,
                )
            }
            Op::StartContainer => {
                let c = self
                    .container_in(cri::ContainerState::ContainerCreated)
                    .await;
                let id = c.id.clone();
                (
                    tokio::spawn(async move {
                        rt.start_container(cri::StartContainerRequest { container_id: id })
                            .await
                            .map(|_| ())
                    }),
                    Retry::Start(c.id),
                )
            }
            Op::StopContainer => {
                let c = self
                    .container_in(cri::ContainerState::ContainerRunning)
                    .await;
                let id = c.id.clone();
                (
                    tokio::spawn(async move {
                        rt.stop_container(cri::StopContainerRequest {
                            container_id: id,
                            timeout: 1,
                        })
                        .await
                        .map(|_| ())
                    }),
                    Retry::Stop(c.id),
                )
            }
            Op::RemoveContainer => {
                let c = self
                    .container_in(cri::ContainerState::ContainerRunning)
                    .await;
                let id = c.id.clone();
                (
                    tokio::spawn(async move {
                        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
                            .await
                            .map(|_| ())
                    }),
                    Retry::Remove(c.id),
                )
            }
            Op::UpdateResources => {
                let c = self
                    .container_in(cri::ContainerState::ContainerRunning)
                    .await;
                let id = c.id.clone();
                let resources = cri::LinuxContainerResources {
                    cpu_shares: 512,
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                };
                let r2 = resources.clone();
                (
                    tokio::spawn(async move {
                        rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                            container_id: id,
                            linux: Some(r2),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                    }),
                    Retry::Update(c.id, resources),
                )
            }
            Op::ExecSync => {
                let c = self
                    .container_in(cri::ContainerState::ContainerRunning)
                    .await;
                let id = c.id.clone();
                (
                    tokio::spawn(async move {
                        rt.exec_sync(cri::ExecSyncRequest {
                            container_id: id,
                            cmd: vec!["sh".into(), "-c".into(), "echo chaos; sleep 0.2".into()],
                            timeout: 10,
                        })
                        .await
                        .map(|_| ())
                    }),
                    Retry::Exec(c.id),
                )
            }
            Op::StopPod | Op::RemovePod => {
                // A pod with a running container in it.
                let c = self
                    .container_in(cri::ContainerState::ContainerRunning)
                    .await;
                let id = c.pod_sandbox_id.clone();
                let remove = matches!(op, Op::RemovePod);
                (
                    tokio::spawn(async move {
                        if remove {
                            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                                pod_sandbox_id: id,
                            })
                            .await
                            .map(|_| ())
                        } else {
                            rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                                .await
                                .map(|_| ())
                        }
                    }),
                    if remove {
                        Retry::RemovePod(c.pod_sandbox_id)
                    } else {
                        Retry::StopPod(c.pod_sandbox_id)
                    },
                )
            }
        }
    }

    /// Every status must match the node.
    async fn check_truth(&self, context: &str) {
        let wrong = leaks::truth_violations(&self.b.d).await;
        assert!(wrong.is_empty(), "{context}: {wrong:#?}");
    }
}

/// What an interrupted operation's retry is.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Retry {
    RunPod(cri::RunPodSandboxRequest),
    Create(cri::CreateContainerRequest),
    Start(String),
    Stop(String),
    Remove(String),
    Update(String, cri::LinuxContainerResources),
    Exec(String),
    StopPod(String),
    RemovePod(String),
}

impl Retry {
    /// Runs the retry: it succeeds, or gives the answer that says it was already done.
    async fn run(self, chaos: &Chaos) {
        let mut rt = chaos.rt().await;
        let what = format!("{self:?}").chars().take(120).collect::<String>();
        let result = match self {
            Retry::RunPod(req) => rt.run_pod_sandbox(req).await.map(|_| ()),
            Retry::Create(req) => match rt.create_container(req).await {
                // The first attempt's record survived: kubelet then uses (or removes) it.
                Err(e) if e.code() == tonic::Code::AlreadyExists => Ok(()),
                other => other.map(|_| ()),
            },
            Retry::Start(id) => match rt
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
            {
                // Already started (or it ran and exited): the start happened.
                Err(e)
                    if e.code() == tonic::Code::FailedPrecondition
                        && (e.message().contains("running") || e.message().contains("exited")) =>
                {
                    Ok(())
                }
                other => other.map(|_| ()),
            },
            Retry::Stop(id) => rt
                .stop_container(cri::StopContainerRequest {
                    container_id: id,
                    timeout: 1,
                })
                .await
                .map(|_| ()),
            Retry::Remove(id) => rt
                .remove_container(cri::RemoveContainerRequest { container_id: id })
                .await
                .map(|_| ()),
            Retry::Update(id, linux) => match rt
                .update_container_resources(cri::UpdateContainerResourcesRequest {
                    container_id: id,
                    linux: Some(linux),
                    ..Default::default()
                })
                .await
            {
                Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
                other => other.map(|_| ()),
            },
            Retry::Exec(id) => match rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["true".into()],
                    timeout: 10,
                })
                .await
            {
                Ok(r) => {
                    assert_eq!(r.into_inner().exit_code, 0);
                    Ok(())
                }
                Err(e)
                    if e.code() == tonic::Code::NotFound
                        || e.code() == tonic::Code::FailedPrecondition =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Retry::StopPod(id) => rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(|_| ()),
            Retry::RemovePod(id) => rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            panic!(
                "retry of {what} failed: {e:?}\n--- daemon log tail ---\n{}",
                tail(&chaos.b.d.log())
            );
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_kill_9_inside_every_mutating_rpc_recovers_to_the_truth() {
    let kills = env_u64("CRIUS_CHAOS_KILLS", 12);
    let seed = env_u64("CRIUS_CHAOS_SEED", 0x5eed_c0de);
    eprintln!("chaos: {kills} kills, seed {seed:#x} (CRIUS_CHAOS_KILLS, CRIUS_CHAOS_SEED)");
    let mut rng = Rng(seed | 1);
    let mut chaos = Chaos {
        b: BusyboxDaemon::start(Options::default()).await,
        cg: TestCgroup::new("chaos"),
        logs: tempfile::tempdir().unwrap(),
        pods: 0,
        containers: 0,
    };
    for k in 0..kills {
        // Every operation gets its turn; the moment of the kill is random.
        let op = OPS[(k as usize + rng.below(2) as usize) % OPS.len()];
        let delay = Duration::from_millis(rng.below(120));
        let context = format!("kill {k} in {op:?} after {delay:?} (seed {seed:#x})");
        let (task, retry) = chaos.start(op).await;
        tokio::time::sleep(delay).await;
        chaos.b.d.kill9();
        let _ = task.await;
        chaos.b.d.restart().await;
        chaos.check_truth(&context).await;
        retry.run(&chaos).await;
        chaos
            .check_truth(&format!("{context}, after the retry"))
            .await;
        // Keep the node small: at most 4 pods.
        let pods = chaos.pods().await;
        if pods.len() > 4 {
            let id = pods[0].id.clone();
            chaos
                .rt()
                .await
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .unwrap();
        }
    }
    // Everything removed: nothing may be left.
    for p in chaos.pods().await {
        let mut rt = chaos.rt().await;
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap();
    }
    let left = leaks::leftovers(&chaos.b.d, &chaos.b.net, Some(&chaos.cg));
    assert!(
        left.is_empty(),
        "left behind after {kills} kills (seed {seed:#x}): {left:#?}"
    );
}
