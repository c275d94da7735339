//! The CRI workloads, identical for every endpoint: only CRI v1 calls, nothing crius-specific,
//! so containerd and CRI-O run them too.
//!
//! Sequential workloads are interleaved round-robin: iteration `i` runs on every endpoint
//! before iteration `i + 1` runs on any, so machine noise hits all endpoints alike. The
//! parallel churn runs one endpoint at a time (it loads the whole machine). Every pod the
//! bench creates carries the label `crius-bench=<pid>`; after each workload those pods are
//! stopped and removed, whatever happened.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::report::{Report, Row};

/// The workloads, in the order they run (`images` last: it removes the image it pulls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// RunPodSandbox, StopPodSandbox, RemovePodSandbox.
    Pods,
    /// CreateContainer, StartContainer, StopContainer, RemoveContainer in one pod.
    Containers,
    /// ExecSync round trip into one running container.
    Exec,
    /// ListContainerStats of a pod with `--stats-containers` running containers.
    Stats,
    /// `--parallel` workers running pod + container lifecycles: pods per second.
    Churn,
    /// PullImage, ImageStatus, ListImages, RemoveImage of `--pull-image`.
    Images,
}

pub const ALL: [Workload; 6] = [
    Workload::Pods,
    Workload::Containers,
    Workload::Exec,
    Workload::Stats,
    Workload::Churn,
    Workload::Images,
];

/// What the workloads run; shared by `cri` and `compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkloadArgs {
    /// Image for the containers (pulled on every endpoint before measuring)
    #[arg(long)]
    pub image: Option<String>,
    /// Image for the `images` workload (pulled and removed each iteration); default: --image
    #[arg(long)]
    pub pull_image: Option<String>,
    /// The containers' command, split on whitespace; it must keep running
    #[arg(long, default_value = "sleep 3600")]
    pub command: String,
    /// Command for ExecSync, split on whitespace; must exit 0
    #[arg(long, default_value = "true")]
    pub exec_command: String,
    /// RunPodSandboxRequest.runtime_handler (empty: the endpoint's default)
    #[arg(long, default_value = "")]
    pub runtime_handler: String,
    /// The pods' linux.cgroup_parent (empty: the endpoint's default); cgroupfs path or systemd slice
    #[arg(long, default_value = "")]
    pub cgroup_parent: String,
    /// Iterations of each sequential workload, per endpoint
    #[arg(short = 'n', long, default_value_t = 20)]
    pub iterations: usize,
    /// Running containers listed by the `stats` workload
    #[arg(long, default_value_t = 100)]
    pub stats_containers: usize,
    /// Workers of the `churn` workload
    #[arg(long, default_value_t = 10)]
    pub parallel: usize,
    /// Pod + container lifecycles of the `churn` workload, per endpoint
    #[arg(long, default_value_t = 100)]
    pub churn: usize,
    /// StopContainer timeout in seconds
    #[arg(long, default_value_t = 0)]
    pub stop_timeout: i64,
    /// Workloads to run, comma-separated (default: all)
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
}

/// One CRI endpoint, connected.
#[derive(Clone)]
pub struct Target {
    /// Column name: the runtime's `Version.runtime_name` (made unique).
    pub name: String,
    pub endpoint: String,
    pub version: String,
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

impl Target {
    /// Connects to `unix:///path` (or a bare path) and asks for its version.
    pub async fn connect(endpoint: &str, taken: &[Target]) -> Result<Target> {
        let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
        if path.is_empty() || endpoint.contains("://") && !endpoint.starts_with("unix://") {
            bail!("endpoint {endpoint:?}: only unix:///path is supported");
        }
        let channel = crius_e2e::daemon::unix_channel(path.into())
            .await
            .with_context(|| format!("connect {endpoint}"))?;
        let mut rt = RuntimeServiceClient::new(channel.clone());
        let v = rt
            .version(cri::VersionRequest::default())
            .await
            .with_context(|| format!("Version on {endpoint}"))?
            .into_inner();
        // A runtime may answer Version and Status while it restores state, and Unavailable
        // to the rest (crius, containerd).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rt
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
            {
                Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => bail!("ListPodSandbox on {endpoint}: {}", e.message()),
                Ok(_) => break,
            }
        }
        let mut name = v.runtime_name.clone();
        let mut k = 2;
        while taken.iter().any(|t| t.name == name) {
            name = format!("{}#{k}", v.runtime_name);
            k += 1;
        }
        Ok(Target {
            name,
            endpoint: endpoint.to_owned(),
            version: format!("{} {}", v.runtime_name, v.runtime_version),
            rt,
            img: ImageServiceClient::new(channel),
        })
    }
}

