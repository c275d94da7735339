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
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The longest status message sent. gRPC carries it in a header, and clients refuse headers
/// past 8 KiB (reporting RESOURCE_EXHAUSTED instead of the real code): every message is cut
/// here, once, whatever the quote sites did.
pub const MESSAGE_LIMIT: usize = 2048;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        Status::new(
            code_of(e.kind()),
            crate::util::truncate_message(&message, MESSAGE_LIMIT).into_owned(),
        )
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

    #[test]
    fn long_messages_are_cut_to_the_limit_and_no_space_is_resource_exhausted() {
        let s = Status::from(Error::InvalidArgument(format!(
            "value {}",
            "é".repeat(10_000)
        )));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() <= MESSAGE_LIMIT + 32,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("(truncated)"));
        let e = crate::util::io_err("write", std::path::Path::new("/x"))(
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let s = Status::from(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("/x"), "{}", s.message());
    }

    #[test]
    fn quoted_values_are_cut_to_256_bytes() {
        let q = crate::util::quote(&"a".repeat(10_000));
        assert!(q.len() < 300, "{}", q.len());
        assert!(q.contains("10000 bytes"));
        assert_eq!(crate::util::quote("ab"), "\"ab\"");
    }
}
