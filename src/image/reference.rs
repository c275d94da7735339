//! Image references (`busybox`, `quay.io/a/b:tag`, `127.0.0.1:5000/x/y@sha256:...`), parsed and
//! normalized the way Docker does.
//!
//! Owns the reference grammar of the distribution project (lowercase repository path
//! components, tags `[\w][\w.-]{0,127}`, `sha256` digests) and Docker's normalization
//! (`busybox` → `docker.io/library/busybox:latest`, `index.docker.io` → `docker.io`). Pure: no
//! I/O, no knowledge of registries' API hosts (`registry-1.docker.io` is the registry client's
//! business) or of CRI types.

use std::fmt;

use crate::error::ErrorKind;

/// The registry name Docker Hub references normalize to.
pub const DOCKER_HUB: &str = "docker.io";
/// Registry names that mean Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];
/// Longest repository name (`registry/repository`) the distribution grammar allows.
const MAX_NAME_LEN: usize = 255;
/// Longest tag.
const MAX_TAG_LEN: usize = 128;
/// Added when a reference has neither tag nor digest.
const DEFAULT_TAG: &str = "latest";

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `quay.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    /// `latest`; `None` when only a digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid image reference {}: {reason}", crate::util::quote(reference))]
    Invalid { reference: String, reason: String },
    #[error(
        "invalid image reference {}: unsupported digest algorithm {} (only sha256 is supported)",
        crate::util::quote(reference),
        crate::util::quote(algorithm)
    )]
    UnsupportedDigest {
        reference: String,
        algorithm: String,
    },
}

impl ReferenceError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl Reference {
    /// Parses and normalizes `s`; references without a registry host get `default_registry`.
    ///
    /// The first `/`-separated component is a registry host if it contains `.` or `:` or is
    /// `localhost`. `library/` is prepended to single-component names on Docker Hub only, and
    /// `latest` is added when neither tag nor digest is given.
    pub fn parse(s: &str, default_registry: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace or control characters"));
        }

        let (name_and_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            check_digest(d).map_err(|e| match e {
                DigestProblem::Algorithm(algorithm) => ReferenceError::UnsupportedDigest {
                    reference: s.to_string(),
                    algorithm,
                },
                DigestProblem::Malformed(reason) => invalid(&reason),
            })?;
        }

        // A tag follows the last ':' when no '/' comes after it (else the ':' is a port).
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(i) if !name_and_tag[i..].contains('/') => {
                (&name_and_tag[..i], Some(&name_and_tag[i + 1..]))
            }
            _ => (name_and_tag, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(invalid(&format!(
                    "tag {t:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
                )));
            }
        }
        if name.is_empty() {
            return Err(invalid("repository name is empty"));
        }

        let (registry, remainder) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(invalid(&format!("{first:?} is not a valid registry host")));
                }
                (normalize_registry(first), rest)
            }
            _ => (normalize_registry(default_registry), name),
        };
        if registry.is_empty() {
            return Err(invalid("no registry host and no default registry"));
        }
        if remainder.is_empty() {
            return Err(invalid("repository name is empty"));
        }
        if remainder.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase"));
        }
        for component in remainder.split('/') {
            if !valid_path_component(component) {
                return Err(invalid(&format!(
                    "repository path component {component:?} must match \
                     [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*"
                )));
            }
        }
        if remainder.len() == 64 && remainder.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                "repository name cannot be a 64-character hexadecimal string (an image id?)",
            ));
        }
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("library/{remainder}")
        } else {
            remainder.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "repository name is longer than {MAX_NAME_LEN} characters"
            )));
        }

        let tag = match (tag, digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `docker.io/library/busybox:latest`; `None` without a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `docker.io/library/busybox@<digest>`.
    pub fn digested(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry's manifest endpoint for: the digest if any, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `d` is `sha256:` followed by 64 lowercase hex digits.
pub fn validate_digest(d: &str) -> bool {
    check_digest(d).is_ok()
}

enum DigestProblem {
    Algorithm(String),
    Malformed(String),
}

fn check_digest(d: &str) -> Result<(), DigestProblem> {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return Err(DigestProblem::Malformed(format!(
            "digest {d:?} is not algorithm:hex"
        )));
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    if !algorithm_ok {
        return Err(DigestProblem::Malformed(format!(
            "digest {d:?} has an invalid algorithm"
        )));
    }
    if algorithm != "sha256" {
        return Err(DigestProblem::Algorithm(algorithm.to_string()));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(DigestProblem::Malformed(format!(
            "digest {d:?} must be sha256: followed by 64 lowercase hex digits"
        )));
    }
    Ok(())
}

fn normalize_registry(host: &str) -> String {
    if DOCKER_HUB_ALIASES.contains(&host) {
        DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = t.bytes();
    match bytes.next() {
        Some(first) if word(first) => {}
        _ => return false,
    }
    t.len() <= MAX_TAG_LEN && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run between alphanumerics: ".", "_", "__" or "-+".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]` where host is a DNS name, an IPv4 address or `[IPv6]`.
