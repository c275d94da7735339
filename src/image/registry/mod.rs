//! Registry client (OCI distribution protocol).
//!
//! Owns talking to registries: resolving a reference to one platform-specific image manifest
//! (through the host's mirrors, then the host), authentication, and streaming verified blobs.
//! Every manifest is checked against its digest and every blob against its descriptor before
//! anything downstream trusts it. Must not know CRI types, the image store or unpacking: it
//! hands out bytes and descriptors, nothing is written to disk here.
//!
//! Submodules: [`endpoint`] (mirror order and URLs), [`auth`] (challenges and tokens),
//! [`manifest`] (media types, platform selection), [`blob`] (the verifying reader),
//! [`error`] (error kinds).

pub mod auth;
pub mod blob;
pub mod endpoint;
pub mod error;
pub mod manifest;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::TryStreamExt;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::image::reference::Reference;
use auth::Session;
use blob::sha256_digest;
pub use endpoint::Registries;
use endpoint::{endpoints, Endpoint};

pub use auth::Credentials;
pub use blob::{BlobReader, ByteCounter};
pub use error::RegistryError;
pub use manifest::{Descriptor, Platform};

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// TCP/TLS connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for any single read (a stalled body fails after this).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Overall deadline of a manifest request (blobs have none: they can be large).
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest error body read to quote the registry's message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Header with the digest the registry computed for a manifest.
const CONTENT_DIGEST: &str = "docker-content-digest";

/// A registry client; cheap to share behind an `Arc`.
pub struct Client {
    registries: RwLock<Registries>,
    /// Verifies TLS certificates.
    secure: reqwest::Client,
    /// For `insecure` endpoints: no certificate verification.
    insecure: reqwest::Client,
    /// Verifying clients that also trust a `ca_file`, by path; emptied on reload.
    with_ca: Mutex<HashMap<PathBuf, reqwest::Client>>,
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("crius/", env!("CARGO_PKG_VERSION")))
}

/// A reference resolved to one platform-specific image manifest, and how to reach its blobs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub reference: Reference,
    /// Digest the reference resolved to at the registry: the index/list digest for a
    /// multi-arch image, else the manifest digest. This is the repo digest kubelet sees.
    pub repo_digest: String,
    /// The platform-specific image manifest.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Human-readable: `127.0.0.1:5000/k8s (mirror of registry.k8s.io)`.
    pub endpoint: String,
    source: Source,
}

/// The endpoint that served a manifest: where its blobs come from, with the pull's auth state.
#[derive(Debug, Clone)]
struct Source {
    endpoint: Endpoint,
    scheme: &'static str,
    http: reqwest::Client,
    session: Arc<Session>,
}

impl Source {
    fn repository(&self, reference: &Reference) -> String {
        self.endpoint.repository(&reference.repository)
    }
}

/// A verifying client that trusts the CA certificates in `pem` (read from `path`) besides
/// the built-in roots.
fn client_with_ca(path: &Path, pem: &[u8]) -> Result<reqwest::Client, RegistryError> {
    let bad = |detail: String| RegistryError::CaFile {
        path: path.to_path_buf(),
        detail,
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| bad(error_chain(&e)))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    certs
        .into_iter()
        .fold(client_builder(), |b, cert| b.add_root_certificate(cert))
        .build()
        .map_err(|e| bad(error_chain(&e)))
}

/// Why one request failed: `Transport` (no HTTP answer) lets an insecure endpoint fall back from
/// TLS to plain HTTP.
enum Failure {
    Transport { timeout: bool, error: RegistryError },
    Registry(RegistryError),
}

