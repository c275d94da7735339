//! A loopback image registry for e2e tests, and the shared fixture that fills it.
//!
//! This module owns the `docker-registry` (distribution 2.8) child process: its config file,
//! storage and log live in a private temp dir, it listens on `127.0.0.1` only (never
//! Debian's `/etc/docker/registry/config.yml`, which listens on all interfaces), and it is
//! killed and reaped on [`Drop`], at process exit, and by the kernel (`PR_SET_PDEATHSIG`)
//! if the test process dies without cleaning up. It can sit behind htpasswd auth
//! ([`Registry::start_with_auth`]) or serve HTTPS only with a certificate from a throwaway
//! CA made with `openssl` ([`Registry::start_tls`]). It also owns pushing the
//! [`crate::fixtures`] images with `skopeo` and a minimal HTTP/1.1 client for manifest
//! checks. It does not build image content (that is [`crate::fixtures`]).
//!
//! What [`push_fixtures`] puts in the registry (`<addr>/crius-test/...`):
//!
//! | reference | top-level manifest |
//! |---|---|
//! | `busybox:latest`, `layered:latest` | OCI manifest, byte-identical to the layout's |
//! | `busybox:v2s2`, `layered:v2s2` | Docker schema 2 manifest (skopeo `--format v2s2`) |
//! | `multiarch:latest` | OCI index (amd64 + arm64), byte-identical to the layout's |
//! | `multiarch:v2s2` | Docker manifest list (skopeo `--all --format v2s2`) |
//!
//! Format conversion keeps the config and layer blobs unchanged, so the image ID (config
//! digest) of `X:v2s2` equals the one of `X:latest`.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixtures::{self, media_type, with_context, Layout};

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "docker-registry";
/// The image copy tool (Debian package `skopeo`).
pub const SKOPEO_BIN: &str = "skopeo";
/// Repository namespace of every fixture image.
pub const NAMESPACE: &str = "crius-test";

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports [`Registry::start`] tries when the chosen one was taken meanwhile.
const BIND_ATTEMPTS: usize = 5;
/// Timeout of one connect/read/write of [`http_request`].
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The `Accept` header that makes distribution return any manifest kind we push.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A running `docker-registry` on `127.0.0.1:<port>` with private storage.
#[derive(Debug)]
pub struct Registry {
    addr: SocketAddr,
    /// `None` once stopped.
    child: Mutex<Option<Child>>,
    /// Holds `config.yml`, `storage/` and `registry.log`; removed on drop.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `GET /v2/` answers.
    pub fn start() -> io::Result<Registry> {
        Self::start_with(None, false)
    }

    /// Starts a registry that requires HTTP Basic auth (htpasswd, bcrypt via `htpasswd -B`).
    pub fn start_with_auth(user: &str, password: &str) -> io::Result<Registry> {
        Self::start_with(Some((user, password)), false)
    }

    /// Starts a registry that serves HTTPS only, with a certificate for `127.0.0.1` issued by
    /// a CA made for it alone ([`Registry::ca_cert`]); nothing trusts that CA by default.
    /// [`Registry::get_manifest`] (plain HTTP) does not work on it.
    pub fn start_tls() -> io::Result<Registry> {
        Self::start_with(None, true)
    }

