//! Concurrency stress: 20 workers run mixed operations on shared pods and images for 60 s
//! (`CRIUS_STRESS_SECS`): create, start, update, stop, remove, exec, pull and remove image.
//! Only the answers that say "not any more" or "not now" (NotFound, FailedPrecondition,
//! AlreadyExists) are expected besides success; at the end every status matches the node, no
//! image a container was made from has been removed, and removing everything leaves nothing
//! (issue 12).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::cgroups::TestCgroup;
use crius_e2e::daemon::Options;
use crius_e2e::{leaks, pods, registry};
use k8s_cri::v1 as cri;

struct Shared {
    pods: Vec<(String, cri::PodSandboxConfig)>,
    images: Vec<String>,
    next: AtomicU64,
    ops: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

fn expected(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::NotFound | tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists
    )
}

async fn worker(d: Arc<BusyboxDaemon>, shared: Arc<Shared>, seed: u64, until: Instant) {
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut rt = d.d.runtime().await;
    let mut img = d.d.image().await;
    while Instant::now() < until {
        let containers = rt
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        let pick = |state: cri::ContainerState, r: u64| {
            let of: Vec<_> = containers
                .iter()
                .filter(|c| c.state == state as i32)
                .collect();
            (!of.is_empty()).then(|| of[(r as usize) % of.len()].id.clone())
        };
        let r = rnd(1 << 20);
        let op = rnd(8);
        let result: Result<(), tonic::Status> = match op {
            0 => {
                let n = shared.next.fetch_add(1, Ordering::Relaxed);
                let pod = &shared.pods[(r as usize) % shared.pods.len()];
                let image = shared.images[(r as usize / 7) % shared.images.len()].clone();
                let name = format!("s{n}");
                rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.0.clone(),
                    config: Some(cri::ContainerConfig {
                        log_path: format!("{name}.log"),
                        ..pods::container(&name, &image, &["sleep", "1000"])
                    }),
                    sandbox_config: Some(pod.1.clone()),
                })
                .await
                .map(|_| ())
            }
            1 => match pick(cri::ContainerState::ContainerCreated, r) {
                Some(id) => rt
                    .start_container(cri::StartContainerRequest { container_id: id })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            2 => match pick(cri::ContainerState::ContainerRunning, r) {
                Some(id) => rt
                    .update_container_resources(cri::UpdateContainerResourcesRequest {
                        container_id: id,
                        linux: Some(cri::LinuxContainerResources {
                            cpu_shares: 256 + (r % 512) as i64,
                            memory_limit_in_bytes: (64 + (r % 64) as i64) << 20,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            3 => match pick(cri::ContainerState::ContainerRunning, r) {
                Some(id) => rt
                    .stop_container(cri::StopContainerRequest {
                        container_id: id,
                        timeout: 0,
                    })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            4 => match pick(cri::ContainerState::ContainerExited, r)
                .or_else(|| pick(cri::ContainerState::ContainerCreated, r))
            {
                Some(id) => rt
                    .remove_container(cri::RemoveContainerRequest { container_id: id })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            5 => match pick(cri::ContainerState::ContainerRunning, r) {
                Some(id) => match rt
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id,
                        cmd: vec!["echo".into(), "hi".into()],
                        timeout: 20,
                    })
                    .await
                {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        // A container stopped under the exec ends it with a signal.
                        if resp.exit_code == 0 {
                            assert_eq!(resp.stdout, b"hi\n");
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
            6 => {
                let image = shared.images[(r as usize) % shared.images.len()].clone();
                img.pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
            _ => {
                let image = shared.images[(r as usize) % shared.images.len()].clone();
                img.remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                })
                .await
                .map(|_| ())
            }
        };
        shared.ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            if !expected(e.code()) {
                shared.unexpected.lock().unwrap().push(format!(
                    "op {op}: {:?} {}",
                    e.code(),
                    e.message()
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_workers_of_mixed_operations_keep_every_invariant() {
    let secs = std::env::var("CRIUS_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    let b = Arc::new(BusyboxDaemon::start(Options::default()).await);
    let logs = tempfile::tempdir().unwrap();
    let cg = TestCgroup::new("stress");
    let mut pods = Vec::new();
    for (i, handler) in ["runc", "crun", "runc"].iter().enumerate() {
        let name = format!("stress-{i}");
        let mut req = pods::pod(&name);
        req.runtime_handler = handler.to_string();
        pods::config(&mut req).log_directory = logs.path().join(&name).display().to_string();
        pods::linux(&mut req).cgroup_parent = cg.child(&name);
        let config = req.config.clone().unwrap();
        let id =
            b.d.runtime()
                .await
                .run_pod_sandbox(req)
                .await
                .unwrap()
                .into_inner()
                .pod_sandbox_id;
        pods.push((id, config));
    }
    let shared = Arc::new(Shared {
        pods,
        images: vec![b.image.clone(), registry::shared().layered_ref()],
        next: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        unexpected: Mutex::new(Vec::new()),
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..20u64)
        .map(|i| {
            tokio::spawn(worker(
                b.clone(),
                shared.clone(),
                0x9e37_79b9 * (i + 1),
                until,
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let unexpected = shared.unexpected.lock().unwrap().clone();
    eprintln!(
        "stress: {} operations in {secs} s by 20 workers",
        shared.ops.load(Ordering::Relaxed)
    );
    assert!(
        unexpected.is_empty(),
        "unexpected answers: {unexpected:#?}\n--- daemon log (warnings) ---\n{}",
        b.d.log()
            .lines()
            .filter(|l| l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("image removed")
                || l.contains("layer flushed")
                || l.contains("trash"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Every status is true; every container's image is still there.
    let wrong = leaks::truth_violations(&b.d).await;
    assert!(wrong.is_empty(), "{wrong:#?}");
    let mut rt = b.d.runtime().await;
    let mut img = b.d.image().await;
    for c in rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
    {
        let st = img
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: c.image_id.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            st.image.is_some(),
            "container {} lost its image {}",
            c.id,
            c.image_id
        );
    }
    for (id, _) in &shared.pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let left = leaks::leftovers(&b.d, &b.net, Some(&cg));
    assert!(left.is_empty(), "left behind: {left:#?}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 1 000 pods (`CRIUS_CHURN_PODS`), 10 at a time, each with a started container, stopped and
/// removed: nothing is left, and the daemon's RSS at the end is within 20 % of what it was
/// after the first 100 pods. Run by `make chaos` (ignored in `make test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with make chaos"]
async fn a_thousand_pod_churn_leaks_nothing_and_memory_settles() {
    let total: u64 = std::env::var("CRIUS_CHURN_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let b = Arc::new(BusyboxDaemon::start(Options::default()).await);
    let logs = Arc::new(tempfile::tempdir().unwrap());
    let cg = Arc::new(TestCgroup::new("churn"));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let rss_100 = Arc::new(AtomicU64::new(0));
    let pid = b.d.pid().unwrap();
    let started = Instant::now();
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let (b, logs, cg, next, done, rss_100) = (
                b.clone(),
                logs.clone(),
                cg.clone(),
                next.clone(),
                done.clone(),
                rss_100.clone(),
            );
            tokio::spawn(async move {
                let mut rt = b.d.runtime().await;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    let name = format!("churn-{n}");
                    let mut req = pods::pod(&name);
                    req.runtime_handler = if n.is_multiple_of(2) { "runc" } else { "crun" }.into();
                    pods::config(&mut req).log_directory =
                        logs.path().join(&name).display().to_string();
                    pods::linux(&mut req).cgroup_parent = cg.child(&name);
                    let config = req.config.clone().unwrap();
                    let pod = rt
                        .run_pod_sandbox(req)
                        .await
                        .unwrap()
                        .into_inner()
                        .pod_sandbox_id;
                    let id = rt
                        .create_container(cri::CreateContainerRequest {
                            pod_sandbox_id: pod.clone(),
                            config: Some(cri::ContainerConfig {
                                log_path: "c.log".into(),
                                ..pods::container("c", &b.image, &["sleep", "1000"])
                            }),
                            sandbox_config: Some(config),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .container_id;
                    rt.start_container(cri::StartContainerRequest { container_id: id })
                        .await
                        .unwrap();
                    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await
                    .unwrap();
                    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    })
                    .await
                    .unwrap();
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == 100.min(total) {
                        rss_100.store(rss_kib(pid), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed();
    let rss_end = rss_kib(pid);
    let rss_100 = rss_100.load(Ordering::Relaxed);
    eprintln!(
        "churn: {total} pods in {took:?} ({:.1} pods/s); daemon RSS {rss_100} KiB after 100 pods, {rss_end} KiB at the end",
        total as f64 / took.as_secs_f64()
    );
    let left = leaks::leftovers(&b.d, &b.net, Some(&cg));
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        rss_end * 10 <= rss_100 * 12,
        "daemon RSS grew from {rss_100} KiB (100 pods) to {rss_end} KiB ({total} pods)"
    );
}
