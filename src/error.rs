//! The daemon's domain error and its kinds.
//!
//! Lower layers return an [`Error`] whose [`ErrorKind`] decides the gRPC code; the mapping to
//! `tonic::Status` happens exactly once, in `server::status`. Messages are lowercase, without a
//! trailing period, and name the id or path they are about.

use crate::store::StoreError;

/// What kind of failure, independent of the transport. Mapped to a gRPC code in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
    Unauthenticated,
    PermissionDenied,
    Unimplemented,
    /// Out of disk space (or quota) or past a configured size limit.
    ResourceExhausted,
    Internal,
}

impl ErrorKind {
    /// The kind of a failed I/O: no space left (ENOSPC, EDQUOT) is `ResourceExhausted`,
    /// anything else `Internal`.
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }
}

/// An error of the daemon's domain layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// No space left on a device (the message names the path), or a size limit reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The RPC belongs to a capability that has not landed yet.
    #[error("{0} is not implemented by crius yet")]
    Unimplemented(&'static str),
    /// The RPC cannot be served on this node, and why.
    #[error("{0} is not supported by crius on this node: {1}")]
    Unsupported(&'static str, &'static str),
    /// The daemon is still restoring its state after a start.
    #[error("crius is starting: state is being restored, retry shortly")]
    Starting,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::Unimplemented(_) | Error::Unsupported(..) => ErrorKind::Unimplemented,
            Error::Starting => ErrorKind::Unavailable,
            Error::Store(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
