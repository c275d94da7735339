//! The crate's only raw syscalls: namespaces, mounts, hostname, process-group kill and waiting
//! on a pidfd, each behind a safe function taking owned/borrowed Rust values.
//!
//! Owns nothing but the FFI boundary. Must not hold policy (which namespace, which thread, when to
//! clean up): that lives in `ns.rs` and `exec.rs`. Every `unsafe` block carries a `// SAFETY:`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in name"))
}

fn cpath(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `unshare(2)` for the calling thread. Only namespace flags that are valid for a thread of a
/// multi-threaded process (net, ipc, uts) may be passed by callers.
pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes a plain integer and only changes the calling thread's namespaces.
    check(unsafe { libc::unshare(flags) })
}

/// `setns(2)` of the calling thread into the namespace `fd` refers to.
pub(crate) fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call (borrowed).
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })
}

/// `sethostname(2)` in the calling thread's UTS namespace.
pub(crate) fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, valid for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// `mount(src, dst, NULL, MS_BIND, NULL)`.
pub(crate) fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    let (src, dst) = (cpath(src)?, cpath(dst)?);
    // SAFETY: both paths are NUL-terminated C strings that outlive the call; fstype and data are
    // allowed to be NULL for a bind mount.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// `umount2(path, MNT_DETACH)`.
pub(crate) fn umount_detach(path: &Path) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: `path` is a NUL-terminated C string valid for the call.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) })
}

/// Sends SIGKILL to every process of the process group `pgid`.
pub(crate) fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to kill group <= 1",
        ));
    }
    // SAFETY: kill takes plain integers; a negative pid addresses exactly that process group.
    check(unsafe { libc::kill(-pgid, libc::SIGKILL) })
}

/// Waits until the process `pidfd` refers to has exited or `timeout` has passed (rounded up to
/// the millisecond); true when it has exited. An interrupted wait is reported as not exited.
pub(crate) fn wait_exit(pidfd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call and the count says one;
    // the descriptor is borrowed, so it stays open.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    match n {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}