    fn start_with(auth: Option<(&str, &str)>, tls: bool) -> io::Result<Registry> {
        let parent = scratch_root()?;
        sweep_stale(&parent);
        let dir = tempfile::Builder::new()
            .prefix(&format!("registry-{}-", std::process::id()))
            .tempdir_in(&parent)
            .map_err(|e| with_context(e, format!("create temp dir in {}", parent.display())))?;
        if tls {
            make_certificates(dir.path())?;
        }
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS {
            let addr = free_port()?;
            match start_once(dir.path(), addr, auth, tls) {
                Ok(child) => {
                    return Ok(Registry {
                        addr,
                        child: Mutex::new(Some(child)),
                        dir,
                    });
                }
                Err(StartError::PortTaken(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The socket address the registry listens on.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry's process id, `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        match self.child.lock() {
            Ok(guard) => guard.as_ref().map(Child::id),
            Err(poisoned) => poisoned.into_inner().as_ref().map(Child::id),
        }
    }

    /// The private dir holding the registry's config, storage and log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PEM certificate of the CA that issued a [`Registry::start_tls`] registry's
    /// certificate (absent for plain HTTP registries).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Where the registry keeps blob `digest` (`sha256:<hex>`) in its filesystem storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(hex))
            .join(hex)
            .join("data")
    }

    /// The registry's stderr log (what error messages quote the tail of).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// `GET /v2/<repository>/manifests/<reference>` accepting every manifest media type.
    pub fn get_manifest(&self, repository: &str, reference: &str) -> io::Result<Response> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        http_request(
            self.addr,
            "GET",
            &path,
            &[("Accept", ACCEPT_ALL_MANIFESTS)],
            &[],
        )
    }

    /// Kills and reaps the registry; idempotent.
    pub fn stop(&self) {
        let mut guard = match self.child.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(mut child) = guard.take() {
            // The child may already be gone; both errors only mean there is nothing left to do.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

enum StartError {
    /// The port was taken between choosing and binding it: try another one.
    PortTaken(io::Error),
    Other(io::Error),
}

/// Writes `ca.pem` (a fresh CA) and `server.pem`/`server.key` (a P-256 certificate for
/// `IP:127.0.0.1` signed by it) into `dir` with `openssl`.
fn make_certificates(dir: &Path) -> io::Result<()> {
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| with_context(e, format!("write {}", ext.display())))?;
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!("req -x509 {ec} -days 2 -subj /CN=crius-e2e-ca -keyout ca.key -out ca.pem"),
        format!("req {ec} -subj /CN=127.0.0.1 -keyout server.key -out server.csr"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.pem"
            .to_owned(),
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| with_context(e, "run openssl".into()))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "openssl {args} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

fn start_once(
    dir: &Path,
    addr: SocketAddr,
    auth: Option<(&str, &str)>,
    tls: bool,
) -> Result<Child, StartError> {
    let config = dir.join("config.yml");
    let storage = dir.join("storage");
    let log = dir.join("registry.log");
    let other = StartError::Other;
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n",
        storage = storage.display(),
    );
    if tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ));
    }
    if let Some((user, password)) = auth {
        let htpasswd = dir.join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .map_err(|e| other(with_context(e, "run htpasswd (apache2-utils)".into())))?;
        if !out.status.success() {
            return Err(other(io::Error::other(format!(
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))));
        }
        fs::write(&htpasswd, &out.stdout)
            .map_err(|e| other(with_context(e, format!("write {}", htpasswd.display()))))?;
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: crius-e2e\n    path: {}\n",
            htpasswd.display()
        ));
    }
    fs::write(&config, yaml)
        .map_err(|e| other(with_context(e, format!("write {}", config.display()))))?;
    let stderr = fs::File::create(&log)
        .map_err(|e| other(with_context(e, format!("create {}", log.display()))))?;
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = spawn_tied_to_process(cmd)
        .map_err(|e| other(with_context(e, format!("spawn {REGISTRY_BIN} serve"))))?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let tail = log_tail(&log);
                let err = io::Error::other(format!(
                    "{REGISTRY_BIN} on {addr} exited with {status} before answering; log tail:\n{tail}"
                ));
                return Err(if tail.contains("address already in use") {
                    StartError::PortTaken(err)
                } else {
                    other(err)
                });
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(other(with_context(e, format!("wait for {REGISTRY_BIN}"))));
            }
        }
        if let Ok(resp) = http_request(addr, "GET", "/v2/", &[], &[]) {
            // An htpasswd registry answers 401 (with the API header) until credentials are sent;
            // Go's TLS server answers plain HTTP with a 400 that says so.
            let ready = if tls {
                resp.status == 400 && String::from_utf8_lossy(&resp.body).contains("HTTPS server")
            } else {
                (resp.status == 200 || resp.status == 401)
                    && resp.header("docker-distribution-api-version") == Some("registry/2.0")
            };
            if ready {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child);
            return Err(other(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{REGISTRY_BIN} on {addr} did not answer GET /v2/ within {READY_TIMEOUT:?}; \
                     log tail:\n{}",
                    log_tail(&log)
                ),
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn kill_and_reap(child: &mut Child) {
    // Errors mean the child is already gone, which is the goal.
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback port that was free a moment ago.
fn free_port() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| with_context(e, "bind 127.0.0.1:0 to pick a port".to_owned()))?;
    listener.local_addr()
}

/// The last ~4 KiB of `path`, or a note saying why it could not be read.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(4096);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `$TMPDIR/crius-e2e-<uid>`, parent of every registry dir and the shared layout.
fn scratch_root() -> io::Result<PathBuf> {
    // std has no getuid(); /proc/self is owned by our effective uid.
    let uid = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    let root = std::env::temp_dir().join(format!("crius-e2e-{uid}"));
    fs::create_dir_all(&root).map_err(|e| with_context(e, format!("create {}", root.display())))?;
    Ok(root)
}

/// Removes `registry-<pid>-*` dirs of processes that no longer exist (left behind when a
/// test process was killed). Best effort: errors are ignored.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("registry-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel SIGKILLs it when this process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so every such
/// child is forked by one dedicated thread that lives as long as the process.
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<io::Result<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("crius-e2e-spawner".to_owned())
            .spawn(move || {
                // Never ends: SPAWNER keeps a sender alive for the life of the process.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
    });
    let spawner = spawner
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("start spawner thread: {e}")))?;

    let parent = std::process::id() as libc::pid_t;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl and
    // getppid, which are async-signal-safe, and builds errors without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names lowercased, in received order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let ctx = |e: io::Error| with_context(e, format!("{method} http://{addr}{path}"));
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(ctx)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(ctx)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(ctx)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(ctx)?;
    stream.write_all(body).map_err(ctx)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(ctx)?;
    parse_response(&raw).map_err(ctx)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad response: {what}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 header"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest).ok_or_else(|| bad("chunked body"))?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("content-length"))?;
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// One architecture-specific manifest listed by a pushed index or manifest list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// `amd64` or `arm64`.
    pub architecture: String,
    /// Media type of the listed manifest.
    pub media_type: String,
    /// Digest of the listed manifest.
    pub digest: String,
}

