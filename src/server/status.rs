//! The one mapping from domain errors to gRPC statuses.

use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};

pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(code_of(e.kind()), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_their_codes_and_keep_the_message() {
        let s = Status::from(Error::NotFound("pod sandbox \"abc\" not found".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "pod sandbox \"abc\" not found");
        let s = Status::from(Error::Unimplemented("RunPodSandbox"));
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("RunPodSandbox"));
        assert_eq!(Status::from(Error::Starting).code(), Code::Unavailable);
    }
}
