//! The real `crius` daemon under test.
//!
//! Owns starting the built binary with its own temporary root, runroot, socket, CNI conf dir and
//! config; connecting `k8s-cri` clients over the unix socket; reading its metrics; stopping it.
//! Every instance is isolated so tests run in parallel. When a test panics, the daemon's log is
//! printed. On drop, whatever the test did or failed to do, the instance's pods and containers
//! are removed (over the socket while the daemon lives, then by [`crate::sweep`]), the process is
//! killed and reaped, and the temp dir removed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Path of the `crius` binary under test: `$CRIUS_BIN`, else the workspace's debug build.
pub fn crius_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CRIUS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/crius");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --workspace`, as `make test` does) or set CRIUS_BIN",
        bin.display()
    );
    bin
}

/// A free TCP port on loopback (released before use; callers retry on a clash).
/// Whether `crun` is on `PATH` (then it is the daemon's default handler, unless configured).
pub fn crun_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("crun").is_file()))
}

/// The handler of pods that name none, with the default config: `crun` when installed.
pub fn default_handler() -> &'static str {
    if crun_installed() {
        "crun"
    } else {
        "runc"
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Options for [`Daemon::start_with`].
#[derive(Default, Clone)]
pub struct Options {
    /// TOML appended to the generated main config file.
    pub extra_config: String,
    /// A drop-in (`crius.d/50-test.toml`), for tables the main file already has (`[network]`).
    pub drop_in: String,
    /// Extra command-line flags for the serving daemon (`--log-format json`).
    pub args: Vec<String>,
    /// Extra environment variables of the serving daemon.
    pub env: Vec<(String, String)>,
}

/// Paths of one isolated daemon instance.
pub struct Paths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub config_dir: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub log: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Paths {
        Paths {
            dir: dir.to_path_buf(),
            config: dir.join("crius.toml"),
            config_dir: dir.join("crius.d"),
            socket: dir.join("run/crius.sock"),
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            cni_conf_dir: dir.join("net.d"),
            log: dir.join("crius.log"),
        }
    }
}

/// A running `crius`.
pub struct Daemon {
    tmp: tempfile::TempDir,
    pub paths: Paths,
    pub metrics_addr: String,
    child: Option<Child>,
    options: Options,
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("crius-e2e-")
            .tempdir()
            .expect("temp dir");
        let paths = Paths::new(tmp.path());
        std::fs::create_dir_all(&paths.config_dir).expect("config dir");
        std::fs::create_dir_all(&paths.cni_conf_dir).expect("cni conf dir");
        if !options.drop_in.is_empty() {
            std::fs::write(paths.config_dir.join("50-test.toml"), &options.drop_in)
                .expect("write drop-in");
        }
        let mut daemon = Daemon {
            tmp,
            paths,
            metrics_addr: String::new(),
            child: None,
            options,
        };
        daemon.restart().await;
        daemon
    }

    /// The main config file the harness writes: isolated dirs plus the test's extra TOML.
    fn write_config(&mut self) {
        self.metrics_addr = format!("127.0.0.1:{}", free_port());
        let p = &self.paths;
        let text = format!(
            "[api]\nlisten = {:?}\n\n[state]\nroot = {:?}\nrunroot = {:?}\n\n[network]\nconf_dir = {:?}\n\n\
             [metrics]\naddress = {:?}\n\n[log]\nlevel = \"debug\"\n\n{}\n",
            p.socket, p.root, p.runroot, p.cni_conf_dir, self.metrics_addr, self.options.extra_config
        );
        std::fs::write(&p.config, text).expect("write config");
    }

    /// A command line for the binary with this instance's config.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(crius_bin());
        cmd.arg("--config")
            .arg(&self.paths.config)
            .arg("--config-dir")
            .arg(&self.paths.config_dir);
        cmd
    }

    /// (Re)starts the daemon and waits until `Version` answers. A daemon still running is killed.
    pub async fn restart(&mut self) {
        self.kill9();
        for attempt in 0..3 {
            self.write_config();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.paths.log)
                .expect("open daemon log");
            let child = self
                .command()
                .args(&self.options.args)
                .envs(self.options.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log fd"))
                .stderr(log)
                .spawn()
                .expect("spawn crius");
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => {
                    self.wait_restored().await;
                    return;
                }
                Err(e) if attempt < 2 && self.log().contains("bind metrics address") => {
                    eprintln!("metrics port clash, retrying: {e}");
                    self.kill9();
                }
                Err(e) => panic!(
                    "crius did not become ready: {e}\n--- daemon log ---\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Waits until the startup gate opens (state restored): gated RPCs stop answering
    /// `Unavailable`. A daemon configured to never restore is left as it is after 15 s.
    async fn wait_restored(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Ok(mut client) = self.try_runtime().await else {
                return;
            };
            match client
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
                .await
            {
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => return,
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited early with {status}"));
                }
            }
            if self.paths.socket.exists() {
                if let Ok(mut client) = self.try_runtime().await {
                    let req = k8s_cri::v1::VersionRequest::default();
                    if client.version(req).await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("timed out after 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn channel(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
        unix_channel(socket).await
    }

    async fn try_runtime(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(
            Self::channel(self.paths.socket.clone()).await?,
        ))
    }

    /// A RuntimeService client on a fresh connection.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.try_runtime()
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.paths.socket.display()))
    }

    /// An ImageService client on a fresh connection.
    pub async fn image(&self) -> ImageServiceClient<Channel> {
        let channel = Self::channel(self.paths.socket.clone())
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.paths.socket.display()));
        ImageServiceClient::new(channel)
    }

    /// Whether the daemon process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, then waits (bounded) for the exit. Returns the status and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(timeout)?;
        Some((status, started.elapsed()))
    }

    /// Waits (bounded) for the daemon to exit on its own; past `timeout` it is killed and `None`
    /// returned.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        let mut child = self.child.take()?;
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL and reap: the daemon gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    /// GET `path` from the metrics endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr, path)
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// How long the drop of a live daemon may spend removing its pods and containers over its
/// socket before it is killed and swept.
const CLEANUP_BUDGET: Duration = Duration::from_secs(10);

