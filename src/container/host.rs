//! What this host lets containers have: the capabilities crius may grant (its own bounding
//! set; root here lacks CAP_SYS_RESOURCE), LSMs present, the lowest `oom_score_adj` crius may
//! set, the cgroup layout, and the host's devices for privileged containers. Read once at start
//! (devices on demand). Blocking.

use super::spec::{DeviceKind, HostDevice, HostView};

/// Capability names by number (linux/capability.h).
const CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Names of the capabilities in a `/proc/<pid>/status` hex mask.
pub fn caps_from_mask(mask: u64) -> Vec<String> {
    CAPS.iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

fn status_field(key: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// Detects the host view once.
pub fn detect() -> HostView {
    let bounding = status_field("CapBnd:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0);
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    let selinux = std::path::Path::new("/sys/fs/selinux/enforce").exists();
    let min_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let cgroup_v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let max_nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    HostView {
        capabilities: caps_from_mask(bounding),
        apparmor,
        // No default AppArmor profile is loaded by crius: RuntimeDefault stays unconfined.
        apparmor_default: None,
        selinux,
        min_oom_score_adj,
        max_nofile,
        cgroup_v2,
        devices: Vec::new(),
        arch: std::env::consts::ARCH.to_string(),
        // Volumes of pods with a user namespace are idmapped by crius itself before the runtime
        // sees them (src/idmap.rs), so the spec never asks the runtime for it.
        idmap_mounts: false,
        // From the configuration, set by the caller.
        pids_limit: 0,
        seccomp_use_default_when_empty: false,
    }
}

/// Every char/block device under `/dev` (for privileged containers and CRI devices).
pub fn host_devices() -> Vec<HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                // Skip mounts of their own (pts, shm, mqueue) like runc does.
                if !matches!(
                    path.to_str(),
                    Some("/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev/fd")
                ) {
                    stack.push(path);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                DeviceKind::Char
            } else if ft.is_block_device() {
                DeviceKind::Block
            } else {
                continue;
            };
            if path.to_str() == Some("/dev/console") {
                continue;
            }
            let rdev = meta.rdev();
            out.push(HostDevice {
                path: path.clone(),
                kind,
                major: rustix::fs::major(rdev) as i64,
                minor: rustix::fs::minor(rdev) as i64,
                file_mode: meta.permissions().mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_maps_bits_to_names() {
        assert_eq!(
            caps_from_mask(0b101),
            vec!["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]
        );
        assert!(caps_from_mask(u64::MAX).contains(&"CAP_SYS_RESOURCE".to_string()));
        let bnd = detect().capabilities;
        assert!(!bnd.is_empty());
    }

    #[test]
    fn devices_include_null() {
        let devs = host_devices();
        let null = devs
            .iter()
            .find(|d| d.path == std::path::Path::new("/dev/null"))
            .unwrap();
        assert_eq!((null.major, null.minor), (1, 3));
        assert!(matches!(null.kind, DeviceKind::Char));
    }
}
