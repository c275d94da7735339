//! Daemons the bench starts itself for `compare` (what `make bench` runs): crius and Debian's
//! containerd, each on private dirs (root, state, socket, CNI conf dir, its own bridge), both
//! trusting the loopback registry that serves the test images, stopped on drop.
//!
//! containerd needs a pause image for its sandboxes: the bench builds one from the busybox
//! fixture's layers with `sleep` as its command, pushes it to the loopback registry and points
//! containerd's `sandbox_image` at it. containerd also gets a `crun` handler so
//! `--runtime-handler crun` means the same on both, and `restrict_oom_score_adj`, because
//! where the bench runs without CAP_SYS_RESOURCE (a container) runc cannot lower the pause
//! container's `oom_score_adj` to -998 and every sandbox fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crius_e2e::fixtures::sha256_digest;
use crius_e2e::network::TestNetwork;
use serde_json::json;

/// The loopback registry (the e2e fixture) with busybox, layered and the pause image.
pub struct Images {
    pub registry: String,
    pub busybox: String,
    pub layered: String,
    pub pause: String,
}

pub fn images() -> Result<Images> {
    let fx = crius_e2e::registry::try_shared().context("test image registry")?;
    let layout = tempfile::tempdir()?;
    pause_layout(&fx.layout().dir, &fx.layout().busybox, layout.path())?;
    let pause = format!("{}/crius-bench/pause:latest", fx.registry_addr());
    crius_e2e::registry::push_layout(
        &format!("oci:{}:pause", layout.path().display()),
        &pause,
        None,
    )
    .context("push the pause image")?;
    Ok(Images {
        registry: fx.registry_addr(),
        busybox: fx.busybox_ref(),
        layered: fx.layered_ref(),
        pause,
    })
}

/// A generated image of five single-file layers, `mb` MB unpacked in all (half noise, half
/// text, like real layers), pushed to `registry`: its reference and compressed size.
pub fn big_image(registry: &str, mb: usize) -> Result<(String, u64)> {
    let layout = tempfile::tempdir()?;
    let per_layer = (mb << 20) / 5;
    let tars = (0..5)
        .map(|i| {
            crius_e2e::fixtures::single_file_tar(
                &format!("layer{i}.bin"),
                &crate::legacy::layer_bytes(per_layer, i as u64 + 1),
            )
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let image = crius_e2e::fixtures::write_custom_layout(layout.path(), "big", &tars)?;
    let compressed = image.layers.iter().map(|l| l.blob.size).sum();
    let reference = format!("{registry}/crius-bench/big{mb}:latest");
    crius_e2e::registry::push_layout(
        &format!("oci:{}:big", layout.path().display()),
        &reference,
        None,
    )
    .context("push the big image")?;
    Ok((reference, compressed))
}

/// An OCI layout at `out` holding `pause`: busybox's layers, `sleep` forever as the command.
fn pause_layout(src: &Path, busybox: &crius_e2e::fixtures::Image, out: &Path) -> Result<()> {
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let blob_path = |dir: &Path, digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    for l in &busybox.layers {
        std::fs::copy(
            blob_path(src, &l.blob.digest),
            blob_path(out, &l.blob.digest),
        )?;
    }
    let write = |bytes: Vec<u8>| -> Result<serde_json::Value> {
        let digest = sha256_digest(&bytes);
        std::fs::write(blob_path(out, &digest), &bytes)?;
        Ok(json!({ "digest": digest, "size": bytes.len() }))
    };
    let config = write(serde_json::to_vec(&json!({
        "architecture": busybox.architecture,
        "os": "linux",
        "config": { "Cmd": ["sleep", "2147483647"], "Env": [crius_e2e::fixtures::PATH_ENV] },
        "rootfs": { "type": "layers", "diff_ids": busybox.diff_ids() },
    }))?)?;
    let manifest = write(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config["digest"], "size": config["size"],
        },
        "layers": busybox.layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.blob.digest, "size": l.blob.size,
        })).collect::<Vec<_>>(),
    }))?)?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        out.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest["digest"], "size": manifest["size"],
                "annotations": { "org.opencontainers.image.ref.name": "pause" },
            }],
        }))?,
    )?;
    Ok(())
}

