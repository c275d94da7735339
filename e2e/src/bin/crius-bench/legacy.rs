//! The closing-note figures of issues 1, 4 and 5, each a subcommand: figures for crius started
//! by the bench, with containerd's where it applies. They print; they assert nothing; they
//! panic (exit code 1) when something fails.
//!
//! - `startup`: start-to-socket-ready (spawn until the first `Version` answers), median of 10;
//!   daemon RSS after start, after 10 000 and after 20 000 `Version` calls; `Version`
//!   round-trip latency p50/p99 over the unix socket; crius, then containerd;
//! - `pull`: a cold pull of a generated ~100 MB, 5-layer gzip image from the loopback registry:
//!   MB/s and peak RSS growth, against `skopeo copy` + `umoci raw unpack` of the same image;
//! - `cni`: RunPodSandbox and StopPodSandbox+RemovePodSandbox p50/p99 over 100 pods (bridge +
//!   host-local + loopback on a private bridge), against the bare CNI ADD/DEL of the same
//!   conflist run directly on a pinned netns (the floor);
//! - `containers`: 50 containers with crius against bare runc of the same bundle, the monitor's
//!   RSS against Debian's conmon, and the same containers in a user-namespaced pod.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Failing loudly is the point here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_e2e::daemon::{crius_bin, free_port};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::VersionRequest;
use tonic::transport::Channel;

const CALLS: usize = 10_000;
const STARTS: usize = 10;

