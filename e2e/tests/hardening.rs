//! Hardening (issue 14) end to end: bad inputs get the exact gRPC code before anything is
//! created, nothing escapes its directory, root writes no shared temp file, limits hold, and the
//! daemon keeps serving. One daemon per test, many cases each (CPU is shared).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::{Daemon, Options};
use crius_e2e::fixtures;
use crius_e2e::network::TestNetwork;
use crius_e2e::pods;
use crius_e2e::registry::{self, push_layout};
use k8s_cri::v1 as cri;
use tonic::Code;

struct Env {
    d: Daemon,
    _net: TestNetwork,
    image: String,
    logs: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        let BusyboxDaemon { d, net, image } = BusyboxDaemon::start(Options::default()).await;
        Env {
            d,
            _net: net,
            image,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let mut req = pods::pod(name);
        pods::config(&mut req).log_directory = self.logs.path().join(name).display().to_string();
        let config = req.config.clone().unwrap();
        let id = self
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

    fn container(&self, name: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(Default::default()),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    async fn create(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.d
            .runtime()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn containers(&self) -> Vec<cri::Container> {
        self.d
            .runtime()
            .await
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
    }

    async fn serving(&self) {
        serving(&self.d).await;
    }
}

async fn serving(d: &Daemon) {
    let v = d
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .expect("daemon still serving");
    assert_eq!(v.into_inner().runtime_name, "crius");
}

fn resources(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerResources {
    c.linux
        .as_mut()
        .unwrap()
        .resources
        .get_or_insert_with(Default::default)
}

fn assert_code(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, what: &str) {
    match result {
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            // gRPC clients refuse headers past 8 KiB: every message stays far below.
            assert!(
                s.message().len() <= 4096,
                "{what}: {} bytes",
                s.message().len()
            );
        }
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
    }
}

#[tokio::test]
async fn bad_container_inputs_are_invalid_argument_and_create_nothing() {
    let env = Env::new().await;
    let pod = env.pod("hard").await;
    let escape_dir = tempfile::tempdir().unwrap();
    let escaped = escape_dir.path().join("escaped.log");
    let depth = "../".repeat(12);
    let escaped_rel = format!(
        "{depth}{}",
        escaped.display().to_string().trim_start_matches('/')
    );

    type Case = (&'static str, Box<dyn Fn(&mut cri::ContainerConfig)>);
    let big = "x".repeat(10_000);
    let cases: Vec<Case> = vec![
        ("absolute log_path", {
            let p = escaped.display().to_string();
            Box::new(move |c| c.log_path = p.clone())
        }),
        ("dotdot log_path", {
            let p = escaped_rel.clone();
            Box::new(move |c| c.log_path = p.clone())
        }),
        ("inner dotdot log_path", {
            let p = format!("a/../{escaped_rel}");
            Box::new(move |c| c.log_path = p.clone())
        }),
        ("NUL log_path", Box::new(|c| c.log_path = "a\0.log".into())),
        ("NUL command", Box::new(|c| c.command.push("a\0b".into()))),
        ("NUL args", Box::new(|c| c.args = vec!["\0".into()])),
        (
            "NUL env",
            Box::new(|c| {
                c.envs.push(cri::KeyValue {
                    key: "K".into(),
                    value: "v\0".into(),
                })
            }),
        ),
        (
            "NUL mount",
            Box::new(|c| {
                c.mounts.push(cri::Mount {
                    container_path: "/data".into(),
                    host_path: "/tmp\0".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "mount over /proc/sys",
            Box::new(|c| {
                c.mounts.push(cri::Mount {
                    container_path: "/proc/sys/kernel".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "memory below the minimum",
            Box::new(|c| resources(c).memory_limit_in_bytes = 4096),
        ),
        (
            "cpuset cpus not on the node",
            Box::new(|c| resources(c).cpuset_cpus = "0-1000".into()),
        ),
        (
            "cpuset mems not on the node",
            Box::new(|c| resources(c).cpuset_mems = "7".into()),
        ),
        (
            "negative cpu quota",
            Box::new(|c| resources(c).cpu_quota = -5),
        ),
        (
            "unified key escaping",
            Box::new(|c| {
                resources(c)
                    .unified
                    .insert("../cgroup.procs".into(), "1".into());
            }),
        ),
        (
            "oom_score_adj 5000",
            Box::new(|c| resources(c).oom_score_adj = 5000),
        ),
        (
            "pid TARGET without target",
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .security_context
                    .as_mut()
                    .unwrap()
                    .namespace_options = Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Target as i32,
                    ..Default::default()
                })
            }),
        ),
        ("10 KB value with a NUL", {
            let v = format!("{big}\0");
            Box::new(move |c| c.command = vec![v.clone()])
        }),
        ("10 KB container name", {
            let v = format!("{big}/");
            Box::new(move |c| c.metadata.as_mut().unwrap().name = v.clone())
        }),
    ];
    for (i, (what, edit)) in cases.iter().enumerate() {
        let mut config = env.container(&format!("c{i}"));
        edit(&mut config);
        assert_code(env.create(&pod, config).await, Code::InvalidArgument, what);
    }
    assert!(
        env.containers().await.is_empty(),
        "a refused create left a container"
    );
    assert!(!escaped.exists(), "a log escaped the pod's log directory");
    let names: Vec<_> = std::fs::read_dir(escape_dir.path()).unwrap().collect();
    assert!(names.is_empty());

    // A symlink planted at the log path is not followed: the victim stays as it is.
    let victim = escape_dir.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let log_dir = Path::new(&pod.1.log_directory);
    std::fs::create_dir_all(log_dir).unwrap();
    std::os::unix::fs::symlink(&victim, log_dir.join("planted.log")).unwrap();
    let mut config = env.container("planted");
    config.log_path = "planted.log".into();
    config.command = vec!["echo".into(), "pwned".into()];
    assert_code(
        env.create(&pod, config).await,
        Code::InvalidArgument,
        "log through a symlink",
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert!(env.containers().await.is_empty());

    // PullImage of an impossible port, and a 10 KB reference.
    for image in ["127.0.0.1:99999/x".to_string(), format!("a/{big}")] {
        let r = env
            .d
            .image()
            .await
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image,
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await;
        assert_code(r, Code::InvalidArgument, "pull of a bad reference");
    }
    env.serving().await;
}

#[tokio::test]
async fn bad_pod_inputs_are_invalid_argument_and_create_nothing() {
    let env = Env::new().await;
    type Case = (&'static str, Box<dyn Fn(&mut cri::RunPodSandboxRequest)>);
    let cases: Vec<Case> = vec![
        (
            "relative log_directory",
            Box::new(|r| pods::config(r).log_directory = "relative/logs".into()),
        ),
        (
            "log_directory with ..",
            Box::new(|r| pods::config(r).log_directory = "/var/log/pods/../../tmp".into()),
        ),
        (
            "NUL cgroup parent",
            Box::new(|r| pods::linux(r).cgroup_parent = "/kubepods\0x".into()),
        ),
        (
            "NUL hostname",
            Box::new(|r| pods::config(r).hostname = "a\0b".into()),
        ),
        (
            "oom_score_adj 5000",
            Box::new(|r| {
                pods::linux(r).resources = Some(cri::LinuxContainerResources {
                    oom_score_adj: 5000,
                    ..Default::default()
                })
            }),
        ),
    ];
    for (i, (what, edit)) in cases.iter().enumerate() {
        let mut req = pods::pod(&format!("bad{i}"));
        edit(&mut req);
        let r = env.d.runtime().await.run_pod_sandbox(req).await;
        assert_code(r, Code::InvalidArgument, what);
    }
    let pods = env
        .d
        .runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    env.serving().await;
}

#[tokio::test]
async fn update_exec_and_monitor_sockets_write_nothing_shared_and_refuse_bad_values() {
    let env = Env::new().await;
    let pod = env.pod("upd").await;
    let id = env.create(&pod, env.container("main")).await.unwrap();
    let rt = || async { env.d.runtime().await };
    rt().await
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();

    // The monitor's sockets are 0600.
    let monitor_dir = env.d.paths.runroot.join("m").join(&id[..12]);
    for name in ["monitor.sock", "attach.sock"] {
        let mode = std::fs::metadata(monitor_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }

    // A link planted where the old code wrote its temp file is never written through.
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let planted = std::env::temp_dir().join(format!("crius-update-{id}.json"));
    let _ = std::fs::remove_file(&planted);
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let d = &env.d;
    let update = |res: cri::LinuxContainerResources| {
        let id = id.clone();
        async move {
            d.runtime()
                .await
                .update_container_resources(cri::UpdateContainerResourcesRequest {
                    container_id: id,
                    linux: Some(res),
                    windows: None,
                    annotations: Default::default(),
                })
                .await
        }
    };
    update(cri::LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    let _ = std::fs::remove_file(&planted);
    for (what, res) in [
        (
            "oom_score_adj 5000",
            cri::LinuxContainerResources {
                oom_score_adj: 5000,
                ..Default::default()
            },
        ),
        (
            "memory 4096",
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 4096,
                ..Default::default()
            },
        ),
        (
            "cpuset not on the node",
            cri::LinuxContainerResources {
                cpuset_cpus: "4095".into(),
                ..Default::default()
            },
        ),
    ] {
        assert_code(update(res).await, Code::InvalidArgument, what);
    }

    // ExecSync with a NUL byte.
    let r = rt()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "a\0b".into()],
            timeout: 10,
        })
        .await;
    assert_code(r, Code::InvalidArgument, "exec with NUL");

    // 100 MB of ExecSync output leaves the daemon's RSS where it was.
    let pid = env.d.pid().unwrap();
    let exec_big = || async {
        let out = env
            .d
            .runtime()
            .await
            .max_decoding_message_size(64 << 20)
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![
                    "head".into(),
                    "-c".into(),
                    "100000000".into(),
                    "/dev/zero".into(),
                ],
                timeout: 60,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.exit_code, 0);
        assert_eq!(out.stdout.len(), 16 << 20, "bounded to 16 MiB");
    };
    // Warm up (first-use allocations), then measure.
    exec_big().await;
    let before = crius::memory::rss_bytes(pid).unwrap();
    for _ in 0..3 {
        exec_big().await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let limit = before + (12 << 20);
    let mut after = crius::memory::rss_bytes(pid).unwrap();
    while after > limit && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = crius::memory::rss_bytes(pid).unwrap();
    }
    eprintln!(
        "daemon RSS: {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    assert!(
        after <= limit,
        "RSS grew from {} to {} MiB",
        before >> 20,
        after >> 20
    );
    env.serving().await;
}

fn insecure(addr: &str) -> String {
    format!("[image.registries.\"{addr}\"]\ninsecure = true\n")
}

fn push_custom(name: &str, tars: &[Vec<u8>]) -> String {
    let fx = registry::shared();
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_custom_layout(dir.path(), name, tars).unwrap();
    let reference = format!("{}/crius-test/{name}:latest", fx.registry_addr());
    push_layout(
        &format!("oci:{}:{name}", dir.path().display()),
        &reference,
        None,
    )
    .unwrap();
    reference
}

fn tree(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn image_size_and_layer_limits_refuse_the_pull_and_leave_nothing() {
    let fx = registry::shared();
    let d = Daemon::start_with(Options {
        extra_config: format!(
            "{}\n[image]\nmax_layer_size = {}\nmax_image_size = {}\nmax_layers = 3\n",
            insecure(&fx.registry_addr()),
            8 << 20,
            12 << 20
        ),
        ..Options::default()
    })
    .await;
    let pull = |image: String| {
        let d = &d;
        async move {
            d.image()
                .await
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await
        }
    };
    let zeros = |n: usize| fixtures::single_file_tar("zeros", &vec![0u8; n]).unwrap();
    let store = d.paths.root.join("images");
    let layers_before = tree(&store.join("layers")).len();

    // A gzip bomb: 32 MiB of zeros in a tiny layer, past max_layer_size.
    let bomb = push_custom("bomb", &[zeros(32 << 20)]);
    let err = pull(bomb).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_layer_size"), "{err:?}");

    // Three layers of 5 MiB: each fits, together past max_image_size.
    let big = push_custom(
        "big",
        &[
            zeros(5 << 20),
            fixtures::single_file_tar("b", &vec![1u8; 5 << 20]).unwrap(),
            fixtures::single_file_tar("c", &vec![2u8; 5 << 20]).unwrap(),
        ],
    );
    let err = pull(big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_image_size"), "{err:?}");

    // Four layers: past max_layers, refused before a byte is downloaded.
    let tall: Vec<Vec<u8>> = (0..4)
        .map(|i| fixtures::single_file_tar(&format!("f{i}"), b"x").unwrap())
        .collect();
    let err = pull(push_custom("tall", &tall)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_layers 3"), "{err:?}");

    // Nothing was kept: no image, no layer, no temp file.
    let images = d
        .image()
        .await
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    assert_eq!(tree(&store.join("layers")).len(), layers_before);
    assert!(tree(&store.join("tmp")).is_empty());

    // Within the limits a pull works.
    let small = push_custom("small", &[zeros(1 << 20)]);
    pull(small).await.unwrap();
    serving(&d).await;
}

/// A tmpfs mounted for one test, unmounted when dropped (after the daemon using it).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("crius-e2e-full-")
            .tempdir()
            .unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem up: writes until ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn no_space_left_is_resource_exhausted_naming_the_path() {
    let fx = registry::shared();
    let fs = Tmpfs::mount("24m");
    let root = fs.path().join("root");
    let mut d = Daemon::start_with(Options {
        extra_config: insecure(&fx.registry_addr()),
        drop_in: format!("[state]\nroot = {:?}\n", root.display().to_string()),
        ..Options::default()
    })
    .await;
    let pull = |image: String| {
        let d = &d;
        async move {
            d.image()
                .await
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await
        }
    };
    // A 32 MiB layer (compressing to almost nothing) does not fit in 24 MiB.
    let reference = push_custom(
        "fills-the-disk",
        &[fixtures::single_file_tar("big", &vec![7u8; 32 << 20]).unwrap()],
    );
    let err = pull(reference).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(&root.display().to_string()),
        "names the path: {err:?}"
    );
    assert!(tree(&root.join("images/tmp")).is_empty());

    // A full disk: the pod's record cannot be written.
    fs.fill();
    let mut req = pods::pod("full");
    pods::namespaces(&mut req).network = cri::NamespaceMode::Node as i32;
    let err = d.runtime().await.run_pod_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(&root.display().to_string()),
        "names the path: {err:?}"
    );
    let pods = d
        .runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    serving(&d).await;
    d.terminate(Duration::from_secs(10));
}