/// An image or list pushed by [`push_fixtures`], with what the registry must serve for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// `crius-test/busybox`.
    pub repository: String,
    /// `latest` (OCI) or `v2s2` (Docker).
    pub tag: String,
    /// `127.0.0.1:PORT/crius-test/busybox:latest`.
    pub reference: String,
    /// Name of the source image in the [`Layout`] ([`fixtures::BUSYBOX`], ...).
    pub source: &'static str,
    /// Media type of the top-level manifest.
    pub media_type: &'static str,
    /// Digest of the top-level manifest (what `Docker-Content-Digest` must say).
    pub digest: String,
    /// For indexes and manifest lists: the listed manifests, in list order; else empty.
    pub instances: Vec<Instance>,
}

impl Pushed {
    /// Whether this is an index or a manifest list.
    pub fn is_list(&self) -> bool {
        self.media_type == media_type::OCI_INDEX || self.media_type == media_type::DOCKER_LIST
    }
}

/// Pushes every layout image to `registry` in OCI and Docker formats (see the module doc).
pub fn push_fixtures(registry: &Registry, layout: &Layout) -> io::Result<Vec<Pushed>> {
    let digest_file = registry.dir.path().join("pushed.digest");
    let mut pushed = Vec::new();
    for (source, is_list) in [
        (fixtures::BUSYBOX, false),
        (fixtures::LAYERED, false),
        (fixtures::MULTIARCH, true),
    ] {
        let repository = format!("{NAMESPACE}/{source}");
        for (tag, format) in [("latest", None), ("v2s2", Some("v2s2"))] {
            let reference = format!("{}/{repository}:{tag}", registry.addr());
            let mut args: Vec<OsString> =
                vec!["--insecure-policy".into(), "copy".into(), "--quiet".into()];
            args.push("--dest-tls-verify=false".into());
            if is_list {
                args.push("--all".into());
            }
            if let Some(format) = format {
                args.push("--format".into());
                args.push(format.into());
            }
            args.push("--digestfile".into());
            args.push(digest_file.clone().into());
            args.push(layout.oci_reference(source).into());
            args.push(format!("docker://{reference}").into());
            skopeo(&args)?;
            let digest = fs::read_to_string(&digest_file)
                .map_err(|e| with_context(e, format!("read {}", digest_file.display())))?
                .trim()
                .to_owned();
            let media_type = match (is_list, format.is_some()) {
                (false, false) => media_type::OCI_MANIFEST,
                (false, true) => media_type::DOCKER_MANIFEST,
                (true, false) => media_type::OCI_INDEX,
                (true, true) => media_type::DOCKER_LIST,
            };
            let instances = if is_list {
                list_instances(registry, &repository, &digest)?
            } else {
                Vec::new()
            };
            pushed.push(Pushed {
                repository: repository.clone(),
                tag: tag.to_owned(),
                reference,
                source,
                media_type,
                digest,
                instances,
            });
        }
    }
    Ok(pushed)
}