async fn connect(socket: &Path) -> Option<RuntimeServiceClient<Channel>> {
    crius_e2e::daemon::unix_channel(socket.to_path_buf())
        .await
        .ok()
        .map(RuntimeServiceClient::new)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Subject {
    name: &'static str,
    /// Writes config into the dir and returns (command, socket).
    prepare: fn(&Path) -> (Command, PathBuf),
}

fn crius(dir: &Path) -> (Command, PathBuf) {
    let socket = dir.join("crius.sock");
    let config = dir.join("crius.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = {socket:?}\n[state]\nroot = {:?}\nrunroot = {:?}\n[network]\nconf_dir = {:?}\n\
             [metrics]\naddress = \"127.0.0.1:{}\"\n[log]\nlevel = \"warn\"\n",
            dir.join("root"),
            dir.join("run"),
            dir.join("net.d"),
            free_port()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(crius_bin());
    cmd.arg("--config")
        .arg(&config)
        .arg("--config-dir")
        .arg(dir.join("crius.d"));
    (cmd, socket)
}

fn containerd(dir: &Path) -> (Command, PathBuf) {
    let socket = dir.join("containerd.sock");
    let config = dir.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\naddress = {socket:?}\n[ttrpc]\naddress = {:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\nconf_dir = {:?}\n",
            dir.join("root"),
            dir.join("state"),
            dir.join("ttrpc.sock"),
            dir.join("net.d"),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(&config)
        .arg("--log-level")
        .arg("warn");
    (cmd, socket)
}

struct Running {
    child: Child,
    _dir: tempfile::TempDir,
    started: Duration,
    client: RuntimeServiceClient<Channel>,
}

async fn start(subject: &Subject) -> Option<Running> {
    let dir = tempfile::tempdir().unwrap();
    let (mut cmd, socket) = (subject.prepare)(dir.path());
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = t0 + Duration::from_secs(20);
    loop {
        if let Some(mut c) = connect(&socket).await {
            if c.version(VersionRequest::default()).await.is_ok() {
                return Some(Running {
                    child,
                    _dir: dir,
                    started: t0.elapsed(),
                    client: c,
                });
            }
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn bench(subject: &Subject) {
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let Some(mut r) = start(subject).await else {
            println!("{:<11} could not be started; skipped", subject.name);
            return;
        };
        starts.push(r.started);
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    starts.sort();

    let mut r = start(subject).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = r.child.id();
    let rss_start = rss_kib(pid);
    let mut lat = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        r.client.version(VersionRequest::default()).await.unwrap();
        lat.push(t.elapsed());
    }
    let rss_10k = rss_kib(pid);
    for _ in 0..CALLS {
        r.client.version(VersionRequest::default()).await.unwrap();
    }
    let rss_20k = rss_kib(pid);
    lat.sort();
    println!(
        "{:<11} start→ready median {:>9}  | RSS start {:>6} KiB, after 10k {:>6} KiB, after 20k {:>6} KiB \
         | Version p50 {:>6} p99 {:>6}",
        subject.name,
        ms(percentile(&starts, 0.5)),
        rss_start,
        rss_10k,
        rss_20k,
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99)),
    );
    let _ = r.child.kill();
    let _ = r.child.wait();
}

/// Deterministic bytes: half incompressible noise, half text, like real layers.
pub fn layer_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 65536) % 2 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(format!("line {x:016x} of a text file\n").as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn run(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub async fn pull() {
    use crius_e2e::registry::{push_layout, Registry};
    let registry = Registry::start().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let tars: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            crius_e2e::fixtures::single_file_tar(
                &format!("layer{i}.bin"),
                &layer_bytes(20 << 20, i + 1),
            )
            .unwrap()
        })
        .collect();
    let image = crius_e2e::fixtures::write_custom_layout(layout.path(), "big", &tars).unwrap();
    let compressed: u64 = image.layers.iter().map(|l| l.blob.size).sum();
    let reference = format!("{}/bench/big:latest", registry.addr());
    push_layout(
        &format!("oci:{}:big", layout.path().display()),
        &reference,
        None,
    )
    .unwrap();
    drop(tars);
    let mb = compressed as f64 / 1e6;

    let mut daemon = crius_e2e::daemon::Daemon::start_with(crius_e2e::daemon::Options {
        extra_config: format!(
            "[image.registries.\"{}\"]\ninsecure = true\n",
            registry.addr()
        ),
        ..Default::default()
    })
    .await;
    let pid = daemon.pid().unwrap();
    let rss_before = status_kib(pid, "VmRSS:");
    let mut images = daemon.image().await;
    let t = Instant::now();
    images
        .pull_image(k8s_cri::v1::PullImageRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let crius_time = t.elapsed();
    let peak = status_kib(pid, "VmHWM:");
    daemon.kill9();

    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let copy = run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:big", oci.display())));
    let unpack = run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:big", oci.display()))
        .arg(work.path().join("rootfs")));
    let reference_time = copy + unpack;
    println!(
        "pull {mb:.0} MB (5 gzip layers, cold): crius {:>8} = {:>6.1} MB/s, RSS {} KiB → peak {} KiB (+{} KiB) \
         | skopeo copy {} + umoci raw unpack {} = {:>8} = {:>6.1} MB/s",
        ms(crius_time),
        mb / crius_time.as_secs_f64(),
        rss_before,
        peak,
        peak.saturating_sub(rss_before),
        ms(copy),
        ms(unpack),
        ms(reference_time),
        mb / reference_time.as_secs_f64(),
    );
}

/// start-to-ready, RSS and `Version` latency of crius, then of containerd when installed.
pub async fn startup() {
    println!(
        "startup: {STARTS} starts, {CALLS} Version calls on one connection (binary {})",
        crius_bin().display()
    );
    let subjects = [
        Subject {
            name: "crius",
            prepare: crius,
        },
        Subject {
            name: "containerd",
            prepare: containerd,
        },
    ];
    for s in &subjects {
        bench(s).await;
    }
}

const CONTAINERS: usize = 50;

pub async fn containers() {
    use k8s_cri::v1 as cri;
    let crius_e2e::busybox::BusyboxDaemon {
        d,
        net: _net,
        image,
    } = crius_e2e::busybox::BusyboxDaemon::start(Default::default()).await;
    let mut rt = d.runtime().await;
    let pod_req = crius_e2e::pods::pod("bench");
    let pod_config = pod_req.config.clone();
    let pod = rt
        .run_pod_sandbox(pod_req)
        .await
        .expect("pod")
        .into_inner()
        .pod_sandbox_id;
    let config = |i: usize| cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: format!("c{i}"),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
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
    };
    println!("\ncontainers: {CONTAINERS} busybox `sleep` containers, runc, one at a time");
    let (mut create_start, mut stop, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    let mut monitor_rss = 0;
    let mut bundle = PathBuf::new();
    for i in 0..=CONTAINERS {
        let t = Instant::now();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config(i)),
                sandbox_config: pod_config.clone(),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
        if i == CONTAINERS {
            // The last one stays: its bundle is the floor's, its monitor is measured.
            let st = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                })
                .await
                .expect("status")
                .into_inner();
            let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
            monitor_rss = rss_kib(info["monitorPid"].as_u64().unwrap_or(0) as u32);
            bundle = PathBuf::from(info["bundle"].as_str().unwrap_or_default());
            break;
        }
        create_start.push(t.elapsed());
        let t = Instant::now();
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
        stop.push(t.elapsed());
        let t = Instant::now();
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .expect("RemoveContainer");
        remove.push(t.elapsed());
    }

    // The floor: bare `runc create` + `runc start` of the same bundle (its rootfs shared).
    let scratch = tempfile::tempdir().unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["root"]["path"] = serde_json::json!(bundle.join("rootfs"));
    let root = scratch.path().join("runc");
    let (mut floor, mut floor_gone) = (Vec::new(), Vec::new());
    for i in 0..CONTAINERS {
        let id = format!("crius-bench-floor-{i}");
        let dir = scratch.path().join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/crius-bench/{id}"));
        std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        let runc = |args: &[&str]| {
            let ok = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "runc {args:?}");
        };
        let t = Instant::now();
        runc(&["create", "--bundle", dir.to_str().unwrap(), &id]);
        runc(&["start", &id]);
        floor.push(t.elapsed());
        let t = Instant::now();
        runc(&["delete", "--force", &id]);
        floor_gone.push(t.elapsed());
    }
    // Debian's conmon on the same bundle, for the monitor RSS reference.
    let conmon_rss = conmon_rss(&spec, scratch.path());
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join("crius-bench"));
        }
    }
    summary("bare runc create+start", floor);
    summary("crius CreateContainer+Start", create_start);
    let stop_remove: Vec<Duration> = stop.iter().zip(&remove).map(|(a, b)| *a + *b).collect();
    summary("crius StopContainer (timeout 0)", stop);
    summary("crius RemoveContainer", remove);
    summary("bare runc delete --force", floor_gone);
    summary("crius Stop+Remove", stop_remove);
    println!("  crius-conmon RSS of an idle container: {monitor_rss} KiB");
    match conmon_rss {
        Some(kib) => println!("  Debian conmon RSS, same bundle:        {kib} KiB"),
        None => println!("  Debian conmon: not installed or failed (apt-get install conmon)"),
    }
    bench_userns(&d, &config).await;
    let mut rt = d.runtime().await;
    let _ = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
}