impl Drop for Daemon {
    /// Leaves nothing on the host, even when the test failed halfway: a live daemon first removes
    /// every pod (with its containers and network) and container over its socket; then it is
    /// killed and [`sweep`](crate::sweep) removes what is left (monitors, runtime containers,
    /// mounts) before the temp dir goes.
    fn drop(&mut self) {
        if self.is_alive() {
            remove_all_over_socket(self.paths.socket.clone(), CLEANUP_BUDGET);
        }
        self.kill9();
        crate::sweep::all(self.tmp.path(), &self.paths.runroot);
        if std::thread::panicking() {
            eprintln!(
                "--- crius log ({}) ---\n{}\n--- end of crius log ---",
                self.paths.log.display(),
                self.log()
            );
        }
    }
}

/// Best effort, within `budget`: RemovePodSandbox for every pod (stops and removes its
/// containers, CNI DEL, unmounts) and RemoveContainer for every container left. Runs on its own
/// thread and runtime, so it works from `Drop` inside a test's runtime.
fn remove_all_over_socket(socket: PathBuf, budget: Duration) {
    use k8s_cri::v1 as cri;
    let worker = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let _ = tokio::time::timeout(budget, async {
                let Ok(channel) = unix_channel(socket).await else {
                    return;
                };
                let mut rt = RuntimeServiceClient::new(channel);
                if let Ok(pods) = rt
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await
                {
                    for pod in pods.into_inner().items {
                        let req = cri::RemovePodSandboxRequest {
                            pod_sandbox_id: pod.id,
                        };
                        let _ = rt.remove_pod_sandbox(req).await;
                    }
                }
                if let Ok(ctrs) = rt
                    .list_containers(cri::ListContainersRequest::default())
                    .await
                {
                    for ctr in ctrs.into_inner().containers {
                        let req = cri::RemoveContainerRequest {
                            container_id: ctr.id,
                        };
                        let _ = rt.remove_container(req).await;
                    }
                }
            })
            .await;
        });
    });
    let _ = worker.join();
}

/// A gRPC channel over the unix socket at `socket` (any CRI endpoint: crius, containerd, ...).
pub async fn unix_channel(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}

/// A minimal HTTP/1.1 GET over loopback (bounded by a 5 s timeout).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}
