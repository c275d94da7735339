//! The default network of a config directory, kept current through inotify.
//!
//! [`ConfDir::default_network`] re-reads the directory only when something in it changed since
//! the last read: the inotify descriptor is non-blocking and drained on each call, so a file
//! written (or renamed in) before the call is always seen — the kernel queues the event before
//! the writer's syscall returns, and no thread is needed. While the directory does not exist (or
//! inotify is unavailable) every call re-reads it, and the watch is retried.
//!
//! Only the directory itself is watched: a config that is a symlink to a file elsewhere, edited
//! in place there, is seen at the next change in the directory (as with libcni users that watch
//! with fsnotify).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::inotify;

use crate::config::{default_network, ConfigError, NetworkConfigList};

/// A watched CNI config directory and the network name to pick from it.
pub struct ConfDir {
    dir: PathBuf,
    name: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `None`: not watching; every call re-reads.
    watch: Option<OwnedFd>,
    /// The last read, valid while no event arrived.
    cached: Option<Result<Option<NetworkConfigList>, String>>,
    /// Directory reads so far (for tests and debugging).
    reads: u64,
}

/// Why the cached read no longer holds.
enum Drained {
    Nothing,
    Changed,
    /// The directory itself went away or the queue overflowed: watch again.
    Rewatch,
}

const MASK: inotify::WatchFlags = inotify::WatchFlags::CREATE
    .union(inotify::WatchFlags::DELETE)
    .union(inotify::WatchFlags::MODIFY)
    .union(inotify::WatchFlags::CLOSE_WRITE)
    .union(inotify::WatchFlags::MOVED_FROM)
    .union(inotify::WatchFlags::MOVED_TO)
    .union(inotify::WatchFlags::ATTRIB)
    .union(inotify::WatchFlags::DELETE_SELF)
    .union(inotify::WatchFlags::MOVE_SELF)
    .union(inotify::WatchFlags::ONLYDIR);

impl ConfDir {
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        ConfDir {
            dir: dir.into(),
            name: name.into(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network pods join now (see [`default_network`]); cheap while nothing changed.
    pub fn default_network(&self) -> Result<Option<NetworkConfigList>, ConfigError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.watch.as_ref().map(drain) {
            None | Some(Drained::Rewatch) => {
                st.watch = watch(&self.dir);
                st.cached = None;
            }
            Some(Drained::Changed) => st.cached = None,
            Some(Drained::Nothing) => {}
        }
        if let Some(cached) = &st.cached {
            return cached.clone().map_err(|reason| ConfigError::Invalid {
                path: self.dir.clone(),
                reason,
            });
        }
        st.reads += 1;
        let read = default_network(&self.dir, &self.name);
        if st.watch.is_some() {
            st.cached = Some(match &read {
                Ok(net) => Ok(net.clone()),
                Err(e) => Err(e.to_string()),
            });
        }
        read
    }

    /// How many times the directory was read.
    pub fn reads(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reads
    }
}

/// A non-blocking inotify watch of `dir`, or `None` when it cannot be set up (no directory).
fn watch(dir: &Path) -> Option<OwnedFd> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
    inotify::add_watch(&fd, dir, MASK).ok()?;
    Some(fd)
}

/// Reads every queued event without blocking.
fn drain(fd: &OwnedFd) -> Drained {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    let mut seen = Drained::Nothing;
    loop {
        match reader.next() {
            Ok(event) => {
                let flags = event.events();
                if flags.intersects(
                    inotify::ReadFlags::IGNORED
                        | inotify::ReadFlags::DELETE_SELF
                        | inotify::ReadFlags::MOVE_SELF
                        | inotify::ReadFlags::QUEUE_OVERFLOW,
                ) {
                    seen = Drained::Rewatch;
                } else if matches!(seen, Drained::Nothing) {
                    seen = Drained::Changed;
                }
            }
            Err(rustix::io::Errno::AGAIN) => return seen,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return Drained::Rewatch,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NET: &str = r#"{"cniVersion":"1.0.0","name":"NAME","plugins":[{"type":"bridge"}]}"#;

    fn write(dir: &Path, file: &str, name: &str) {
        std::fs::write(dir.join(file), NET.replace("NAME", name)).unwrap();
    }

    fn current(c: &ConfDir) -> Option<String> {
        c.default_network().unwrap().map(|n| n.name)
    }

    #[test]
    fn reads_again_only_after_a_change_and_sees_it_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let c = ConfDir::new(tmp.path(), "");
        assert_eq!(current(&c), None);
        assert_eq!(current(&c), None);
        assert_eq!(c.reads(), 1, "nothing changed: no second read");

        write(tmp.path(), "20-b.conflist", "b");
        assert_eq!(current(&c).as_deref(), Some("b"));
        write(tmp.path(), "10-a.conflist", "a");
        assert_eq!(current(&c).as_deref(), Some("a"));
        let reads = c.reads();
        for _ in 0..10 {
            assert_eq!(current(&c).as_deref(), Some("a"));
        }
        assert_eq!(c.reads(), reads);

        // Renamed in (how tools replace files atomically), rewritten in place, removed.
        std::fs::write(tmp.path().join(".tmp"), NET.replace("NAME", "c")).unwrap();
        std::fs::rename(tmp.path().join(".tmp"), tmp.path().join("05-c.conflist")).unwrap();
        assert_eq!(current(&c).as_deref(), Some("c"));
        write(tmp.path(), "05-c.conflist", "c2");
        assert_eq!(current(&c).as_deref(), Some("c2"));
        std::fs::remove_file(tmp.path().join("05-c.conflist")).unwrap();
        std::fs::remove_file(tmp.path().join("10-a.conflist")).unwrap();
        assert_eq!(current(&c).as_deref(), Some("b"));
    }

    #[test]
    fn a_directory_created_later_or_recreated_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net.d");
        let c = ConfDir::new(&dir, "x");
        assert_eq!(current(&c), None);
        assert_eq!(current(&c), None);
        assert_eq!(c.reads(), 2, "unwatched: every call reads");

        std::fs::create_dir(&dir).unwrap();
        write(&dir, "10-x.conflist", "x");
        assert_eq!(current(&c).as_deref(), Some("x"));

        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(current(&c), None);
        std::fs::create_dir(&dir).unwrap();
        write(&dir, "10-y.conflist", "y");
        assert_eq!(current(&c), None, "only network x counts");
        write(&dir, "20-x.conflist", "x");
        assert_eq!(current(&c).as_deref(), Some("x"));
    }
}