/// A daemon started by the bench; killed (TERM, then KILL) and its dir removed on drop.
pub struct Peer {
    pub name: &'static str,
    pub socket: PathBuf,
    dir: Option<tempfile::TempDir>,
    child: Child,
    _net: TestNetwork,
}

impl Peer {
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM first so containerd shuts its plugins down; kill(1) keeps this file free of unsafe.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("CRIUS_BENCH_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "crius-bench: {} dir kept: {}",
                    self.name,
                    dir.keep().display()
                );
            }
        }
    }
}

impl Peer {
    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }
}

/// Starts crius (`bin`) on private dirs; log level warn, as a node would run it
/// (`CRIUS_BENCH_LOG_LEVEL` overrides it).
pub async fn crius(bin: &Path, images: &Images) -> Result<Peer> {
    let dir = tempfile::Builder::new()
        .prefix("crius-bench-crius-")
        .tempdir()?;
    let d = dir.path();
    let socket = d.join("crius.sock");
    let net = TestNetwork::new();
    std::fs::create_dir_all(d.join("net.d"))?;
    std::fs::create_dir_all(d.join("crius.d"))?;
    net.install(&d.join("net.d"), &[]);
    std::fs::write(
        d.join("crius.toml"),
        format!(
            "[api]\nlisten = {socket:?}\n[state]\nroot = {:?}\nrunroot = {:?}\n[network]\nconf_dir = {:?}\n\
             [metrics]\naddress = \"127.0.0.1:{}\"\n[log]\nlevel = {:?}\n\
             [image.registries.\"{}\"]\ninsecure = true\n",
            d.join("root"),
            d.join("run"),
            d.join("net.d"),
            crius_e2e::daemon::free_port(),
            // A breakdown needs more (e.g. `info` for create's phases, with CRIUS_BENCH_KEEP=1).
            std::env::var("CRIUS_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            images.registry,
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(d.join("crius.toml"))
        .arg("--config-dir")
        .arg(d.join("crius.d"));
    start("crius", cmd, socket, dir, net).await
}

/// Starts Debian's `containerd` on private dirs with the CRI plugin configured like crius.
pub async fn containerd(images: &Images) -> Result<Peer> {
    let dir = tempfile::Builder::new()
        .prefix("crius-bench-containerd-")
        .tempdir()?;
    let d = dir.path();
    let socket = d.join("containerd.sock");
    let net = TestNetwork::new();
    std::fs::create_dir_all(d.join("net.d"))?;
    net.install(&d.join("net.d"), &[]);
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    std::fs::write(
        d.join("containerd.toml"),
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\naddress = {socket:?}\n[ttrpc]\naddress = {:?}\n\
             [{cri}]\nsandbox_image = {:?}\nrestrict_oom_score_adj = true\n\
             [{cri}.cni]\nbin_dir = \"/usr/lib/cni\"\nconf_dir = {:?}\n\
             [{cri}.containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.crun]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.crun.options]\nBinaryName = \"crun\"\n\
             [{cri}.registry.mirrors.\"{reg}\"]\nendpoint = [\"http://{reg}\"]\n",
            d.join("root"),
            d.join("state"),
            d.join("ttrpc.sock"),
            images.pause,
            d.join("net.d"),
            reg = images.registry,
        ),
    )?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(d.join("containerd.toml"))
        .arg("--log-level")
        .arg("warn");
    start("containerd", cmd, socket, dir, net).await
}

async fn start(
    name: &'static str,
    mut cmd: Command,
    socket: PathBuf,
    dir: tempfile::TempDir,
    net: TestNetwork,
) -> Result<Peer> {
    let log = std::fs::File::create(dir.path().join("daemon.log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {name}"))?;
    let mut peer = Peer {
        name,
        socket,
        dir: Some(dir),
        child,
        _net: net,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = crius_e2e::daemon::unix_channel(peer.socket.clone()).await {
            let mut rt = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
            if rt
                .version(k8s_cri::v1::VersionRequest::default())
                .await
                .is_ok()
            {
                return Ok(peer);
            }
        }
        if let Ok(Some(status)) = peer.child.try_wait() {
            let log = std::fs::read_to_string(peer.dir().join("daemon.log")).unwrap_or_default();
            bail!("{name} exited ({status}) before answering: {}", tail(&log));
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer Version within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(2000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    &log[start..]
}
