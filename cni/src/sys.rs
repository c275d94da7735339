//! The crate's only raw syscalls: namespaces, mounts, hostname, link flags, interface addresses
//! and process-group kill, each behind a safe function taking owned/borrowed Rust values.
//!
//! Owns nothing but the FFI boundary. Must not hold policy (which namespace, which thread, when to
//! clean up): that lives in `ns.rs` and `exec.rs`. Every `unsafe` block carries a `// SAFETY:`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

fn ifreq_for(ifname: &str) -> io::Result<libc::ifreq> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    // SAFETY: ifreq is a plain C struct/union for which all-zero bytes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// Sets `IFF_UP` on `ifname` in the calling thread's network namespace.
pub(crate) fn set_link_up(ifname: &str) -> io::Result<()> {
    let mut req = ifreq_for(ifname)?;
    // SAFETY: socket takes plain integers; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively; OwnedFd closes it once.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: SIOCGIFFLAGS reads/writes an ifreq, and `req` is a valid, exclusively borrowed one.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: after SIOCGIFFLAGS the `ifru_flags` member of the union is the initialised one.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an ifreq; `req` is valid and its name/flags are set.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) })
}

/// The IPv4 and IPv6 addresses of `ifname` in the calling thread's network namespace.
pub(crate) fn interface_addrs(ifname: &str) -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, which we free below with freeifaddrs.
    check(unsafe { libc::getifaddrs(&mut head) })?;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list returned by getifaddrs, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a non-null NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to at least a sockaddr header.
        let family = libc::c_int::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            libc::AF_INET => {
                // SAFETY: the family says the storage behind ifa_addr is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(
                    sin.sin_addr.s_addr.to_ne_bytes(),
                )));
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage behind ifa_addr is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and no reference into it outlives this.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
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