impl From<Failure> for RegistryError {
    fn from(f: Failure) -> RegistryError {
        match f {
            Failure::Transport { error, .. } | Failure::Registry(error) => error,
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure::Registry(e)
    }
}

/// A manifest fetched and verified.
struct Fetched {
    bytes: Vec<u8>,
    digest: String,
    content_type: Option<String>,
}

impl Client {
    pub fn new(registries: impl Into<Registries>) -> Result<Client, RegistryError> {
        let build_err = |e: reqwest::Error| RegistryError::Client(error_chain(&e));
        Ok(Client {
            registries: RwLock::new(registries.into()),
            secure: client_builder().build().map_err(build_err)?,
            insecure: client_builder()
                .danger_accept_invalid_certs(true)
                .build()
                .map_err(build_err)?,
            with_ca: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the per-host settings (SIGHUP reload); pulls in flight keep their endpoints.
    /// `ca_file`s are read again at their next use.
    pub fn set_registries(&self, registries: impl Into<Registries>) {
        let mut guard = self.registries.write().unwrap_or_else(|p| p.into_inner());
        *guard = registries.into();
        self.with_ca
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The HTTP client for `endpoint`: no verification if insecure, else the built-in roots
    /// plus its `ca_file` (read once, then cached until a reload).
    async fn http_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, RegistryError> {
        if endpoint.insecure {
            return Ok(self.insecure.clone());
        }
        let Some(path) = &endpoint.ca_file else {
            return Ok(self.secure.clone());
        };
        let cached = self
            .with_ca
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned();
        if let Some(client) = cached {
            return Ok(client);
        }
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| RegistryError::CaFile {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let client = client_with_ca(path, &pem)?;
        self.with_ca
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone(), client.clone());
        Ok(client)
    }

    fn endpoints_for(&self, registry: &str) -> Vec<Endpoint> {
        let guard = self.registries.read().unwrap_or_else(|p| p.into_inner());
        endpoints(&guard, registry)
    }

    /// Resolves `reference` to one image manifest for `platform`, trying the host's mirrors in
    /// order, then the host itself unless `mirror_only`. Every manifest is verified against
    /// its digest (the reference's, else `Docker-Content-Digest` when present).
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let session = Arc::new(Session::new(credentials.cloned()));
        let mut failures: Vec<(Endpoint, RegistryError)> = Vec::new();
        for endpoint in self.endpoints_for(&reference.registry) {
            let http = match self.http_for(&endpoint).await {
                Ok(http) => http,
                Err(e) => {
                    failures.push((endpoint, e));
                    continue;
                }
            };
            match self
                .resolve_at(&endpoint, &http, &session, reference, platform)
                .await
            {
                Ok(resolved) => {
                    tracing::debug!(reference = %reference, endpoint = %resolved.endpoint,
                        repo_digest = %resolved.repo_digest, "reference resolved");
                    return Ok(resolved);
                }
                Err(e) => {
                    tracing::debug!(reference = %reference, endpoint = %endpoint.label(),
                        error = %e, "endpoint failed");
                    failures.push((endpoint, e));
                }
            }
        }
        Err(combine_failures(reference, failures))
    }

    /// Resolves on one endpoint, trying its URL schemes in order.
    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        http: &reqwest::Client,
        session: &Arc<Session>,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let schemes = endpoint.schemes();
        let mut last = None;
        for (i, scheme) in schemes.iter().enumerate() {
            let source = Source {
                endpoint: endpoint.clone(),
                scheme,
                http: http.clone(),
                session: session.clone(),
            };
            let top = match self
                .fetch_manifest(
                    &source,
                    reference,
                    reference.manifest_reference(),
                    reference.digest.as_deref(),
                )
                .await
            {
                Ok(f) => f,
                Err(Failure::Transport { timeout, error }) if !timeout && i + 1 < schemes.len() => {
                    tracing::debug!(endpoint = %endpoint.label(), %scheme, error = %error,
                        "no answer, trying the next scheme");
                    last = Some(error);
                    continue;
                }
                Err(f) => return Err(f.into()),
            };
            return self.finish_resolve(source, reference, platform, top).await;
        }
        Err(last.unwrap_or_else(|| RegistryError::Client("endpoint has no URL scheme".into())))
    }

    /// From the top-level manifest to the platform's image manifest.
    async fn finish_resolve(
        &self,
        source: Source,
        reference: &Reference,
        platform: &Platform,
        top: Fetched,
    ) -> Result<Resolved, RegistryError> {
        let what = reference.to_string();
        let (media_type, parsed) = manifest::parse(&top.bytes, top.content_type.as_deref(), &what)?;
        let repo_digest = top.digest.clone();
        let (image, media_type, parsed) = match parsed {
            manifest::Parsed::Index { manifests } => {
                let chosen = manifest::select(&manifests, platform, &what)?.clone();
                manifest::check_descriptor(&chosen, &what)?;
                let sub_what = reference.digested(&chosen.digest);
                let fetched = self
                    .fetch_manifest(&source, reference, &chosen.digest, Some(&chosen.digest))
                    .await?;
                if fetched.bytes.len() as u64 != chosen.size {
                    return Err(RegistryError::Size {
                        what: sub_what,
                        detail: format!(
                            "manifest is {} bytes, the index says {}",
                            fetched.bytes.len(),
                            chosen.size
                        ),
                    });
                }
                let (mt, parsed) =
                    manifest::parse(&fetched.bytes, fetched.content_type.as_deref(), &sub_what)?;
                if manifest::is_index(&mt) {
                    return Err(RegistryError::BadContent {
                        what: sub_what,
                        detail: "nested image indexes are not supported".into(),
                    });
                }
                (fetched, mt, parsed)
            }
            parsed => (top, media_type, parsed),
        };
        let manifest::Parsed::Image { config, layers } = parsed else {
            return Err(RegistryError::BadContent {
                what,
                detail: "expected an image manifest".into(),
            });
        };
        Ok(Resolved {
            reference: reference.clone(),
            repo_digest,
            manifest_digest: image.digest,
            manifest_media_type: media_type,
            manifest_bytes: image.bytes,
            config,
            layers,
            endpoint: source.endpoint.label(),
            source,
        })
    }

    /// GETs manifest `manifest_ref` (tag or digest) and verifies it: against `expected` when
    /// given, else against `Docker-Content-Digest` when the registry sends one.
    async fn fetch_manifest(
        &self,
        source: &Source,
        reference: &Reference,
        manifest_ref: &str,
        expected: Option<&str>,
    ) -> Result<Fetched, Failure> {
        let repository = source.repository(reference);
        let url = source
            .endpoint
            .manifest_url(source.scheme, &reference.repository, manifest_ref);
        let what = if manifest_ref.starts_with("sha256:") {
            reference.digested(manifest_ref)
        } else {
            reference.to_string()
        };
        let response = send(
            source,
            &repository,
            &url,
            Some(manifest::ACCEPT),
            Some(MANIFEST_TIMEOUT),
            &what,
        )
        .await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(status_error(source, &what, response, "manifest")
                .await
                .into());
        }
        if let Some(len) = response.content_length() {
            if len > MAX_MANIFEST_BYTES as u64 {
                return Err(too_large_manifest(&what, len).into());
            }
        }
        let headers = response.headers().clone();
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge(n) => Failure::Registry(too_large_manifest(&what, n as u64)),
                ReadError::Http(e) => transport_failure(source, &what, &e),
            })?;
        let digest = sha256_digest(&bytes);
        let claimed = header_str(&headers, CONTENT_DIGEST);
        let expected = expected.or(claimed.filter(|d| d.starts_with("sha256:")));
        if let Some(expected) = expected {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {what} from {}", source.endpoint.label()),
                    expected: expected.to_string(),
                    actual: digest,
                }
                .into());
            }
        }
        Ok(Fetched {
            bytes,
            digest,
            content_type: header_str(&headers, CONTENT_TYPE.as_str()).map(str::to_string),
        })
    }

    /// Streams blob `descriptor` from the endpoint that served `resolved`'s manifest. The
    /// reader verifies digest and size as it goes (see [`BlobReader`]).
    pub async fn fetch_blob(
        &self,
        resolved: &Resolved,
        descriptor: &Descriptor,
    ) -> Result<BlobReader, RegistryError> {
        let response = self.blob_response(resolved, descriptor).await?;
        let stream = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)));
        let reader = tokio_util::io::StreamReader::new(stream);
        Ok(BlobReader::new(
            Box::pin(reader),
            &descriptor.digest,
            descriptor.size,
        ))
    }

    /// A small verified blob (the image config) in memory; refuses more than `max` bytes.
    pub async fn fetch_blob_bytes(
        &self,
        resolved: &Resolved,
        descriptor: &Descriptor,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {}", descriptor.digest);
        if descriptor.size > max {
            return Err(RegistryError::Size {
                what,
                detail: format!("{} bytes is more than the {max} accepted", descriptor.size),
            });
        }
        let response = self.blob_response(resolved, descriptor).await?;
        let limit = usize::try_from(descriptor.size).unwrap_or(usize::MAX);
        let bytes = read_limited(response, limit).await.map_err(|e| match e {
            ReadError::TooLarge(_) => RegistryError::Size {
                what: what.clone(),
                detail: format!(
                    "more than the {} bytes its descriptor says",
                    descriptor.size
                ),
            },
            ReadError::Http(e) => transport_failure(&resolved.source, &what, &e).into(),
        })?;
        if bytes.len() as u64 != descriptor.size {
            return Err(RegistryError::Size {
                what,
                detail: format!(
                    "truncated: got {} of {} bytes",
                    bytes.len(),
                    descriptor.size
                ),
            });
        }
        let actual = sha256_digest(&bytes);
        if actual != descriptor.digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The `200 OK` response for a blob GET (redirects followed by reqwest, which drops the
    /// `Authorization` header when a redirect leaves the host).
    async fn blob_response(
        &self,
        resolved: &Resolved,
        descriptor: &Descriptor,
    ) -> Result<reqwest::Response, RegistryError> {
        let what = format!("blob {}", descriptor.digest);
        manifest::check_descriptor(descriptor, &what)?;
        let source = &resolved.source;
        let repository = source.repository(&resolved.reference);
        let url = source.endpoint.blob_url(
            source.scheme,
            &resolved.reference.repository,
            &descriptor.digest,
        );
        let response = send(source, &repository, &url, None, None, &what).await?;
        if response.status() != StatusCode::OK {
            return Err(status_error(source, &what, response, "blob").await);
        }
        if let Some(len) = response.content_length() {
            if len != descriptor.size {
                return Err(RegistryError::Size {
                    what,
                    detail: format!(
                        "{} answered Content-Length {len}, the descriptor says {}",
                        source.endpoint.label(),
                        descriptor.size
                    ),
                });
            }
        }
        Ok(response)
    }
}

/// One GET with the pull's cached authorization; on 401 answers the challenge once and retries.
async fn send(
    source: &Source,
    repository: &str,
    url: &str,
    accept: Option<&str>,
    timeout: Option<Duration>,
    what: &str,
) -> Result<reqwest::Response, Failure> {
    let host = &source.endpoint.host;
    let mut fresh_auth = false;
    loop {
        let mut request = source.http.get(url);
        if let Some(a) = accept {
            request = request.header(ACCEPT, a);
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        if let Some(auth) = source.session.cached(host, repository) {
            request = request.header(AUTHORIZATION, auth);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_failure(source, what, &e))?;
        let status = response.status();
        tracing::debug!(endpoint = %source.endpoint.label(), %url, status = status.as_u16(), "registry request");
        if status != StatusCode::UNAUTHORIZED || fresh_auth {
            return Ok(response);
        }
        let challenges: Vec<auth::Challenge> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_www_authenticate)
            .collect();
        let authorization = source
            .session
            .authorize(&source.http, &challenges, host, repository, what)
            .await?;
        if authorization.is_none() {
            // Nothing to answer with: report the 401 as is.
            return Ok(response);
        }
        fresh_auth = true;
    }
}

/// The error for a non-200 answer, quoting the registry's message.
async fn status_error(
    source: &Source,
    what: &str,
    response: reqwest::Response,
    object: &str,
) -> RegistryError {
    let status = response.status();
    let body = read_limited(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let message = error_message(status, &body);
    let label = source.endpoint.label();
    let what = what.to_string();
    match status.as_u16() {
        401 => RegistryError::Unauthenticated {
            what,
            host: label,
            message: if source.session.has_credentials() {
                message
            } else {
                format!("{message} (no credentials were given)")
            },
        },
        403 => RegistryError::PermissionDenied {
            what,
            host: label,
            message,
        },
        404 => RegistryError::NotFound {
            what,
            detail: format!("{object} unknown to {label}: {message}"),
        },
        429 | 500..=599 => RegistryError::Unavailable {
            what,
            detail: format!("{label}: HTTP {}: {message}", status.as_u16()),
        },
        s => RegistryError::Http {
            what,
            host: label,
            status: s,
            message,
        },
    }
}

fn transport_failure(source: &Source, what: &str, e: &reqwest::Error) -> Failure {
    let error = RegistryError::Unavailable {
        what: what.to_string(),
        detail: format!(
            "{} ({}): {}",
            source.endpoint.label(),
            source.scheme,
            error_chain(e)
        ),
    };
    if e.status().is_some() {
        Failure::Registry(error)
    } else {
        Failure::Transport {
            timeout: e.is_timeout(),
            error,
        }
    }
}

fn too_large_manifest(what: &str, len: u64) -> RegistryError {
    RegistryError::Size {
        what: what.to_string(),
        detail: format!("manifest of {len} bytes is larger than the {MAX_MANIFEST_BYTES} accepted"),
    }
}

/// The final error once every endpoint failed.
///
/// All "not found" → NotFound. Else the host's own answer if it answered (NotFound listing
/// every endpoint, or its auth/content error as is). Else, if anything was unreachable,
/// Unavailable listing every endpoint and its failure. Else the last (mirror-only) failure.
fn combine_failures(
    reference: &Reference,
    mut failures: Vec<(Endpoint, RegistryError)>,
) -> RegistryError {
    let listing = |failures: &[(Endpoint, RegistryError)]| {
        failures
            .iter()
            .map(|(ep, e)| {
                let (label, detail) = (ep.label(), inner_detail(e));
                if detail.contains(&label) {
                    detail
                } else {
                    format!("{label}: {detail}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if failures.is_empty() {
        return RegistryError::Unavailable {
            what: reference.to_string(),
            detail: "no endpoint to try".into(),
        };
    }
    if failures
        .iter()
        .all(|(_, e)| matches!(e, RegistryError::NotFound { .. }))
    {
        return RegistryError::NotFound {
            what: reference.to_string(),
            detail: listing(&failures),
        };
    }
    // The host itself is the authority: its answer wins unless it could not be reached.
    let upstream = failures
        .iter()
        .position(|(ep, e)| ep.mirror_of.is_none() && !e.is_unavailable());
    if let Some(pos) = upstream {
        if matches!(failures[pos].1, RegistryError::NotFound { .. }) {
            return RegistryError::NotFound {
                what: reference.to_string(),
                detail: listing(&failures),
            };
        }
        return failures.swap_remove(pos).1;
    }
    if failures.iter().any(|(_, e)| e.is_unavailable()) {
        return RegistryError::Unavailable {
            what: reference.to_string(),
            detail: listing(&failures),
        };
    }
    match failures.pop() {
        Some((_, e)) => e,
        None => RegistryError::Client("no failures".into()),
    }
}

/// An error's message without the leading "what": for listing several endpoints' failures.
fn inner_detail(e: &RegistryError) -> String {
    match e {
        RegistryError::NotFound { detail, .. } | RegistryError::Unavailable { detail, .. } => {
            detail.clone()
        }
        other => other.to_string(),
    }
}

/// The registry's message: `errors[0].message` (with its code) of a distribution error body,
/// else the status and the start of the body.
pub(crate) fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
        #[serde(default)]
        details: String,
        #[serde(default)]
        error: String,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(b) = serde_json::from_slice::<Body>(body) {
        if let Some(first) = b.errors.first() {
            return match (first.code.is_empty(), first.message.is_empty()) {
                (false, false) => format!("{}: {}", first.code, first.message),
                (true, false) => first.message.clone(),
                (false, true) => first.code.clone(),
                (true, true) => status.to_string(),
            };
        }
        if !b.details.is_empty() {
            return b.details;
        }
        if !b.error.is_empty() {
            return b.error;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        let cut: String = text.chars().take(200).collect();
        format!("{status}: {cut}")
    }
}

/// A reqwest error with its sources (reqwest's own message is terse).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

pub(crate) enum ReadError {
    TooLarge(usize),
    Http(reqwest::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge(n) => write!(f, "response larger than {n} bytes"),
            ReadError::Http(e) => f.write_str(&error_chain(e)),
        }
    }
}

/// Reads a body, refusing more than `max` bytes (reports the count seen when over).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if out.len() + chunk.len() > max {
            return Err(ReadError::TooLarge(out.len() + chunk.len()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;
    use crate::error::ErrorKind;
    use std::collections::BTreeMap;

    fn ep(host: &str, mirror: bool) -> Endpoint {
        Endpoint {
            host: host.into(),
            prefix: String::new(),
            insecure: false,
            mirror_of: mirror.then(|| "up.example".to_string()),
            ca_file: None,
        }
    }

    fn nf() -> RegistryError {
        RegistryError::NotFound {
            what: "r".into(),
            detail: "manifest unknown".into(),
        }
    }

    fn down(d: &str) -> RegistryError {
        RegistryError::Unavailable {
            what: "r".into(),
            detail: d.into(),
        }
    }

    #[test]
    fn combines_endpoint_failures() {
        let r = Reference::parse("up.example/a:t", "docker.io").unwrap();
        let e = combine_failures(
            &r,
            vec![(ep("m1", true), nf()), (ep("up.example", false), nf())],
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("up.example/a:t"), "{e}");

        let e = combine_failures(
            &r,
            vec![
                (ep("m1", true), down("connection refused")),
                (ep("m2", true), nf()),
            ],
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let msg = e.to_string();
        assert!(
            msg.contains("m1 (mirror of up.example): connection refused"),
            "{msg}"
        );
        assert!(
            msg.contains("m2 (mirror of up.example): manifest unknown"),
            "{msg}"
        );

        // The host's own definitive answer wins over unreachable mirrors.
        let denied = RegistryError::PermissionDenied {
            what: "r".into(),
            host: "up.example".into(),
            message: "denied".into(),
        };
        let e = combine_failures(
            &r,
            vec![
                (ep("m1", true), down("x")),
                (ep("up.example", false), denied),
            ],
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);

        // Mirror unreachable, host says not found: not found.
        let e = combine_failures(
            &r,
            vec![(ep("m1", true), down("x")), (ep("up.example", false), nf())],
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.to_string().contains("m1 (mirror of up.example): x"),
            "{e}"
        );

        // Mirror not found, host unreachable: unavailable (we could not ask the authority).
        let e = combine_failures(
            &r,
            vec![
                (ep("m1", true), nf()),
                (ep("up.example", false), down("dns")),
            ],
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn quotes_registry_error_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, body),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, b""),
            "401 Unauthorized"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>oops</html>"),
            "502 Bad Gateway: <html>oops</html>"
        );
        assert_eq!(
            error_message(
                StatusCode::UNAUTHORIZED,
                br#"{"details":"incorrect username or password"}"#
            ),
            "incorrect username or password"
        );
        let long = "x".repeat(10_000);
        assert!(error_message(StatusCode::BAD_REQUEST, long.as_bytes()).len() < 300);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let path = Path::new("/etc/crius/ca.pem");
        for pem in [&b""[..], b"not a certificate"] {
            let err = client_with_ca(path, pem).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
            assert!(
                err.to_string().contains("ca_file /etc/crius/ca.pem"),
                "{err}"
            );
        }
    }

    #[test]
    fn set_registries_changes_endpoints() {
        let client = Client::new(BTreeMap::new()).unwrap();
        assert_eq!(
            client.endpoints_for("docker.io")[0].host,
            "registry-1.docker.io"
        );
        let mut regs = BTreeMap::new();
        regs.insert(
            "docker.io".to_string(),
            RegistryConfig {
                mirrors: vec!["m.example/hub".into()],
                mirror_only: true,
                insecure: false,
                ..Default::default()
            },
        );
        client.set_registries(regs);
        let e = client.endpoints_for("docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].label(), "m.example/hub (mirror of docker.io)");
    }
}
