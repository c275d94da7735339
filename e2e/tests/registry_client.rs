//! The registry client against real registries: the e2e loopback `docker-registry` (OCI and
//! Docker formats, multi-arch, mirrors with path prefixes, dead endpoints, htpasswd Basic auth)
//! and a tiny in-process fake for what a real registry will not do on demand (bearer token
//! flow, redirects to another host, tampered blobs).
//!
//! Needs `docker-registry`, `skopeo` and `htpasswd` on the PATH (no root).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crius::config::RegistryConfig;
use crius::error::ErrorKind;
use crius::image::reference::Reference;
use crius::image::registry::{Client, Credentials, Descriptor, Platform, RegistryError};
use crius_e2e::fixtures::{self, media_type};
use crius_e2e::registry::{self, push_layout, Fixture, Registry};

const CONFIG_MAX: u64 = 1 << 20;

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn arm64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: Some("v8".into()),
    }
}

fn insecure() -> RegistryConfig {
    RegistryConfig {
        insecure: true,
        ..Default::default()
    }
}

/// The shared fixture, and a client that reaches it over plain HTTP.
fn setup() -> (&'static Fixture, Client) {
    let fx = registry::shared();
    let mut regs = BTreeMap::new();
    regs.insert(fx.registry_addr(), insecure());
    (fx, Client::new(regs).unwrap())
}

fn parse(s: &str) -> Reference {
    Reference::parse(s, "docker.io").unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A loopback port nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn resolves_oci_manifest_by_tag_and_by_digest() {
    let (fx, client) = setup();
    let busybox = &fx.layout().busybox;
    let r = client
        .resolve(&parse(&fx.busybox_ref()), None, &amd64())
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, busybox.manifest.digest);
    assert_eq!(r.repo_digest, busybox.manifest.digest);
    assert_eq!(r.manifest_media_type, media_type::OCI_MANIFEST);
    assert_eq!(sha256(&r.manifest_bytes), r.manifest_digest);
    assert_eq!(r.config.digest, busybox.config.digest);
    assert_eq!(r.config.size, busybox.config.size);
    let layers: Vec<_> = r.layers.iter().map(|l| l.digest.clone()).collect();
    let want: Vec<_> = busybox
        .layers
        .iter()
        .map(|l| l.blob.digest.clone())
        .collect();
    assert_eq!(layers, want);
    assert_eq!(r.endpoint, fx.registry_addr());

    let by_digest = format!(
        "{}/crius-test/busybox@{}",
        fx.registry_addr(),
        busybox.manifest.digest
    );
    let r = client
        .resolve(&parse(&by_digest), None, &amd64())
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, busybox.manifest.digest);
    assert_eq!(r.repo_digest, busybox.manifest.digest);
    assert_eq!(r.reference.tag, None);
}