/// The run's parameters after defaults.
#[derive(Clone)]
pub struct Plan {
    pub image: String,
    pub pull_image: String,
    pub command: Vec<String>,
    pub exec_command: Vec<String>,
    pub runtime_handler: String,
    pub cgroup_parent: String,
    pub iterations: usize,
    pub stats_containers: usize,
    pub parallel: usize,
    pub churn: usize,
    pub stop_timeout: i64,
    pub workloads: Vec<Workload>,
    /// `crius-bench=<pid>`: marks and finds this run's pods.
    pub label: String,
}

impl Plan {
    pub fn new(args: &WorkloadArgs) -> Result<Plan> {
        let Some(image) = args.image.clone() else {
            bail!("--image is required (the containers' image, e.g. docker.io/library/busybox:latest)");
        };
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        if args.iterations == 0 || args.parallel == 0 {
            bail!("--iterations and --parallel must be at least 1");
        }
        let workloads = if args.workloads.is_empty() {
            ALL.to_vec()
        } else {
            // Run order is fixed (images last), whatever the order on the command line.
            ALL.iter()
                .copied()
                .filter(|w| args.workloads.contains(w))
                .collect()
        };
        Ok(Plan {
            pull_image: args.pull_image.clone().unwrap_or_else(|| image.clone()),
            image,
            command: words(&args.command),
            exec_command: words(&args.exec_command),
            runtime_handler: args.runtime_handler.clone(),
            cgroup_parent: args.cgroup_parent.clone(),
            iterations: args.iterations,
            stats_containers: args.stats_containers,
            parallel: args.parallel,
            churn: args.churn,
            stop_timeout: args.stop_timeout,
            workloads,
            label: std::process::id().to_string(),
        })
    }

    fn pod(&self, name: &str) -> cri::RunPodSandboxRequest {
        let name = format!("bench-{}-{name}", self.label);
        let mut req = crius_e2e::pods::pod(&name);
        req.runtime_handler = self.runtime_handler.clone();
        let config = crius_e2e::pods::config(&mut req);
        config
            .metadata
            .get_or_insert_with(Default::default)
            .namespace = "crius-bench".into();
        config
            .labels
            .insert("crius-bench".into(), self.label.clone());
        crius_e2e::pods::linux(&mut req).cgroup_parent = self.cgroup_parent.clone();
        req
    }

