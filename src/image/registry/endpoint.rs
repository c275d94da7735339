//! Where to fetch a repository from: the host's mirrors in order, then the host itself.
//!
//! Owns turning `[image.registries."HOST"]` settings into an ordered list of endpoints (API host,
//! path prefix, plain HTTP or TLS) and the URLs of the distribution API on them, including the
//! loopback rule (`[image] insecure_loopback`: `localhost`, `127.0.0.0/8` and `::1` are
//! insecure unless they have a `ca_file`, as in containerd). Pure: no I/O. Must not decide what
//! to do with an endpoint's answer (that is the client's job).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{ImageConfig, RegistryConfig};

/// The registry settings endpoints are derived from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registries {
    /// `[image.registries."HOST"]` by host.
    pub hosts: BTreeMap<String, RegistryConfig>,
    /// `[image] insecure_loopback`: loopback hosts without a `ca_file` are insecure.
    pub insecure_loopback: bool,
}

impl From<&ImageConfig> for Registries {
    fn from(config: &ImageConfig) -> Registries {
        Registries {
            hosts: config.registries.clone(),
            insecure_loopback: config.insecure_loopback,
        }
    }
}

/// Only the given tables: no loopback rule (`insecure_loopback = false`).
impl From<BTreeMap<String, RegistryConfig>> for Registries {
    fn from(hosts: BTreeMap<String, RegistryConfig>) -> Registries {
        Registries {
            hosts,
            insecure_loopback: false,
        }
    }
}

/// `localhost`, `127.0.0.0/8` or `::1`, with or without a port (`[::1]:5000`), like containerd's
/// `docker.IsLocalhost`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        // One colon: `host:port`; more: a bare IPv6 address.
        None => match host.split_once(':') {
            Some((name, port)) if !port.contains(':') => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The registry name Docker Hub references carry, and its real API host.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// One place a repository can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` the HTTP requests go to.
    pub host: String,
    /// Path prefix on a mirror (`k8s` for `127.0.0.1:5000/k8s`); empty for the host itself.
    pub prefix: String,
    /// Plain HTTP allowed and TLS certificates not verified.
    pub insecure: bool,
    /// For a mirror: the registry it mirrors.
    pub mirror_of: Option<String>,
    /// Extra CA certificates (PEM) trusted for TLS to `host`: its own entry's `ca_file`.
    pub ca_file: Option<PathBuf>,
}

impl Endpoint {
    /// The repository path on this endpoint: `k8s/pause` for `pause` on mirror `host/k8s`.
    pub fn repository(&self, repository: &str) -> String {
        if self.prefix.is_empty() {
            repository.to_string()
        } else {
            format!("{}/{repository}", self.prefix)
        }
    }

    /// URL schemes to try in order: TLS, and for insecure endpoints plain HTTP after it.
    pub fn schemes(&self) -> &'static [&'static str] {
        if self.insecure {
            &["https", "http"]
        } else {
            &["https"]
        }
    }

    /// `scheme://host/v2/<repo>/manifests/<reference>`.
    pub fn manifest_url(&self, scheme: &str, repository: &str, reference: &str) -> String {
        format!(
            "{scheme}://{}/v2/{}/manifests/{reference}",
            self.host,
            self.repository(repository)
        )
    }

    /// `scheme://host/v2/<repo>/blobs/<digest>`.
    pub fn blob_url(&self, scheme: &str, repository: &str, digest: &str) -> String {
        format!(
            "{scheme}://{}/v2/{}/blobs/{digest}",
            self.host,
            self.repository(repository)
        )
    }

    /// Human-readable: `127.0.0.1:5000/k8s (mirror of registry.k8s.io)`.
    pub fn label(&self) -> String {
        let mut s = self.host.clone();
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(up) = &self.mirror_of {
            s.push_str(&format!(" (mirror of {up})"));
        }
        s
    }
}