#[tokio::test]
async fn resolves_docker_schema2_manifest_by_tag_and_by_digest() {
    let (fx, client) = setup();
    let pushed = fx.find(fixtures::BUSYBOX, "v2s2").unwrap();
    let busybox = &fx.layout().busybox;
    let r = client
        .resolve(&parse(&fx.busybox_v2s2_ref()), None, &amd64())
        .await
        .unwrap();
    assert_eq!(r.manifest_media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(r.manifest_digest, pushed.digest);
    assert_eq!(r.repo_digest, pushed.digest);
    assert_eq!(r.config.digest, busybox.config.digest);
    assert_eq!(r.config.media_type, media_type::DOCKER_CONFIG);
    assert_eq!(r.layers[0].media_type, media_type::DOCKER_LAYER_GZIP);

    let by_digest = parse(&format!(
        "{}/crius-test/busybox@{}",
        fx.registry_addr(),
        pushed.digest
    ));
    let r = client.resolve(&by_digest, None, &amd64()).await.unwrap();
    assert_eq!(r.manifest_digest, pushed.digest);
}

#[tokio::test]
async fn resolves_multiarch_index_and_manifest_list_per_platform() {
    let (fx, client) = setup();
    let index = &fx.layout().multiarch;
    for (reference, tag) in [
        (fx.multiarch_ref(), "latest"),
        (fx.multiarch_v2s2_ref(), "v2s2"),
    ] {
        let pushed = fx.find(fixtures::MULTIARCH, tag).unwrap();
        if tag == "latest" {
            assert_eq!(pushed.digest, index.index.digest);
        }
        for (platform, arch) in [(amd64(), "amd64"), (arm64(), "arm64")] {
            let r = client
                .resolve(&parse(&reference), None, &platform)
                .await
                .unwrap();
            let instance = pushed
                .instances
                .iter()
                .find(|i| i.architecture == arch)
                .unwrap();
            assert_eq!(r.repo_digest, pushed.digest, "{reference} {arch}");
            assert_eq!(r.manifest_digest, instance.digest, "{reference} {arch}");
            assert_eq!(r.manifest_media_type, instance.media_type);
            assert_eq!(
                r.config.digest,
                index.for_arch(arch).unwrap().config.digest,
                "{reference} {arch}"
            );
        }
        let s390x = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let err = client
            .resolve(&parse(&reference), None, &s390x)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("linux/amd64") && msg.contains("linux/arm64"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn fetches_verified_blobs() {
    let (fx, client) = setup();
    let r = client
        .resolve(&parse(&fx.layered_ref()), None, &amd64())
        .await
        .unwrap();
    for (layer, want) in r.layers.iter().zip(&fx.layout().layered.layers) {
        let mut reader = client.fetch_blob(&r, layer).await.unwrap();
        let counter = reader.counter();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(sha256(&bytes), want.blob.digest);
        assert_eq!(bytes.len() as u64, want.blob.size);
        assert_eq!(counter.get(), want.blob.size);
        assert_eq!(reader.bytes_read(), want.blob.size);
    }
    let config = client
        .fetch_blob_bytes(&r, &r.config, CONFIG_MAX)
        .await
        .unwrap();
    assert_eq!(sha256(&config), fx.layout().layered.config.digest);

    // Over the caller's limit: refused before downloading.
    let err = client
        .fetch_blob_bytes(&r, &r.config, r.config.size - 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains(&r.config.digest), "{err}");
}

#[tokio::test]
async fn refuses_blobs_whose_size_or_digest_does_not_match() {
    let (fx, client) = setup();
    let r = client
        .resolve(&parse(&fx.busybox_ref()), None, &amd64())
        .await
        .unwrap();
    // Wrong size: the registry's Content-Length gives it away before any byte is read.
    let mut wrong_size = r.layers[0].clone();
    wrong_size.size -= 1;
    let err = client.fetch_blob(&r, &wrong_size).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let mut config = r.config.clone();
    config.size += 1;
    let err = client
        .fetch_blob_bytes(&r, &config, CONFIG_MAX)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    // A blob the registry does not have.
    let mut missing = r.layers[0].clone();
    missing.digest = sha256(b"not in the registry");
    let err = client.fetch_blob(&r, &missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&missing.digest), "{err}");

    // A digest we cannot verify is refused up front.
    let mut sha512 = r.layers[0].clone();
    sha512.digest = format!("sha512:{}", "a".repeat(128));
    let err = client.fetch_blob(&r, &sha512).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
}

#[tokio::test]
async fn unknown_tags_and_repositories_are_not_found() {
    let (fx, client) = setup();
    for reference in [
        format!("{}/crius-test/busybox:no-such-tag", fx.registry_addr()),
        format!("{}/crius-test/no-such-repo:latest", fx.registry_addr()),
        format!("{}/crius-test/busybox@{}", fx.registry_addr(), sha256(b"x")),
    ] {
        let err = client
            .resolve(&parse(&reference), None, &amd64())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(
            err.to_string().contains(&reference),
            "{err} names {reference}"
        );
    }
}

#[tokio::test]
async fn mirror_with_path_prefix_serves_another_registry() {
    let fx = registry::shared();
    let mirror = format!("{}/crius-test", fx.registry_addr());
    let mut regs = BTreeMap::new();
    regs.insert(
        "registry.example".to_string(),
        RegistryConfig {
            mirrors: vec![mirror.clone()],
            mirror_only: false,
            insecure: true,
            ..Default::default()
        },
    );
    let client = Client::new(regs).unwrap();
    let r = client
        .resolve(&parse("registry.example/busybox:latest"), None, &amd64())
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, fx.layout().busybox.manifest.digest);
    assert_eq!(r.endpoint, format!("{mirror} (mirror of registry.example)"));
    assert_eq!(r.reference.name(), "registry.example/busybox");
    // Blobs come from the mirror too.
    let config = client
        .fetch_blob_bytes(&r, &r.config, CONFIG_MAX)
        .await
        .unwrap();
    assert_eq!(sha256(&config), fx.layout().busybox.config.digest);

    // Insecure set on the mirror's own entry instead of the mirrored host's.
    let mut regs = BTreeMap::new();
    regs.insert(
        "registry.example".to_string(),
        RegistryConfig {
            mirrors: vec![mirror.clone()],
            mirror_only: true,
            insecure: false,
            ..Default::default()
        },
    );
    regs.insert(fx.registry_addr(), insecure());
    let client = Client::new(regs).unwrap();
    let r = client
        .resolve(&parse("registry.example/multiarch:v2s2"), None, &arm64())
        .await
        .unwrap();
    assert_eq!(
        r.repo_digest,
        fx.find(fixtures::MULTIARCH, "v2s2").unwrap().digest
    );
}

#[tokio::test]
async fn dead_mirror_only_is_unavailable_naming_the_mirror() {
    let dead = dead_addr();
    let mut regs = BTreeMap::new();
    regs.insert(
        "registry.example".to_string(),
        RegistryConfig {
            mirrors: vec![format!("{dead}/prefix")],
            mirror_only: true,
            insecure: true,
            ..Default::default()
        },
    );
    let client = Client::new(regs).unwrap();
    let err = client
        .resolve(&parse("registry.example/busybox:latest"), None, &amd64())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{dead}/prefix (mirror of registry.example)")),
        "{msg}"
    );
    assert!(msg.contains("registry.example/busybox:latest"), "{msg}");
    assert!(
        !msg.contains("registry.example:"),
        "the host itself is not tried: {msg}"
    );
}

#[tokio::test]
async fn dead_mirror_falls_back_to_the_host() {
    let fx = registry::shared();
    let dead = dead_addr();
    let mut regs = BTreeMap::new();
    regs.insert(
        fx.registry_addr(),
        RegistryConfig {
            mirrors: vec![dead.clone(), format!("{}/nothing-here", fx.registry_addr())],
            mirror_only: false,
            insecure: true,
            ..Default::default()
        },
    );
    let client = Client::new(regs).unwrap();
    let r = client
        .resolve(&parse(&fx.busybox_ref()), None, &amd64())
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, fx.layout().busybox.manifest.digest);
    assert_eq!(r.endpoint, fx.registry_addr());
}