const PODS: usize = 100;

/// RSS (KiB) of Debian's `conmon` monitoring `spec` under runc, measured like crius-conmon's:
/// one idle `sleep` container, a second after start. `None` without conmon.
fn conmon_rss(spec: &serde_json::Value, scratch: &Path) -> Option<u64> {
    let dir = scratch.join("conmon");
    let bundle = dir.join("bundle");
    for d in ["bundle", "exits", "sock", "persist"] {
        std::fs::create_dir_all(dir.join(d)).ok()?;
    }
    let mut spec = spec.clone();
    spec["linux"]["cgroupsPath"] = serde_json::json!("/crius-bench/conmon-ref");
    std::fs::write(bundle.join("config.json"), spec.to_string()).ok()?;
    let id = "crius-bench-conmon-ref";
    let pid_file = dir.join("conmon.pid");
    let ok = Command::new("conmon")
        .args(["--api-version", "1", "-c", id, "-u", id, "-n", id])
        .args([
            "-r",
            "/usr/sbin/runc",
            "--log-level",
            "error",
            "--syslog=false",
        ])
        .arg("-b")
        .arg(&bundle)
        .arg("-p")
        .arg(dir.join("pidfile"))
        .arg("-l")
        .arg(format!("k8s-file:{}", dir.join("ctr.log").display()))
        .arg("--exit-dir")
        .arg(dir.join("exits"))
        .arg("--socket-dir-path")
        .arg(dir.join("sock"))
        .arg("--persist-dir")
        .arg(dir.join("persist"))
        .arg("-P")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    let runc = |args: &[&str]| {
        let _ = Command::new("runc")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let mut rss = None;
    if ok {
        runc(&["start", id]);
        std::thread::sleep(Duration::from_secs(1));
        rss = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .map(rss_kib);
    }
    runc(&["delete", "--force", id]);
    rss
}

/// The same containers in a pod with a user namespace (idmapped layers and pinning through
/// `crius-conmon userns`), and RunPodSandbox+Stop+Remove of such pods.
async fn bench_userns(
    d: &crius_e2e::daemon::Daemon,
    config: &dyn Fn(usize) -> k8s_cri::v1::ContainerConfig,
) {
    use k8s_cri::v1 as cri;
    let mut rt = d.runtime().await;
    let userns_pod = |name: String| {
        let mut req = crius_e2e::pods::pod(&name);
        let map = cri::IdMapping {
            host_id: 1 << 20,
            container_id: 0,
            length: 65536,
        };
        crius_e2e::pods::config(&mut req)
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default)
            .userns_options = Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![map],
            gids: vec![map],
        });
        req
    };
    println!(
        "
user namespaces: {CONTAINERS} containers in a pod with a user namespace, {USERNS_PODS} such pods"
    );
    let req = userns_pod("bench-userns".into());
    let pod_config = req.config.clone();
    let pod = rt
        .run_pod_sandbox(req)
        .await
        .expect("userns pod")
        .into_inner()
        .pod_sandbox_id;
    let mut create_start = Vec::new();
    for i in 0..CONTAINERS {
        let t = Instant::now();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config(i)),
                sandbox_config: pod_config.clone(),
            })
            .await
            .expect("CreateContainer (userns)")
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer (userns)");
        create_start.push(t.elapsed());
        let _ = rt
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await;
    }
    let _ = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    let mut run = Vec::new();
    for i in 0..USERNS_PODS {
        let t = Instant::now();
        let id = rt
            .run_pod_sandbox(userns_pod(format!("bench-userns-{i}")))
            .await
            .expect("RunPodSandbox (userns)")
            .into_inner()
            .pod_sandbox_id;
        run.push(t.elapsed());
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
    summary("crius CreateContainer+Start (userns)", create_start);
    summary("crius RunPodSandbox (userns)", run);
}