/// The API host of a registry name: `registry-1.docker.io` for `docker.io`, else itself.
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// The endpoints to try for `registry`, in order: its mirrors, then the registry itself unless
/// `mirror_only`.
pub(crate) fn endpoints(settings: &Registries, registry: &str) -> Vec<Endpoint> {
    let registries = &settings.hosts;
    // A loopback endpoint with no CA of its own is insecure under `insecure_loopback`.
    let loopback = |host: &str, ca: &Option<PathBuf>| {
        settings.insecure_loopback && ca.is_none() && is_loopback(host)
    };
    let config = registries.get(registry).cloned().unwrap_or_default();
    let mut out = Vec::with_capacity(config.mirrors.len() + 1);
    for mirror in &config.mirrors {
        let (plain_http, rest) = match mirror.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some((_, rest)) => (false, rest),
            None => (false, mirror.as_str()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            continue;
        }
        let own = registries.get(host);
        let ca = own.and_then(ca_file);
        out.push(Endpoint {
            host: host.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            insecure: config.insecure
                || own.is_some_and(|c| c.insecure)
                || plain_http
                || loopback(host, &ca),
            mirror_of: Some(registry.to_string()),
            ca_file: ca,
        });
    }
    // `mirror_only` without usable mirrors (refused by config validation) still tries the host.
    if !config.mirror_only || out.is_empty() {
        let host = api_host(registry);
        let ca = ca_file(&config);
        out.push(Endpoint {
            host: host.to_string(),
            prefix: String::new(),
            insecure: config.insecure || loopback(host, &ca),
            mirror_of: None,
            ca_file: ca,
        });
    }
    out
}

