//! OOM detection for the container's memory cgroup.
//!
//! Owns the notification descriptor: on cgroup v1 an eventfd registered for
//! `memory.oom_control` through `cgroup.event_control`; on cgroup v2 an inotify watch on
//! `memory.events`. The cgroup is found from `/proc/<pid>/cgroup` and `/proc/self/mountinfo`
//! (a v1 `memory` controller wins over v2, as on hybrid hosts where memory is a v1
//! controller). At exit the kill counter (`oom_kill` in `memory.oom_control` or
//! `memory.events`) is read as well, so an event that raced the container's exit is not missed.
//! Must not decide the exit reason: the monitor combines "OOM seen" with "killed by SIGKILL".

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys;

pub struct OomWatcher {
    /// eventfd (v1) or inotify (v2) descriptor, readable when something happened.
    notify: OwnedFd,
    /// `memory.oom_control` (v1) or `memory.events` (v2): holds the `oom_kill` counter.
    counter_file: PathBuf,
    /// v1 only: the registration stays valid while this file is open.
    _oom_control: Option<File>,
    seen: bool,
}

impl OomWatcher {
    /// Watches the memory cgroup of `pid`; `None` when it has none we can watch.
    pub fn new(pid: u32) -> Option<Self> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        match memory_cgroup(&cgroups, &mountinfo)? {
            Cgroup::V1(dir) => Self::v1(&dir).ok(),
            Cgroup::V2(dir) => Self::v2(&dir).ok(),
        }
    }

    fn v1(dir: &Path) -> std::io::Result<Self> {
        let counter_file = dir.join("memory.oom_control");
        let oom_control = File::open(&counter_file)?;
        let efd = sys::eventfd()?;
        let mut control = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))?;
        use std::os::fd::AsRawFd;
        control.write_all(format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd()).as_bytes())?;
        Ok(Self {
            notify: efd,
            counter_file,
            _oom_control: Some(oom_control),
            seen: false,
        })
    }

    fn v2(dir: &Path) -> std::io::Result<Self> {
        let counter_file = dir.join("memory.events");
        let notify = sys::inotify_modify(&counter_file)?;
        Ok(Self {
            notify,
            counter_file,
            _oom_control: None,
            seen: false,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    /// The descriptor was readable: consume the notification.
    pub fn on_readable(&mut self) {
        if !self.drain() {
            return;
        }
        if self._oom_control.is_some() {
            // v1: every eventfd signal is an OOM event (or the cgroup's removal, which cannot
            // happen while the container still runs in it).
            self.seen = true;
        } else {
            // v2: memory.events changed; it counts more than OOM kills.
            self.seen |= self.kill_count() > 0;
        }
    }

    /// Reads whatever the descriptor holds; whether there was anything.
    fn drain(&self) -> bool {
        let mut f = match self.notify.try_clone() {
            Ok(fd) => File::from(fd),
            Err(_) => return false,
        };
        let mut buf = [0u8; 512];
        let mut any = false;
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }

    /// Whether an OOM kill happened in the cgroup: an event seen, or a non-zero kill counter.
    pub fn oom_killed(&mut self) -> bool {
        self.on_readable();
        self.seen || self.kill_count() > 0
    }

    fn kill_count(&self) -> u64 {
        std::fs::read_to_string(&self.counter_file)
            .map(|s| oom_kill_count(&s))
            .unwrap_or(0)
    }
}

/// `oom_kill N` (v1 `memory.oom_control`, v2 `memory.events`; v2's `oom_group_kill` counts too).
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == "oom_kill" || *k == "oom_group_kill")
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[derive(Debug, PartialEq, Eq)]
enum Cgroup {
    V1(PathBuf),
    V2(PathBuf),
}

/// Finds the directory of the memory cgroup from `/proc/<pid>/cgroup` and
/// `/proc/self/mountinfo` text.
fn memory_cgroup(cgroups: &str, mountinfo: &str) -> Option<Cgroup> {
    let mut v2_path = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let dir = mount_dir(
                mountinfo,
                |fstype, opts| fstype == "cgroup" && opts.split(',').any(|o| o == "memory"),
                path,
            )?;
            return Some(Cgroup::V1(dir));
        }
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path.to_string());
        }
    }
    let path = v2_path?;
    let dir = mount_dir(mountinfo, |fstype, _| fstype == "cgroup2", &path)?;
    dir.join("memory.events")
        .exists()
        .then_some(Cgroup::V2(dir))
}

/// The directory of cgroup `path` under the first mount matching `is_hierarchy(fstype,
/// super_options)`, taking the mount's root into account.
fn mount_dir(
    mountinfo: &str,
    is_hierarchy: impl Fn(&str, &str) -> bool,
    path: &str,
) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let (pre, post) = match line.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 || !is_hierarchy(post[0], post[2]) {
            continue;
        }
        let (root, mount_point) = (pre[3], pre[4]);
        let rel = if root == "/" {
            path
        } else {
            match path.strip_prefix(root) {
                Some(rel) if rel.is_empty() || rel.starts_with('/') => rel,
                _ => continue,
            }
        };
        return Some(Path::new(mount_point).join(rel.trim_start_matches('/')));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_memory_controller_wins_on_hybrid_hosts() {
        let cg = "9:name=systemd:/\n4:memory:/crius/abc\n1:cpu:/\n0::/crius/abc\n";
        assert_eq!(
            memory_cgroup(cg, MOUNTINFO),
            Some(Cgroup::V1("/sys/fs/cgroup/memory/crius/abc".into()))
        );
    }

    #[test]
    fn mount_root_is_stripped() {
        let mi = "35 30 0:31 /pod /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            mount_dir(mi, |t, o| t == "cgroup" && o.contains("memory"), "/pod/c1"),
            Some("/sys/fs/cgroup/memory/c1".into())
        );
        assert_eq!(mount_dir(mi, |_, _| true, "/other"), None);
    }

    #[test]
    fn kill_counters_are_read_from_v1_and_v2_files() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), 0);
    }
}
