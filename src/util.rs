//! Small helpers shared by the domain modules (sandboxes, containers): poison-tolerant locking,
//! wall-clock nanoseconds, ids, and error constructors for blocking I/O.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Locks `m`, recovering from poisoning (a panicked holder leaves plain data behind).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Unix time in nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// 64 hex characters from the kernel's CSPRNG (pod and container ids).
pub fn new_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A failed blocking task.
pub fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("blocking task failed: {e}"))
}

/// Maps an I/O error on `path` to an error naming the operation and the path: no space left
/// on the device is `ResourceExhausted`, anything else internal.
pub fn io_err<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| {
        let msg = format!("{what} {}: {e}", path.display());
        match crate::error::ErrorKind::of_io(&e) {
            crate::error::ErrorKind::ResourceExhausted => Error::ResourceExhausted(msg),
            _ => Error::Internal(msg),
        }
    }
}

/// The most bytes of a user-supplied value quoted in an error message.
pub const QUOTE_LIMIT: usize = 256;

/// `value` quoted (`{:?}`) for an error message, cut to [`QUOTE_LIMIT`] bytes (on a character
/// boundary) with the original length named: a 10 KB value must not make a 10 KB message.
pub fn quote(value: &str) -> String {
    if value.len() <= QUOTE_LIMIT {
        return format!("{value:?}");
    }
    let mut end = QUOTE_LIMIT;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

/// `message` cut to `limit` bytes on a character boundary, marked when cut.
pub fn truncate_message(message: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= limit {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… (truncated)", &message[..end]))
}

/// Decodes a protobuf message stored as base64 (version 1 records), strictly: a corrupt value
/// is an error, never an empty message.
pub fn decode_legacy_pb<M: prost::Message + Default>(s: &str) -> std::result::Result<M, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("not base64: {e}"))?;
    M::decode(bytes.as_slice()).map_err(|e| format!("not protobuf: {e}"))
}
