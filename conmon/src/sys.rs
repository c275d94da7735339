//! The monitor's raw syscalls; the only module with `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments; fails harmlessly if already a session leader.
    check(unsafe { libc::setsid() }).map(|_| ())
}

pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` stays open for the call.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(|_| ())
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer flags.
    check(unsafe { libc::unshare(flags) }).map(|_| ())
}

pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// `fork(2)`. The monitor is single-threaded when it forks, so the child may run normal code.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: called before any thread is spawned; the child only runs async-signal-safe or
    // single-threaded code paths of this process.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// Points fds 0, 1 and 2 at `/dev/null` so no pipe of the parent stays open.
pub fn null_stdio() -> io::Result<()> {
    let path = CString::new("/dev/null").map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated path.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    for target in 0..3 {
        // SAFETY: both descriptors are valid; dup2 clears O_CLOEXEC on the target.
        check(unsafe { libc::dup2(fd, target) })?;
    }
    if fd > 2 {
        // SAFETY: `fd` is ours and no longer needed.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Blocks every signal and returns the set, for `wait_signal`.
pub fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigfillset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        Ok(set)
    }
}

/// Waits for one of the blocked signals and returns its number.
pub fn wait_signal(set: &libc::sigset_t) -> io::Result<libc::c_int> {
    // SAFETY: `set` is a valid initialised set; a null siginfo pointer is allowed.
    check(unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) })
}

/// Reaps every exited child without blocking.
pub fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}
