//! The registry client's error type and its kinds.
//!
//! Owns the mapping from registry failures (HTTP statuses, transport errors, bad content) to
//! [`ErrorKind`]. Must not know gRPC codes: `server::status` maps kinds once.

use std::path::PathBuf;

use crate::error::ErrorKind;

/// A failed registry operation. Messages name the reference, digest or endpoint.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The manifest, tag or blob does not exist on any endpoint tried.
    #[error("{what} not found: {detail}")]
    NotFound { what: String, detail: String },
    /// An index/list has no manifest for the requested platform.
    #[error("{reference}: no manifest for platform {wanted} (available: {available})")]
    PlatformNotFound {
        reference: String,
        wanted: String,
        available: String,
    },
    /// Every endpoint failed to answer (connection, DNS, TLS, timeout, 5xx, 429).
    #[error("{what}: registry unavailable: {detail}")]
    Unavailable { what: String, detail: String },
    /// The registry wants credentials we do not have, or refused the ones we sent.
    #[error("{what}: authentication required by {host}: {message}")]
    Unauthenticated {
        what: String,
        host: String,
        message: String,
    },
    /// The registry refused access (403).
    #[error("{what}: access denied by {host}: {message}")]
    PermissionDenied {
        what: String,
        host: String,
        message: String,
    },
    /// Content does not hash to the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Content is not the size its descriptor says, or is larger than we accept.
    #[error("{what}: {detail}")]
    Size { what: String, detail: String },
    /// Content we cannot use: bad JSON, schema1, unknown media types, other digest algorithms.
    #[error("{what}: {detail}")]
    BadContent { what: String, detail: String },
    /// An HTTP answer we did not expect (e.g. 400, 405).
    #[error("{what}: unexpected HTTP status {status} from {host}: {message}")]
    Http {
        what: String,
        host: String,
        status: u16,
        message: String,
    },
    /// A configured `ca_file` cannot be read or holds no usable certificate.
    #[error("ca_file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    /// The client could not be built (TLS backend).
    #[error("registry client: {0}")]
    Client(String),
}

impl RegistryError {
    /// `DigestMismatch`, `Size` and `BadContent` are `FailedPrecondition` (the registry served
    /// something that is not a usable image, like `ImageError::BadImage`), and so is a bad
    /// `ca_file` (the node's configuration is wrong).
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::NotFound { .. } | RegistryError::PlatformNotFound { .. } => {
                ErrorKind::NotFound
            }
            RegistryError::Unavailable { .. } => ErrorKind::Unavailable,
            RegistryError::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            RegistryError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            RegistryError::DigestMismatch { .. }
            | RegistryError::Size { .. }
            | RegistryError::BadContent { .. }
            | RegistryError::CaFile { .. } => ErrorKind::FailedPrecondition,
            RegistryError::Http { .. } | RegistryError::Client(_) => ErrorKind::Internal,
        }
    }

    /// Failures worth trying the next endpoint for, or reporting as "unavailable" if all fail.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let s = || String::from("x");
        let cases = [
            (
                RegistryError::NotFound {
                    what: s(),
                    detail: s(),
                },
                ErrorKind::NotFound,
            ),
            (
                RegistryError::PlatformNotFound {
                    reference: s(),
                    wanted: s(),
                    available: s(),
                },
                ErrorKind::NotFound,
            ),
            (
                RegistryError::Unavailable {
                    what: s(),
                    detail: s(),
                },
                ErrorKind::Unavailable,
            ),
            (
                RegistryError::Unauthenticated {
                    what: s(),
                    host: s(),
                    message: s(),
                },
                ErrorKind::Unauthenticated,
            ),
            (
                RegistryError::PermissionDenied {
                    what: s(),
                    host: s(),
                    message: s(),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                RegistryError::DigestMismatch {
                    what: s(),
                    expected: s(),
                    actual: s(),
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                RegistryError::Size {
                    what: s(),
                    detail: s(),
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                RegistryError::BadContent {
                    what: s(),
                    detail: s(),
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                RegistryError::Http {
                    what: s(),
                    host: s(),
                    status: 400,
                    message: s(),
                },
                ErrorKind::Internal,
            ),
            (
                RegistryError::CaFile {
                    path: PathBuf::from("/ca.pem"),
                    detail: s(),
                },
                ErrorKind::FailedPrecondition,
            ),
            (RegistryError::Client(s()), ErrorKind::Internal),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }
}