    fn container(&self, name: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(spec(&self.image)),
            command: self.command.clone(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// A pod (and containers) a workload set up on one target.
#[derive(Default)]
struct Setup {
    pod: String,
    config: Option<cri::PodSandboxConfig>,
    containers: Vec<String>,
}

type Samples = Vec<(&'static str, Duration)>;

/// Runs `plan` on `targets`, adding rows and notes to `report`. Returns false if anything failed.
pub async fn run(plan: &Plan, targets: &mut [Target], report: &mut Report) -> bool {
    let mut ok = true;
    report.parameters = vec![
        ("image".into(), plan.image.clone()),
        ("pull_image".into(), plan.pull_image.clone()),
        ("command".into(), plan.command.join(" ")),
        ("runtime_handler".into(), plan.runtime_handler.clone()),
        ("cgroup_parent".into(), plan.cgroup_parent.clone()),
        ("iterations".into(), plan.iterations.to_string()),
        ("stats_containers".into(), plan.stats_containers.to_string()),
        ("parallel".into(), plan.parallel.to_string()),
        ("churn".into(), plan.churn.to_string()),
        ("stop_timeout".into(), plan.stop_timeout.to_string()),
    ];
    for t in targets.iter() {
        report.subject(&t.name, &format!("{} at {}", t.version, t.endpoint));
    }
    for t in targets.iter_mut() {
        if let Err(e) = pull(t, &plan.image).await {
            report.note(format!("{}: pull {}: {e:#}", t.name, plan.image));
            ok = false;
        }
    }
    for &w in &plan.workloads {
        eprintln!("crius-bench: workload {w:?}");
        if w == Workload::Churn {
            for t in targets.iter() {
                match churn(plan, t).await {
                    Ok((lifecycles, wall)) => report.push(Row::new(
                        &format!("churn, {} workers: pod+container lifecycle", plan.parallel),
                        &t.name,
                        lifecycles,
                        Some(wall),
                    )),
                    Err(e) => {
                        report.note(format!("{}: churn: {e:#}", t.name));
                        ok = false;
                    }
                }
                sweep(plan, t).await;
            }
            continue;
        }
        let mut setups = Vec::new();
        for t in targets.iter_mut() {
            match setup(plan, w, t).await {
                Ok(s) => setups.push(Some(s)),
                Err(e) => {
                    report.note(format!("{}: {w:?} setup: {e:#}", t.name));
                    ok = false;
                    setups.push(None);
                }
            }
        }
        let mut samples: Vec<(String, String, Vec<Duration>)> = Vec::new();
        for i in 0..plan.iterations {
            for (t, s) in targets.iter_mut().zip(setups.iter_mut()) {
                let Some(setup) = s else { continue };
                match iteration(plan, w, t, setup, i).await {
                    Ok(got) => {
                        for (op, d) in got {
                            let op = match w {
                                Workload::Stats => {
                                    format!("{op} ({} containers)", plan.stats_containers)
                                }
                                _ => op.to_owned(),
                            };
                            match samples
                                .iter_mut()
                                .find(|(o, n, _)| *o == op && *n == t.name)
                            {
                                Some((_, _, v)) => v.push(d),
                                None => samples.push((op, t.name.clone(), vec![d])),
                            }
                        }
                    }
                    Err(e) => {
                        report.note(format!("{}: {w:?} iteration {i}: {e:#}", t.name));
                        ok = false;
                        *s = None;
                    }
                }
            }
        }
        // Operation order first, then subject order, so the table reads row by row.
        let mut ops: Vec<String> = Vec::new();
        for (op, _, _) in &samples {
            if !ops.contains(op) {
                ops.push(op.clone());
            }
        }
        for op in ops {
            for (o, n, v) in &samples {
                if *o == op {
                    report.push(Row::new(o, n, v.clone(), None));
                }
            }
        }
        for t in targets.iter() {
            sweep(plan, t).await;
        }
    }
    ok
}

pub async fn pull(t: &mut Target, image: &str) -> Result<String> {
    Ok(t.img
        .pull_image(cri::PullImageRequest {
            image: Some(spec(image)),
            ..Default::default()
        })
        .await?
        .into_inner()
        .image_ref)
}

async fn setup(plan: &Plan, w: Workload, t: &mut Target) -> Result<Setup> {
    let containers = match w {
        Workload::Pods | Workload::Images | Workload::Churn => return Ok(Setup::default()),
        Workload::Containers => 0,
        Workload::Exec => 1,
        Workload::Stats => plan.stats_containers,
    };
    let req = plan.pod(&format!("{w:?}").to_lowercase());
    let config = req.config.clone();
    let pod =
        t.rt.run_pod_sandbox(req)
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
    let mut s = Setup {
        pod,
        config,
        containers: Vec::new(),
    };
    for i in 0..containers {
        let id = create_start(plan, t, &s, &format!("c{i}")).await?.0;
        s.containers.push(id);
    }
    Ok(s)
}

/// CreateContainer + StartContainer: (id, create time, start time).
async fn create_start(
    plan: &Plan,
    t: &mut Target,
    s: &Setup,
    name: &str,
) -> Result<(String, Duration, Duration)> {
    let t0 = Instant::now();
    let id =
        t.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: s.pod.clone(),
            config: Some(plan.container(name)),
            sandbox_config: s.config.clone(),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let created = t0.elapsed();
    let t1 = Instant::now();
    t.rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .with_context(|| format!("StartContainer {id}"))?;
    Ok((id, created, t1.elapsed()))
}

async fn iteration(
    plan: &Plan,
    w: Workload,
    t: &mut Target,
    s: &mut Setup,
    i: usize,
) -> Result<Samples> {
    let mut out: Samples = Vec::new();
    match w {
        Workload::Pods => {
            let req = plan.pod(&format!("pod{i}"));
            let t0 = Instant::now();
            let id =
                t.rt.run_pod_sandbox(req)
                    .await
                    .context("RunPodSandbox")?
                    .into_inner()
                    .pod_sandbox_id;
            out.push(("RunPodSandbox", t0.elapsed()));
            let t0 = Instant::now();
            t.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .context("StopPodSandbox")?;
            out.push(("StopPodSandbox", t0.elapsed()));
            let t0 = Instant::now();
            t.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .context("RemovePodSandbox")?;
            out.push(("RemovePodSandbox", t0.elapsed()));
        }
        Workload::Containers => {
            let (id, created, started) = create_start(plan, t, s, &format!("c{i}")).await?;
            out.push(("CreateContainer", created));
            out.push(("StartContainer", started));
            out.push(("CreateContainer+StartContainer", created + started));
            let t0 = Instant::now();
            t.rt.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: plan.stop_timeout,
            })
            .await
            .context("StopContainer")?;
            out.push(("StopContainer", t0.elapsed()));
            let t0 = Instant::now();
            t.rt.remove_container(cri::RemoveContainerRequest { container_id: id })
                .await
                .context("RemoveContainer")?;
            out.push(("RemoveContainer", t0.elapsed()));
        }
        Workload::Exec => {
            let t0 = Instant::now();
            let r =
                t.rt.exec_sync(cri::ExecSyncRequest {
                    container_id: s.containers[0].clone(),
                    cmd: plan.exec_command.clone(),
                    timeout: 10,
                })
                .await
                .context("ExecSync")?
                .into_inner();
            out.push(("ExecSync", t0.elapsed()));
            if r.exit_code != 0 {
                bail!(
                    "ExecSync {:?} exited {}: {}",
                    plan.exec_command,
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr)
                );
            }
        }
        Workload::Stats => {
            let t0 = Instant::now();
            let r =
                t.rt.list_container_stats(cri::ListContainerStatsRequest {
                    filter: Some(cri::ContainerStatsFilter {
                        pod_sandbox_id: s.pod.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .context("ListContainerStats")?
                .into_inner();
            out.push(("ListContainerStats", t0.elapsed()));
            if r.stats.len() != s.containers.len() {
                bail!(
                    "ListContainerStats returned {} stats for {} containers",
                    r.stats.len(),
                    s.containers.len()
                );
            }
        }
        Workload::Images => {
            let t0 = Instant::now();
            let image_ref = pull(t, &plan.pull_image).await.context("PullImage")?;
            out.push(("PullImage", t0.elapsed()));
            let t0 = Instant::now();
            let st = t
                .img
                .image_status(cri::ImageStatusRequest {
                    image: Some(spec(&plan.pull_image)),
                    verbose: false,
                })
                .await
                .context("ImageStatus")?
                .into_inner();
            out.push(("ImageStatus", t0.elapsed()));
            if st.image.is_none() {
                bail!("ImageStatus of {} after a pull: not found", plan.pull_image);
            }
            let t0 = Instant::now();
            t.img
                .list_images(cri::ListImagesRequest::default())
                .await
                .context("ListImages")?;
            out.push(("ListImages", t0.elapsed()));
            let t0 = Instant::now();
            t.img
                .remove_image(cri::RemoveImageRequest {
                    image: Some(spec(&image_ref)),
                })
                .await
                .context("RemoveImage")?;
            out.push(("RemoveImage", t0.elapsed()));
        }
        Workload::Churn => unreachable!("churn runs in parallel, not by iteration"),
    }
    Ok(out)
}

/// `plan.churn` pod + container lifecycles on `plan.parallel` workers: their durations and
/// the wall time.
async fn churn(plan: &Plan, t: &Target) -> Result<(Vec<Duration>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let plan = Arc::new(plan.clone());
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.parallel {
        let next = next.clone();
        let mut t = t.clone();
        let plan = plan.clone();
        let total = plan.churn;
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return Ok::<_, anyhow::Error>(done);
                }
                let t0 = Instant::now();
                lifecycle(&plan, &mut t, i).await?;
                done.push(t0.elapsed());
            }
        });
    }
    let mut all = Vec::new();
    let mut first_error = None;
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(v)) => all.extend(v),
            Ok(Err(e)) => {
                // Stop handing out work; the others finish their current lifecycle.
                next.store(usize::MAX / 2, Ordering::SeqCst);
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("worker: {e}"));
            }
        }
    }
    let wall = started.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok((all, wall)),
    }
}