fn valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(port) => ("ok", Some(port)),
                None => return false,
            },
        }
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(p) = port {
        // A TCP port: 1 to 65535 (`host:99999` is no registry anybody can reach).
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || !matches!(p.parse::<u16>(), Ok(1..))
        {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(l)) => {
                    f.is_ascii_alphanumeric()
                        && l.is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                }
                _ => false,
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_normalizes_like_docker() {
        type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            // input, registry, repository, tag, digest
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                None,
            ),
            (
                "library/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "registry-1.docker.io/a/b:t",
                "docker.io",
                "a/b",
                Some("t"),
                None,
            ),
            ("user/app:v1", "docker.io", "user/app", Some("v1"), None),
            (
                "127.0.0.1:5000/x/y:t",
                "127.0.0.1:5000",
                "x/y",
                Some("t"),
                None,
            ),
            (
                "127.0.0.1:5000/x/y",
                "127.0.0.1:5000",
                "x/y",
                Some("latest"),
                None,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), None),
            (
                "localhost:5000/app",
                "localhost:5000",
                "app",
                Some("latest"),
                None,
            ),
            (
                "localhost:5000",
                "docker.io",
                "library/localhost",
                Some("5000"),
                None,
            ),
            (
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io",
                "pause",
                Some("3.9"),
                None,
            ),
            ("[::1]:5000/a/b", "[::1]:5000", "a/b", Some("latest"), None),
            (
                "a.b/c__d/e-f/g.h_i---j",
                "a.b",
                "c__d/e-f/g.h_i---j",
                Some("latest"),
                None,
            ),
            (
                "x:Tag_1.2-3",
                "docker.io",
                "library/x",
                Some("Tag_1.2-3"),
                None,
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let r = Reference::parse(input, "docker.io").unwrap();
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.as_deref()
                ),
                (*registry, *repository, *tag, *digest),
                "{input}"
            );
        }
    }

    #[test]
    fn digests_and_tags_together() {
        let r = Reference::parse(&format!("quay.io/a/b@{D}"), "docker.io").unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(D)));
        assert_eq!(r.to_string(), format!("quay.io/a/b@{D}"));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.tagged(), None);

        let r = Reference::parse(&format!("busybox:1@{D}"), "docker.io").unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (Some("1"), Some(D))
        );
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1@{D}"));
        assert_eq!(r.manifest_reference(), D);
    }

    #[test]
    fn names_and_display() {
        let r = Reference::parse("busybox", "docker.io").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tagged().unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(r.digested(D), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.manifest_reference(), "latest");
        // Round trip through the canonical form.
        assert_eq!(Reference::parse(&r.to_string(), "quay.io").unwrap(), r);
    }

    #[test]
    fn default_registry_other_than_docker_hub() {
        let r = Reference::parse("busybox", "quay.io").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("quay.io", "busybox")
        );
        let r = Reference::parse("busybox", "index.docker.io").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
    }

    #[test]
    fn refuses_invalid_references() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = format!("a/{}", "b".repeat(260));
        let hex_name = "0123456789abcdef".repeat(4);
        let cases: Vec<String> = vec![
            "".into(),
            "Busybox".into(),
            "docker.io/Library/busybox".into(),
            "busybox:".into(),
            "busybox:-x".into(),
            "busybox:.x".into(),
            long_tag,
            long_name,
            hex_name,
            "a//b".into(),
            "a/b/".into(),
            "/a".into(),
            "a..b/c".into(),
            "-a/b".into(),
            "a-/b".into(),
            "a_-b".into(),
            "a___b".into(),
            "quay.io/".into(),
            "quay.io:port/a".into(),
            "quay.io:99999999/a".into(),
            "host:99999/x".into(),
            "host:0/x".into(),
            "[::1]:65536/x".into(),
            "-quay.io/a".into(),
            "busybox@sha256:abc".into(),
            "busybox@sha256:".into(),
            format!("busybox@{}", D.to_uppercase().replace("SHA256", "sha256")),
            "busybox@".into(),
            "busybox@latest".into(),
            "busy box".into(),
            "busybox\n".into(),
            "a@b@c".into(),
            "[::1/a".into(),
            "ünïcode/a".into(),
        ];
        for input in &cases {
            let err = Reference::parse(input, "docker.io").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input}");
            if !input.is_empty() {
                assert!(
                    err.to_string().contains(&crate::util::quote(input)),
                    "{err} names {input:?}"
                );
            }
        }
    }

    #[test]
    fn refuses_other_digest_algorithms() {
        let r = Reference::parse(&format!("busybox@sha512:{}", "a".repeat(128)), "docker.io");
        let err = r.unwrap_err();
        assert!(
            matches!(err, ReferenceError::UnsupportedDigest { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("sha512"), "{err}");
    }

    #[test]
    fn validates_digests() {
        assert!(validate_digest(D));
        assert!(!validate_digest(&D.to_uppercase()));
        assert!(!validate_digest(&D[..70]));
        assert!(!validate_digest(&format!("{D}0")));
        assert!(!validate_digest(&format!("sha512:{}", "a".repeat(128))));
        assert!(!validate_digest("sha256"));
        assert!(!validate_digest(""));
    }
}