const USERNS_PODS: usize = 30;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "  {name:<38} p50 {:>9}  p99 {:>9}",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );
}

pub async fn pods() {
    use k8s_cri::v1 as cri;
    let net = crius_e2e::network::TestNetwork::new();
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[
        {{"type":"bridge","bridge":"{}","isGateway":true,"ipMasq":false,
          "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{}.0/24"}}]],"dataDir":"{}"}}}},
        {{"type":"loopback"}}]}}"#,
        net.name,
        net.bridge,
        net.prefix,
        net.data_dir.display()
    );
    println!("\npods: {PODS} pods, bridge + host-local + loopback, one at a time");

    // The floor: the same conflist run by the CNI library directly on a pinned netns.
    let parsed =
        crius_cni::NetworkConfigList::parse(Path::new("bench.conflist"), conflist.as_bytes())
            .expect("conflist");
    let scratch = tempfile::tempdir().unwrap();
    let cni = crius_cni::Cni::new(
        vec![PathBuf::from("/usr/lib/cni")],
        scratch.path().join("cache"),
    );
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..PODS {
        let id = format!("floor{i:04}");
        let ns_dir = scratch.path().join(&id);
        let pinned = crius_cni::create_pinned(&[crius_cni::NsKind::Net], &ns_dir, None).unwrap();
        let netns = pinned.net().unwrap();
        let att = crius_cni::Attachment {
            container_id: &id,
            netns: &netns,
            ifname: "eth0",
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capabilities: Default::default(),
        };
        let t = Instant::now();
        cni.add(&parsed, &att).expect("cni add");
        add.push(t.elapsed());
        let t = Instant::now();
        cni.del(Some(&parsed), &att).expect("cni del");
        del.push(t.elapsed());
        pinned.remove().unwrap();
    }
    summary("bare CNI ADD", add);
    summary("bare CNI DEL", del);

    let d = crius_e2e::daemon::Daemon::start().await;
    std::fs::write(d.paths.cni_conf_dir.join("10-bench.conflist"), &conflist).unwrap();
    let mut rt = d.runtime().await;
    let (mut run, mut stop_remove) = (Vec::new(), Vec::new());
    for i in 0..PODS {
        let req = crius_e2e::pods::pod(&format!("bench{i}"));
        let t = Instant::now();
        let id = rt
            .run_pod_sandbox(req)
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        run.push(t.elapsed());
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("RemovePodSandbox");
        stop_remove.push(t.elapsed());
    }
    summary("crius RunPodSandbox", run);
    summary("crius StopPodSandbox+Remove", stop_remove);
    println!(
        "  crius RSS after {PODS} pods: {} KiB",
        rss_kib(d.pid().unwrap_or(0))
    );
}
