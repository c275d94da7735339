//! OCI runtimes (runc, crun) per RuntimeClass handler.
//!
//! Owns locating runtime binaries, the [`oci::OciRuntime`] trait with its monitored
//! implementation (the only runtime argv builder), and the daemon's side of the monitor
//! protocol ([`monitor`]). Must not know CRI types.

pub mod monitor;
pub mod oci;

use std::path::{Path, PathBuf};

/// Resolves a handler's `path`: absolute paths as given, bare names on `PATH`. Blocking (stat).
pub fn find_binary(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if path.components().count() > 1 || path.is_absolute() {
        return executable(path).then(|| path.to_path_buf());
    }
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bare_names_on_path_and_checks_absolute_ones() {
        assert!(find_binary(Path::new("sh")).is_some());
        assert!(find_binary(Path::new("/bin/sh")).is_some());
        assert!(find_binary(Path::new("no-such-runtime-xyz")).is_none());
        assert!(find_binary(Path::new("/nonexistent/runc")).is_none());
    }
}
