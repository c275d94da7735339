//! The monitor's raw syscalls; the only module with `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

/// Sets the process umask and returns the previous one. The monitor is single-threaded, so a
/// temporary umask affects only what this thread creates meanwhile.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only swaps the process's file mode creation mask; it cannot fail.
    unsafe { libc::umask(mask) }
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

/// Closes every descriptor from `first` up, so nothing of the caller leaks into the monitor.
pub fn close_fds_from(first: libc::c_uint) {
    // SAFETY: close_range only closes descriptors; none of them is owned by a Rust object yet
    // (called at process start, before anything is opened).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if ret == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc/self/fd lists (collected first, the listing has an fd).
    let fds: Vec<libc::c_int> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd: &libc::c_int| fd >= first as libc::c_int)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        // SAFETY: as above; an already closed fd (the listing's own) just fails with EBADF.
        unsafe { libc::close(fd) };
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor that stays open for the call.
    unsafe {
        let flags = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Makes this process the reaper of its orphaned descendants (the container's init once the
/// runtime's `create` process exits).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

/// Blocks `signals` for this thread and returns a non-blocking signalfd that reports them.
/// Children started through `std::process::Command` get an empty mask again before exec.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; signalfd returns a
    // new descriptor that nobody else owns.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = check(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Reaps one exited child without blocking; `None` when no child has exited (or none is left).
pub fn reap_one() -> Option<(libc::pid_t, ExitStatus)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if pid <= 0 {
            return None;
        }
        if libc::WIFEXITED(status) {
            return Some((pid, ExitStatus::Exited(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Some((pid, ExitStatus::Signaled(libc::WTERMSIG(status))));
        }
        // Stopped/continued reports are not exits (waitpid without WUNTRACED rarely gives them).
    }
}

/// Waits for the child `pid` to exit (the launcher waiting for the intermediate process).
pub fn wait_pid(pid: libc::pid_t) -> io::Result<()> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Ends the process at once, without running exit handlers (the intermediate process).
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `poll(2)`; EINTR is reported as zero ready descriptors.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(ret as usize)
}

/// A non-blocking, close-on-exec eventfd (cgroup v1 OOM notifications).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: returns a new descriptor that nobody else owns.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking inotify descriptor watching `path` for modifications (cgroup v2
/// `memory.events`).
pub fn inotify_modify(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: returns a new descriptor that nobody else owns.
    let fd = check(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid descriptor and NUL-terminated path.
    check(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY) })?;
    Ok(fd)
}

/// Receives one descriptor sent with SCM_RIGHTS (the runtime's console socket protocol).
/// Returns `None` if the peer closed without sending one.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for a few descriptors, in case the peer sends more than one.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below points into live local buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: `msg` describes valid buffers; MSG_CMSG_CLOEXEC marks received fds cloexec.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut received: Option<OwnedFd> = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in, within
    // msg_controllen; each SCM_RIGHTS payload is an array of descriptors now owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<libc::c_int>();
                let fds = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(fds.add(i)));
                    // Keep the first; extra descriptors are closed when dropped.
                    if received.is_none() {
                        received = Some(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if received.is_none() && n > 0 {
        return Err(io::Error::other(
            "console socket message carried no descriptor",
        ));
    }
    Ok(received)
}

/// Sets a terminal's window size (`TIOCSWINSZ` on the pty master).
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize that outlives the call; fd stays open.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(|_| ())
}

/// Makes `cmd`'s child start with an empty signal mask and every signal at its default
/// action. The monitor blocks the signals it reads through its signalfd, Rust ignores SIGPIPE,
/// and whoever started the launcher may have ignored others (SIGQUIT, glibc's 32): masks and
/// ignored dispositions survive exec, and the runtime would pass them on to the container.
pub fn reset_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on local data. A zeroed kernel `struct sigaction` is
    // SIG_DFL with no flags and an empty mask; the raw call also reaches signals 32 and 33,
    // which glibc's wrappers refuse; SIGKILL/SIGSTOP fail with EINVAL, which is ignored.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &set,
                std::ptr::null_mut(),
            ))?;
            let default_action = [0u64; 4];
            for sig in 1..=64 {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
            Ok(())
        });
    }
}

/// `sethostname(2)` in the calling process's UTS namespace.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`'s bytes, valid for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(|_| ())
}

fn cpath(path: &std::path::Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// `mount(src, dst, NULL, MS_BIND, NULL)`.
pub fn bind_mount(src: &std::path::Path, dst: &std::path::Path) -> io::Result<()> {
    let (src, dst) = (cpath(src)?, cpath(dst)?);
    // SAFETY: both are NUL-terminated strings valid for the call; NULL fstype/data are allowed
    // for a bind mount.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
    .map(|_| ())
}

/// `umount2(path, MNT_DETACH)`.
pub fn umount_detach(path: &std::path::Path) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: NUL-terminated string valid for the call.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

/// `kill(pid, SIGKILL)`.
pub fn kill_hard(pid: libc::pid_t) {
    // SAFETY: plain integers; `pid` is our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Sets the real, effective and saved ids (groups first, supplementary groups cleared).
pub fn become_ids(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: a zero-length list with a null pointer is valid for setgroups; the other calls
    // take plain integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}
