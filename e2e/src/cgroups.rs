//! A cgroup parent unique to one test, in every hierarchy of the host's cgroupfs, and a guard
//! that removes whatever of it is left when the test ends (even when it failed).

use std::path::{Path, PathBuf};

/// The host's cgroup mount.
pub const ROOT: &str = "/sys/fs/cgroup";

/// `/crius-e2e-<pid>-<n>`: a top-level cgroup path nothing else uses.
pub struct TestCgroup {
    /// The absolute cgroupfs path (what a pod's `cgroup_parent` names).
    pub path: String,
}

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        TestCgroup {
            path: format!("/crius-e2e-{}-{tag}-{nanos:x}", std::process::id()),
        }
    }

    /// `self.path` + `/child`.
    pub fn child(&self, child: &str) -> String {
        format!("{}/{child}", self.path)
    }

    /// The hierarchies mounted under [`ROOT`] (v1 controllers, named ones, and `unified`).
    pub fn hierarchies() -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(ROOT)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && p.join("cgroup.procs").exists())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The directory of cgroup `path` in `hierarchy`.
    pub fn dir(hierarchy: &Path, path: &str) -> PathBuf {
        hierarchy.join(path.trim_start_matches('/'))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for h in TestCgroup::hierarchies() {
            remove_tree(&TestCgroup::dir(&h, &self.path));
        }
    }
}

/// rmdir, children first (cgroupfs directories only go away with rmdir).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
