//! Manifests, indexes and platforms: parsing what a registry served and picking the manifest
//! for a platform.
//!
//! Owns the media types we accept (OCI manifest/index, Docker schema 2 manifest/list), refusing
//! schema1 and anything that is not a container image. Pure: no I/O; must not fetch or verify
//! digests (the client does both).

use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use crate::image::reference::validate_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` header of manifest requests: every kind we can use (distribution answers 404
/// for OCI manifests when the OCI type is missing).
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor (OCI image spec), as found in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OS/architecture pair in Go's (`GOOS`/`GOARCH`) naming, as in image indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on (`linux/amd64`, `linux/arm64/v8`, ...).
    pub fn host() -> Platform {
        let (architecture, variant) = go_arch(std::env::consts::ARCH);
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Rust's `target_arch` → Go's `GOARCH` (and the variant images use for it).
fn go_arch(rust_arch: &str) -> (&str, Option<&str>) {
    match rust_arch {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips" if cfg!(target_endian = "little") => ("mipsle", None),
        other => (other, None),
    }
}

/// Architecture names some indexes use instead of Go's.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" => "386",
        other => other,
    }
}

/// A manifest we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// OCI index or Docker manifest list.
    Index { manifests: Vec<Descriptor> },
    /// OCI image manifest or Docker schema 2 manifest.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageJson {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Whether `media_type` is an image index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Parses manifest `bytes` served with `content_type`; returns its media type and content.
/// `what` names it in errors.
pub fn parse(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<(String, Parsed), RegistryError> {
    let bad = |detail: String| RegistryError::BadContent {
        what: what.to_string(),
        detail,
    };
    let header_type = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if header_type == DOCKER_SCHEMA1 || header_type == DOCKER_SCHEMA1_SIGNED {
        return Err(schema1(what));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("manifest is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("manifest is not a JSON object".to_string()));
    }
    if value["schemaVersion"].as_i64() == Some(1) {
        return Err(schema1(what));
    }
    let known = |t: &str| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&t);
    let media_type = match value["mediaType"].as_str() {
        Some(t) if !t.is_empty() => t.to_string(),
        _ if known(&header_type) => header_type,
        // OCI allows omitting mediaType: infer from the shape.
        _ if value.get("manifests").is_some() => OCI_INDEX.to_string(),
        _ if value.get("config").is_some() => OCI_MANIFEST.to_string(),
        _ => {
            return Err(bad(format!(
                "unknown manifest type (Content-Type {header_type:?})"
            )))
        }
    };
    let parsed = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let index: IndexJson = serde_json::from_value(value)
                .map_err(|e| bad(format!("invalid {media_type}: {e}")))?;
            Parsed::Index {
                manifests: index.manifests,
            }
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let image: ImageJson = serde_json::from_value(value)
                .map_err(|e| bad(format!("invalid {media_type}: {e}")))?;
            if image.config.media_type != OCI_CONFIG && image.config.media_type != DOCKER_CONFIG {
                return Err(bad(format!(
                    "not a container image: config media type {:?}",
                    image.config.media_type
                )));
            }
            for d in std::iter::once(&image.config).chain(&image.layers) {
                check_descriptor(d, what)?;
            }
            Parsed::Image {
                config: image.config,
                layers: image.layers,
            }
        }
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => return Err(schema1(what)),
        other => return Err(bad(format!("unsupported manifest media type {other:?}"))),
    };
    Ok((media_type, parsed))
}

fn schema1(what: &str) -> RegistryError {
    RegistryError::BadContent {
        what: what.to_string(),
        detail: "image manifest is Docker schema1, which is deprecated: schema1 is not supported \
                 (re-push the image with a current client)"
            .to_string(),
    }
}

/// A digest we can verify (sha256).
pub fn check_descriptor(d: &Descriptor, what: &str) -> Result<(), RegistryError> {
    if validate_digest(&d.digest) {
        Ok(())
    } else {
        Err(RegistryError::BadContent {
            what: what.to_string(),
            detail: format!(
                "descriptor digest {:?} is not sha256:<64 lowercase hex> (other algorithms are \
                 not supported)",
                d.digest
            ),
        })
    }
}

/// The index entry for `platform`: os and architecture must match; among those, the first
/// with the same variant, else the first. Entries that are not image manifests are skipped.
pub fn select<'a>(
    manifests: &'a [Descriptor],
    platform: &Platform,
    reference: &str,
) -> Result<&'a Descriptor, RegistryError> {
    let want_arch = normalize_arch(&platform.architecture);
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.media_type.is_empty()
                || d.media_type == OCI_MANIFEST
                || d.media_type == DOCKER_MANIFEST
        })
        .filter(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == platform.os && normalize_arch(&p.architecture) == want_arch
            })
        })
        .collect();
    let variant_match = platform.variant.as_ref().and_then(|v| {
        candidates
            .iter()
            .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == Some(v))
    });
    if let Some(d) = variant_match.or(candidates.first()) {
        return Ok(d);
    }
    let available: Vec<String> = manifests
        .iter()
        .map(|d| match &d.platform {
            Some(p) => p.to_string(),
            None => format!("{} (no platform)", d.digest),
        })
        .collect();
    Err(RegistryError::PlatformNotFound {
        reference: reference.to_string(),
        wanted: platform.to_string(),
        available: if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn index_json() -> String {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest(1), "size": 10,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(2), "size": 10,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(3), "size": 10,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(4), "size": 10,
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(5), "size": 10,
                 "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(6), "size": 10,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            ]
        })
        .to_string()
    }

    fn plat(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    #[test]
    fn selects_platforms_from_an_index() {
        let (mt, parsed) = parse(index_json().as_bytes(), Some(OCI_INDEX), "x").unwrap();
        assert_eq!(mt, OCI_INDEX);
        let Parsed::Index { manifests } = parsed else {
            panic!("not an index")
        };
        let pick = |p: Platform| select(&manifests, &p, "ref").map(|d| d.digest.clone());
        assert_eq!(pick(plat("linux", "amd64", None)).unwrap(), digest(1));
        assert_eq!(pick(plat("linux", "x86_64", None)).unwrap(), digest(1));
        // arm64/v8 host: the entry without a variant is the first arch match.
        assert_eq!(pick(plat("linux", "arm64", Some("v8"))).unwrap(), digest(4));
        assert_eq!(pick(plat("linux", "arm", Some("v7"))).unwrap(), digest(3));
        assert_eq!(pick(plat("linux", "arm", None)).unwrap(), digest(2));
        assert_eq!(pick(plat("linux", "arm", Some("v5"))).unwrap(), digest(2));
        assert_eq!(pick(plat("windows", "amd64", None)).unwrap(), digest(5));

        let err = pick(plat("linux", "s390x", None)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(
            msg.contains("linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64"),
            "{msg}"
        );
        assert!(msg.contains("ref"), "{msg}");
    }

    #[test]
    fn parses_image_manifests() {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": digest(1), "size": 5},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "digest": digest(2), "size": 7}],
        });
        let (mt, parsed) = parse(m.to_string().as_bytes(), Some("application/json"), "x").unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        let Parsed::Image { config, layers } = parsed else {
            panic!("not an image")
        };
        assert_eq!((config.digest, config.size), (digest(1), 5));
        assert_eq!(layers.len(), 1);

        // No mediaType field: the Content-Type, else the shape, decides.
        let m = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(1), "size": 5},
            "layers": [],
        })
        .to_string();
        assert_eq!(parse(m.as_bytes(), None, "x").unwrap().0, OCI_MANIFEST);
        assert_eq!(
            parse(
                m.as_bytes(),
                Some(&format!("{DOCKER_MANIFEST}; charset=utf-8")),
                "x"
            )
            .unwrap()
            .0,
            DOCKER_MANIFEST
        );
    }

    #[test]
    fn refuses_schema1_bad_json_and_non_images() {
        let err = parse(
            br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#,
            None,
            "ref",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("schema1 is not supported"),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        let err = parse(b"{}", Some(DOCKER_SCHEMA1_SIGNED), "ref").unwrap_err();
        assert!(
            err.to_string().contains("schema1 is not supported"),
            "{err}"
        );

        for (body, needle) in [
            (&b"not json"[..], "not valid JSON"),
            (b"[]", "not a JSON object"),
            (b"{}", "unknown manifest type"),
            (br#"{"mediaType":"application/x-foo"}"#, "unsupported manifest media type"),
            (br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":1}"#, "invalid"),
            (br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:00","size":1}}"#, "not a container image"),
            (br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha512:00","size":1}}"#, "other algorithms"),
            (br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0","size":-1}}"#, "invalid"),
        ] {
            let err = parse(body, None, "ref").unwrap_err();
            assert!(err.to_string().contains(needle), "{err} should contain {needle}");
            assert!(err.to_string().starts_with("ref: "), "{err}");
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        }
    }

    #[test]
    fn host_platform_uses_go_names() {
        let p = Platform::host();
        assert_eq!(p.os, "linux");
        assert!(!p.architecture.contains('_'), "{p}");
        assert_eq!(go_arch("x86_64"), ("amd64", None));
        assert_eq!(go_arch("aarch64"), ("arm64", Some("v8")));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(p, plat("linux", "amd64", None));
    }
}