/// One pod + container lifecycle (the churn's unit), outside any measurement: `compare` reads
/// the daemons' RSS after it, once the code of every lifecycle step has run.
pub async fn warm_up(plan: &Plan, t: &mut Target) -> Result<()> {
    lifecycle(plan, t, usize::MAX).await
}

async fn lifecycle(plan: &Plan, t: &mut Target, i: usize) -> Result<()> {
    let req = plan.pod(&format!("churn{i}"));
    let config = req.config.clone();
    let pod =
        t.rt.run_pod_sandbox(req)
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
    let s = Setup {
        pod: pod.clone(),
        config,
        containers: Vec::new(),
    };
    let id = create_start(plan, t, &s, "c").await?.0;
    t.rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: plan.stop_timeout,
    })
    .await
    .context("StopContainer")?;
    t.rt.remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .context("RemoveContainer")?;
    t.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    t.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .context("RemovePodSandbox")?;
    Ok(())
}

/// The OCI bundle crius wrote for a created (not started) container of the plan's image and
/// command, from its verbose ContainerStatus; the pod and container stay for the floor to use
/// the pod's namespaces, until [`sweep`]. crius-only (the `info` layout is crius's).
pub async fn crius_bundle(plan: &Plan, t: &mut Target) -> Result<std::path::PathBuf> {
    let req = plan.pod("floor");
    let config = req.config.clone();
    let pod =
        t.rt.run_pod_sandbox(req)
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
    let id =
        t.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(plan.container("floor")),
            sandbox_config: config,
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let st =
        t.rt.container_status(cri::ContainerStatusRequest {
            container_id: id,
            verbose: true,
        })
        .await
        .context("ContainerStatus")?
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(st.info.get("info").map(String::as_str).unwrap_or("{}"))?;
    match info["bundle"].as_str() {
        Some(b) => Ok(b.into()),
        None => bail!("no bundle in the verbose ContainerStatus of {}", t.name),
    }
}

/// Stops and removes every pod of this run on `t` (best effort; failures are printed).
pub async fn sweep(plan: &Plan, t: &Target) {
    let mut rt = t.rt.clone();
    let Ok(pods) = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: [("crius-bench".to_owned(), plan.label.clone())].into(),
                ..Default::default()
            }),
        })
        .await
    else {
        eprintln!(
            "crius-bench: {}: ListPodSandbox failed; pods may be left",
            t.name
        );
        return;
    };
    for p in pods.into_inner().items {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await;
        if let Err(e) = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
        {
            eprintln!(
                "crius-bench: {}: remove pod {}: {}",
                t.name,
                p.id,
                e.message()
            );
        }
    }
}