#[tokio::test]
async fn dead_host_is_unavailable_naming_every_endpoint() {
    let (dead1, dead2) = (dead_addr(), dead_addr());
    let mut regs = BTreeMap::new();
    regs.insert(
        dead1.clone(),
        RegistryConfig {
            mirrors: vec![dead2.clone()],
            mirror_only: false,
            insecure: true,
            ..Default::default()
        },
    );
    let client = Client::new(regs).unwrap();
    let err = client
        .resolve(&parse(&format!("{dead1}/a/b:c")), None, &amd64())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{dead2} (mirror of {dead1})")),
        "{msg}"
    );
    assert!(msg.contains(&format!("; {dead1}")), "{msg}");
}

// ---- a tiny fake registry for token auth, redirects and tampered content ----

#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    authorization: Option<String>,
    body: String,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    }
}

type Handler = Arc<dyn Fn(&Request, SocketAddr) -> Response + Send + Sync>;

struct Fake {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// Serves `handler` on a loopback port, one request per connection.
    async fn start(handler: Handler) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log2.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut conn).await else {
                        return; // not HTTP (a TLS hello): just close
                    };
                    log.lock().unwrap().push(req.clone());
                    let resp = handler(&req, addr);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        resp.status,
                        resp.body.len()
                    );
                    for (k, v) in &resp.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&resp.body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Fake { addr, log }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if !raw[0].is_ascii_uppercase() {
            return None;
        }
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let len: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = raw[end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Request {
        method,
        target,
        authorization: header("authorization"),
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn layout_blob(digest: &str) -> Vec<u8> {
    let hex = digest.trim_start_matches("sha256:");
    let path = registry::shared()
        .layout()
        .dir
        .join("blobs/sha256")
        .join(hex);
    std::fs::read(path).unwrap()
}

/// A registry at `/v2/` that wants `Bearer good-token` (from `/token`, for Basic `u:p` or the
/// OAuth2 refresh token `refresh-me`), serves busybox's manifest and config, and redirects
/// layer blobs to `storage`. Layer `tampered` is served with other content of the same size.
fn token_registry(storage: SocketAddr, tampered: String) -> Handler {
    let busybox = registry::shared().layout().busybox.clone();
    let manifest = layout_blob(&busybox.manifest.digest);
    let config = layout_blob(&busybox.config.digest);
    Arc::new(move |req: &Request, me: SocketAddr| {
        if req.target.starts_with("/token") {
            let basic_ok = req.authorization.as_deref() == Some("Basic dTpw"); // u:p
            let refresh_ok = req.method == "POST"
                && req.body.contains("grant_type=refresh_token")
                && req.body.contains("refresh_token=refresh-me")
                && req
                    .body
                    .contains("scope=repository%3Acrius-test%2Fbusybox%3Apull");
            return if refresh_ok {
                response(200, &[], r#"{"access_token":"good-token","expires_in":60}"#)
            } else if basic_ok && req.method == "GET" {
                response(200, &[], r#"{"token":"good-token"}"#)
            } else {
                response(
                    401,
                    &[],
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials, friend"}]}"#,
                )
            };
        }
        if req.authorization.as_deref() != Some("Bearer good-token") {
            let challenge = format!(
                r#"Bearer realm="http://{me}/token",service="fake,registry",scope="repository:crius-test/busybox:pull""#
            );
            return response(
                401,
                &[("WWW-Authenticate", challenge.as_str())],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        let path = req.target.as_str();
        if path == "/v2/crius-test/busybox/manifests/latest" {
            return response(
                200,
                &[("Content-Type", media_type::OCI_MANIFEST)],
                manifest.clone(),
            );
        }
        if path == format!("/v2/crius-test/busybox/blobs/{}", busybox.config.digest) {
            return response(200, &[], config.clone());
        }
        if let Some(digest) = path.strip_prefix("/v2/crius-test/busybox/blobs/") {
            if digest == tampered {
                let size = busybox.layers[0].blob.size as usize;
                return response(200, &[], vec![b'x'; size]);
            }
            let location = format!("http://{storage}/storage/{digest}?signed=1");
            return response(307, &[("Location", location.as_str())], "");
        }
        response(
            404,
            &[],
            r#"{"errors":[{"code":"NOT_FOUND","message":"nope"}]}"#,
        )
    })
}

/// Serves layout blobs at `/storage/<digest>` to anyone.
fn storage() -> Handler {
    Arc::new(|req: &Request, _| {
        let digest = req
            .target
            .trim_start_matches("/storage/")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        response(200, &[], layout_blob(&digest))
    })
}

fn fake_client(addr: SocketAddr) -> Client {
    let mut regs = BTreeMap::new();
    regs.insert(addr.to_string(), insecure());
    Client::new(regs).unwrap()
}

#[tokio::test]
async fn basic_auth_registry() {
    let fx = registry::shared();
    let busybox = fx.layout().busybox.clone();
    // The real thing: distribution behind htpasswd answers `Basic realm=...` challenges.
    let reg = Registry::start_with_auth("crius", "s3cret").unwrap();
    let name = format!("{}/private/busybox:latest", reg.addr());
    push_layout(
        &fx.layout().oci_reference(fixtures::BUSYBOX),
        &name,
        Some("crius:s3cret"),
    )
    .unwrap();
    let mut regs = BTreeMap::new();
    regs.insert(reg.addr(), insecure());
    let client = Client::new(regs).unwrap();
    let reference = parse(&name);
    let good = Credentials {
        username: "crius".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    // The same as a docker auth-file `auth` field.
    let encoded = Credentials {
        auth: "Y3JpdXM6czNjcmV0".into(),
        ..Default::default()
    };
    for creds in [&good, &encoded] {
        let r = client
            .resolve(&reference, Some(creds), &amd64())
            .await
            .unwrap();
        assert_eq!(r.manifest_digest, busybox.manifest.digest);
        let config = client
            .fetch_blob_bytes(&r, &r.config, CONFIG_MAX)
            .await
            .unwrap();
        assert_eq!(sha256(&config), busybox.config.digest);
    }
    let bad = Credentials {
        username: "crius".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    for creds in [None, Some(&bad)] {
        let err = client
            .resolve(&reference, creds, &amd64())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&reg.addr()), "{msg}");
        assert!(msg.contains("authentication required"), "{msg}");
    }
}

#[tokio::test]
async fn bearer_token_flow_and_cross_host_redirects() {
    let busybox = registry::shared().layout().busybox.clone();
    let store = Fake::start(storage()).await;
    let reg = Fake::start(token_registry(store.addr, String::new())).await;
    let client = fake_client(reg.addr);
    let reference = parse(&format!("{}/crius-test/busybox:latest", reg.addr));
    let creds = Credentials {
        username: "u".into(),
        password: "p".into(),
        ..Default::default()
    };
    let r = client
        .resolve(&reference, Some(&creds), &amd64())
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, busybox.manifest.digest);

    let log = reg.requests();
    let manifests: Vec<_> = log
        .iter()
        .filter(|r| r.target.contains("/manifests/"))
        .collect();
    assert_eq!(manifests.len(), 2, "{log:?}");
    assert_eq!(manifests[0].authorization, None);
    assert_eq!(
        manifests[1].authorization.as_deref(),
        Some("Bearer good-token")
    );
    let token = log.iter().find(|r| r.target.starts_with("/token")).unwrap();
    assert_eq!(
        token.target,
        "/token?service=fake%2Cregistry&scope=repository%3Acrius-test%2Fbusybox%3Apull"
    );

    // Blobs reuse the cached token; the redirect to storage carries no Authorization.
    let config = client
        .fetch_blob_bytes(&r, &r.config, CONFIG_MAX)
        .await
        .unwrap();
    assert_eq!(sha256(&config), busybox.config.digest);
    let mut reader = client.fetch_blob(&r, &r.layers[0]).await.unwrap();
    let mut layer = Vec::new();
    reader.read_to_end(&mut layer).await.unwrap();
    assert_eq!(sha256(&layer), busybox.layers[0].blob.digest);
    let tokens = reg
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/token"))
        .count();
    assert_eq!(tokens, 1, "the token is cached for the pull");
    let stored = store.requests();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        stored[0].authorization, None,
        "Authorization leaked across hosts"
    );
}

#[tokio::test]
async fn identity_token_uses_the_oauth2_refresh_flow() {
    let store = Fake::start(storage()).await;
    let reg = Fake::start(token_registry(store.addr, String::new())).await;
    let client = fake_client(reg.addr);
    let reference = parse(&format!("{}/crius-test/busybox:latest", reg.addr));
    let creds = Credentials {
        identity_token: "refresh-me".into(),
        ..Default::default()
    };
    client
        .resolve(&reference, Some(&creds), &amd64())
        .await
        .unwrap();
    assert!(reg.requests().iter().any(|r| r.method == "POST"));
}

#[tokio::test]
async fn bearer_without_or_with_bad_credentials_is_unauthenticated() {
    let store = Fake::start(storage()).await;
    let reg = Fake::start(token_registry(store.addr, String::new())).await;
    let client = fake_client(reg.addr);
    let reference = parse(&format!("{}/crius-test/busybox:latest", reg.addr));
    let bad = Credentials {
        username: "u".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    for creds in [None, Some(&bad)] {
        let err = client
            .resolve(&reference, creds, &amd64())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        assert!(err.to_string().contains("bad credentials, friend"), "{err}");
    }

    // A registry token is sent as is (and this one is not accepted).
    let rt = Credentials {
        registry_token: "not-good".into(),
        ..Default::default()
    };
    let err = client
        .resolve(&reference, Some(&rt), &amd64())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("authentication required"), "{err}");
    let last = reg.requests().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer not-good"));
}

#[tokio::test]
async fn tampered_blob_fails_the_read_with_invalid_data() {
    let busybox = registry::shared().layout().busybox.clone();
    let tampered = busybox.layers[0].blob.digest.clone();
    let store = Fake::start(storage()).await;
    let reg = Fake::start(token_registry(store.addr, tampered.clone())).await;
    let client = fake_client(reg.addr);
    let creds = Credentials {
        username: "u".into(),
        password: "p".into(),
        ..Default::default()
    };
    let reference = parse(&format!("{}/crius-test/busybox:latest", reg.addr));
    let r = client
        .resolve(&reference, Some(&creds), &amd64())
        .await
        .unwrap();
    let mut reader = client.fetch_blob(&r, &r.layers[0]).await.unwrap();
    let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(&tampered), "{err}");
    // Never EOF afterwards.
    let err = reader.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn manifest_that_does_not_match_its_digest_is_refused() {
    let busybox = registry::shared().layout().busybox.clone();
    let manifest = layout_blob(&busybox.manifest.digest);
    let wrong = sha256(b"something else");
    let wrong2 = wrong.clone();
    let reg = Fake::start(Arc::new(move |req: &Request, _| {
        let headers = [
            ("Content-Type", media_type::OCI_MANIFEST),
            ("Docker-Content-Digest", wrong2.as_str()),
        ];
        match req.target.as_str() {
            "/v2/a/b/manifests/latest" => response(200, &headers, manifest.clone()),
            t if t.starts_with("/v2/a/b/manifests/sha256:") => {
                response(200, &headers[..1], manifest.clone())
            }
            "/v2/a/b/manifests/schema1" => response(
                200,
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )],
                r#"{"schemaVersion":1}"#,
            ),
            "/v2/a/b/manifests/garbage" => response(200, &[], "{not json"),
            "/v2/a/b/manifests/huge" => response(200, &[], vec![b' '; 5 << 20]),
            "/v2/a/b/manifests/broken" => response(502, &[], "bad gateway"),
            _ => response(404, &[], ""),
        }
    }))
    .await;
    let client = fake_client(reg.addr);
    let at = |r: &str| parse(&format!("{}/a/b{r}", reg.addr));

    // By tag: Docker-Content-Digest disagrees with the bytes.
    let err = client
        .resolve(&at(":latest"), None, &amd64())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains(&wrong), "{err}");
    // By digest: the bytes must hash to the reference's digest.
    let err = client
        .resolve(&at(&format!("@{wrong}")), None, &amd64())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

    for (tag, kind, needle) in [
        (
            ":schema1",
            ErrorKind::FailedPrecondition,
            "schema1 is not supported",
        ),
        (":garbage", ErrorKind::FailedPrecondition, "not valid JSON"),
        (":huge", ErrorKind::FailedPrecondition, "larger than"),
        (":broken", ErrorKind::Unavailable, "502"),
    ] {
        let err = client.resolve(&at(tag), None, &amd64()).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{tag}: {err}");
        assert!(err.to_string().contains(needle), "{tag}: {err}");
    }
}

#[test]
fn descriptor_serde_round_trip() {
    let d: Descriptor = serde_json::from_str(
        r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:00","size":3}"#,
    )
    .unwrap();
    assert_eq!(d.size, 3);
    let back = serde_json::to_value(&d).unwrap();
    assert_eq!(
        back["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
}
