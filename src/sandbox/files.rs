//! The pod's files in its run directory: `hostname`, `resolv.conf`, `hosts`, and the `/dev/shm`
//! tmpfs. Containers bind-mount them.
//!
//! Rendering is pure; writing is blocking and each file is replaced atomically. Must not know
//! about CNI or records.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

use super::record::DnsConfig;

/// `resolv.conf` from the pod's DNS config, or the host's file when the pod gives none.
pub fn resolv_conf(dns: Option<&DnsConfig>, host: &str) -> String {
    let Some(dns) = dns else {
        return host.to_string();
    };
    let mut out = String::new();
    if !dns.searches.is_empty() {
        let _ = writeln!(out, "search {}", dns.searches.join(" "));
    }
    for server in &dns.servers {
        let _ = writeln!(out, "nameserver {server}");
    }
    if !dns.options.is_empty() {
        let _ = writeln!(out, "options {}", dns.options.join(" "));
    }
    out
}

/// `/etc/hosts` of a pod with its own network: loopback names plus the pod IPs.
pub fn hosts(hostname: &str, ips: &[IpAddr]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        for ip in ips {
            let _ = writeln!(out, "{ip}\t{hostname}");
        }
    }
    out
}

/// Writes `contents` to `path` (mode 0644) atomically: a temp file beside it, then rename. The
/// run directory is on tmpfs, so there is nothing to fsync.
pub fn write_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Mounts a tmpfs of `size` bytes at `path` (created if needed) for the pod's `/dev/shm`.
pub fn mount_shm(path: &Path, size: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let data =
        std::ffi::CString::new(format!("mode=1777,size={size}")).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "shm",
        path,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// Unmounts the pod's shm (and anything stacked on it); a path that is not mounted is fine.
pub fn unmount_shm(path: &Path) -> std::io::Result<()> {
    for _ in 0..8 {
        match rustix::mount::unmount(path, UnmountFlags::DETACH) {
            Ok(()) => continue,
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config_or_host() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "1.1.1.1".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), "nameserver 9.9.9.9\n"),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.96.0.10\n\
             nameserver 1.1.1.1\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(None, "nameserver 9.9.9.9\n"),
            "nameserver 9.9.9.9\n"
        );
    }

    #[test]
    fn hosts_lists_every_pod_ip_under_the_hostname() {
        let h = hosts(
            "web-0",
            &["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        );
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("\n10.88.0.5\tweb-0\n"));
        assert!(h.ends_with("fd00::5\tweb-0\n"));
    }

    #[test]
    fn write_file_replaces_atomically_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        write_file(&p, "a").unwrap();
        write_file(&p, "b").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