/// Pushes the OCI layout image `layout_ref` (`oci:DIR:NAME`) to `docker://ADDR/REPO:TAG` with
/// skopeo, optionally with `user:password` credentials; returns the manifest digest.
pub fn push_layout(layout_ref: &str, destination: &str, creds: Option<&str>) -> io::Result<String> {
    let tmp = tempfile::tempdir()?;
    let digest_file = tmp.path().join("digest");
    let mut args: Vec<OsString> = vec![
        "--insecure-policy".into(),
        "copy".into(),
        "--quiet".into(),
        "--dest-tls-verify=false".into(),
    ];
    if let Some(creds) = creds {
        args.push("--dest-creds".into());
        args.push(creds.into());
    }
    args.push("--digestfile".into());
    args.push(digest_file.clone().into());
    args.push(layout_ref.into());
    args.push(format!("docker://{destination}").into());
    skopeo(&args)?;
    Ok(fs::read_to_string(&digest_file)?.trim().to_owned())
}

/// The manifests listed by the pushed list `repository@digest`, read back from the registry.
fn list_instances(
    registry: &Registry,
    repository: &str,
    digest: &str,
) -> io::Result<Vec<Instance>> {
    let what = format!("{repository}@{digest}");
    let resp = registry.get_manifest(repository, digest)?;
    if resp.status != 200 {
        return Err(io::Error::other(format!(
            "GET manifest {what}: status {}",
            resp.status
        )));
    }
    let list: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("parse {what}: {e}")))?;
    let manifests = list["manifests"]
        .as_array()
        .ok_or_else(|| io::Error::other(format!("{what} has no manifests array")))?;
    manifests
        .iter()
        .map(|m| {
            let field = |v: &Value| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| io::Error::other(format!("{what}: incomplete entry {m}")))
            };
            Ok(Instance {
                architecture: field(&m["platform"]["architecture"])?,
                media_type: field(&m["mediaType"])?,
                digest: field(&m["digest"])?,
            })
        })
        .collect()
}

/// Runs `skopeo ARGS`, returning stdout; errors name the command line and quote stderr.
pub fn skopeo(args: &[OsString]) -> io::Result<Vec<u8>> {
    let line = format!(
        "{SKOPEO_BIN} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new(SKOPEO_BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| with_context(e, format!("run {line}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let start = stderr.len().saturating_sub(4096);
        let tail = stderr.get(start..).unwrap_or(&stderr);
        return Err(io::Error::other(format!(
            "{line} failed with {}: {}",
            out.status,
            tail.trim()
        )));
    }
    Ok(out.stdout)
}

/// One layout and one registry per test process, holding every fixture image.
#[derive(Debug)]
pub struct Fixture {
    layout: Layout,
    registry: Registry,
    pushed: Vec<Pushed>,
}

static SHARED: OnceLock<Result<Fixture, String>> = OnceLock::new();