fn ca_file(config: &RegistryConfig) -> Option<PathBuf> {
    (!config.ca_file.as_os_str().is_empty()).then(|| config.ca_file.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(mirrors: &[&str], mirror_only: bool, insecure: bool) -> RegistryConfig {
        RegistryConfig {
            mirrors: mirrors.iter().map(|m| m.to_string()).collect(),
            mirror_only,
            insecure,
            ..Default::default()
        }
    }

    #[test]
    fn no_config_is_the_host_itself_over_tls() {
        let e = endpoints(&Registries::default(), "quay.io");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].host.as_str(), e[0].insecure), ("quay.io", false));
        assert_eq!(e[0].schemes(), &["https"]);
        assert_eq!(
            e[0].manifest_url("https", "a/b", "latest"),
            "https://quay.io/v2/a/b/manifests/latest"
        );
        assert_eq!(e[0].label(), "quay.io");
    }

    #[test]
    fn docker_hub_api_host() {
        let e = endpoints(&Registries::default(), "docker.io");
        assert_eq!(
            e[0].manifest_url("https", "library/busybox", "latest"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
    }

    #[test]
    fn mirrors_first_in_order_with_prefixes() {
        let mut regs = BTreeMap::new();
        regs.insert(
            "registry.k8s.io".to_string(),
            reg(
                &["127.0.0.1:5000/k8s", "mirror.example/a/b/", "plain.example"],
                false,
                false,
            ),
        );
        let e = endpoints(&regs.clone().into(), "registry.k8s.io");
        let urls: Vec<_> = e
            .iter()
            .map(|e| e.manifest_url(e.schemes()[0], "pause", "3.9"))
            .collect();
        assert_eq!(
            urls,
            [
                "https://127.0.0.1:5000/v2/k8s/pause/manifests/3.9",
                "https://mirror.example/v2/a/b/pause/manifests/3.9",
                "https://plain.example/v2/pause/manifests/3.9",
                "https://registry.k8s.io/v2/pause/manifests/3.9",
            ]
        );
        assert_eq!(
            e[0].label(),
            "127.0.0.1:5000/k8s (mirror of registry.k8s.io)"
        );
        assert_eq!(
            e[1].blob_url("https", "pause", "sha256:x"),
            "https://mirror.example/v2/a/b/pause/blobs/sha256:x"
        );
        assert!(e.iter().all(|e| !e.insecure));
    }

    #[test]
    fn mirror_only_skips_the_host() {
        let mut regs = BTreeMap::new();
        regs.insert("docker.io".to_string(), reg(&["m.example"], true, false));
        let e = endpoints(&regs.clone().into(), "docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, "m.example");
        assert_eq!(e[0].repository("library/busybox"), "library/busybox");
    }

    #[test]
    fn insecure_from_the_host_or_the_mirrors_own_entry() {
        let mut regs = BTreeMap::new();
        regs.insert(
            "registry.example".to_string(),
            reg(&["127.0.0.1:5000/p", "secure.example"], false, false),
        );
        regs.insert("127.0.0.1:5000".to_string(), reg(&[], false, true));
        let e = endpoints(&regs.clone().into(), "registry.example");
        let insecure: Vec<_> = e.iter().map(|e| e.insecure).collect();
        assert_eq!(insecure, [true, false, false]);
        assert_eq!(e[0].schemes(), &["https", "http"]);

        regs.insert(
            "registry.example".to_string(),
            reg(&["secure.example"], false, true),
        );
        let e = endpoints(&regs.clone().into(), "registry.example");
        assert!(e.iter().all(|e| e.insecure));
    }

    #[test]
    fn ca_file_comes_from_the_endpoint_hosts_own_entry() {
        let mut regs = BTreeMap::new();
        let mut up = reg(&["mirror.example/p", "other.example"], false, false);
        up.ca_file = PathBuf::from("/etc/up-ca.pem");
        regs.insert("registry.example".to_string(), up);
        let mut mirror = reg(&[], false, false);
        mirror.ca_file = PathBuf::from("/etc/mirror-ca.pem");
        regs.insert("mirror.example".to_string(), mirror);
        let e = endpoints(&regs.clone().into(), "registry.example");
        let cas: Vec<_> = e.iter().map(|e| e.ca_file.clone()).collect();
        assert_eq!(
            cas,
            [
                Some(PathBuf::from("/etc/mirror-ca.pem")),
                None,
                Some(PathBuf::from("/etc/up-ca.pem")),
            ]
        );
    }

    #[test]
    fn loopback_hosts_are_recognized_with_and_without_ports() {
        for host in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "::1",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "docker.io",
            "registry.local:5000",
            "localhost.example:5000",
            "128.0.0.1:5000",
            "10.0.0.1",
            "[::2]:5000",
            "::2",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    /// Issue 11 item 7: a loopback registry needed a table marking it insecure; containerd
    /// falls back to plain HTTP for loopback hosts by default.
    #[test]
    fn loopback_endpoints_are_insecure_by_default_unless_off_or_given_a_ca() {
        let on = |hosts: BTreeMap<String, RegistryConfig>| Registries {
            hosts,
            insecure_loopback: true,
        };
        let e = endpoints(&on(BTreeMap::new()), "127.0.0.1:5000");
        assert!(e[0].insecure);
        assert_eq!(e[0].schemes(), &["https", "http"]);
        assert!(endpoints(&on(BTreeMap::new()), "localhost:5000")[0].insecure);
        assert!(endpoints(&on(BTreeMap::new()), "[::1]:5000")[0].insecure);
        assert!(!endpoints(&on(BTreeMap::new()), "quay.io")[0].insecure);
        // Off: only the tables count.
        let e = endpoints(&Registries::default(), "127.0.0.1:5000");
        assert!(!e[0].insecure);
        // A loopback host with its own CA is verified.
        let mut regs = BTreeMap::new();
        let mut own = reg(&[], false, false);
        own.ca_file = PathBuf::from("/etc/ca.pem");
        regs.insert("localhost:5443".to_string(), own);
        assert!(!endpoints(&on(regs.clone()), "localhost:5443")[0].insecure);
        // Loopback mirrors of a remote registry are insecure, the remote host is not.
        regs.insert(
            "registry.k8s.io".to_string(),
            reg(&["127.0.0.1:5000/k8s", "localhost:5443"], false, false),
        );
        let insecure: Vec<_> = endpoints(&on(regs), "registry.k8s.io")
            .iter()
            .map(|e| e.insecure)
            .collect();
        assert_eq!(insecure, [true, false, false]);
    }
}