/// The process-wide fixture, built and pushed on first use.
///
/// The layout lives in `$CRIUS_E2E_FIXTURES_DIR` if set, else `$TMPDIR/crius-e2e-<uid>/layout`
/// (kept between runs as a cache). The registry is stopped and its dir removed at process
/// exit; if the process is killed instead, the kernel kills the registry and the next
/// [`Registry::start`] removes the dir.
///
/// # Panics
/// If the fixture cannot be set up; the message carries the cause. Use [`try_shared`] to
/// handle the error instead.
pub fn shared() -> &'static Fixture {
    match try_shared() {
        Ok(fixture) => fixture,
        Err(e) => panic!("e2e registry fixture: {e}"),
    }
}

/// Like [`shared`], returning the setup error (the same one on every call).
pub fn try_shared() -> io::Result<&'static Fixture> {
    SHARED
        .get_or_init(|| {
            let fixture = Fixture::setup().map_err(|e| e.to_string())?;
            register_exit_cleanup();
            Ok(fixture)
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

fn register_exit_cleanup() {
    extern "C" fn cleanup() {
        if let Some(Ok(fixture)) = SHARED.get() {
            fixture.registry.stop();
            let _ = fs::remove_dir_all(fixture.registry.dir.path());
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: `cleanup` is a plain `extern "C" fn()` that never unwinds (no panicking calls)
    // and only touches the 'static SHARED; registering it has no other preconditions.
    unsafe {
        // A failed registration only means the dir is swept by the next run instead.
        let _ = libc::atexit(cleanup);
    }
}

impl Fixture {
    fn setup() -> io::Result<Fixture> {
        let dir = match std::env::var_os("CRIUS_E2E_FIXTURES_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => scratch_root()?.join("layout"),
        };
        let layout = fixtures::build_layout(&dir)?;
        let registry = Registry::start()?;
        let pushed = push_fixtures(&registry, &layout)?;
        Ok(Fixture {
            layout,
            registry,
            pushed,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn registry_addr(&self) -> String {
        self.registry.addr()
    }

    /// The running registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The OCI layout the images were pushed from, with their digests.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Everything pushed, in push order.
    pub fn pushed(&self) -> &[Pushed] {
        &self.pushed
    }

    /// The pushed `source` image (a [`fixtures`] ref name) at `tag` (`latest` or `v2s2`).
    pub fn find(&self, source: &str, tag: &str) -> Option<&Pushed> {
        self.pushed
            .iter()
            .find(|p| p.source == source && p.tag == tag)
    }

    fn reference(&self, source: &str, tag: &str) -> String {
        match self.find(source, tag) {
            Some(p) => p.reference.clone(),
            // Unreachable after a successful setup; still a usable (unpullable) reference.
            None => format!("{}/{NAMESPACE}/{source}:{tag}", self.registry_addr()),
        }
    }

    /// `ADDR/crius-test/busybox:latest` (OCI manifest).
    pub fn busybox_ref(&self) -> String {
        self.reference(fixtures::BUSYBOX, "latest")
    }

    /// `ADDR/crius-test/busybox:v2s2` (Docker schema 2 manifest).
    pub fn busybox_v2s2_ref(&self) -> String {
        self.reference(fixtures::BUSYBOX, "v2s2")
    }

    /// `ADDR/crius-test/layered:latest` (OCI manifest, 4 layers with whiteouts).
    pub fn layered_ref(&self) -> String {
        self.reference(fixtures::LAYERED, "latest")
    }

    /// `ADDR/crius-test/layered:v2s2` (Docker schema 2 manifest).
    pub fn layered_v2s2_ref(&self) -> String {
        self.reference(fixtures::LAYERED, "v2s2")
    }

    /// `ADDR/crius-test/multiarch:latest` (OCI index, linux/amd64 + linux/arm64).
    pub fn multiarch_ref(&self) -> String {
        self.reference(fixtures::MULTIARCH, "latest")
    }

    /// `ADDR/crius-test/multiarch:v2s2` (Docker manifest list).
    pub fn multiarch_v2s2_ref(&self) -> String {
        self.reference(fixtures::MULTIARCH, "v2s2")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}junk")
            .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (200, &b"{}"[..], Some("b"))
        );
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"abcde"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
    }
}
