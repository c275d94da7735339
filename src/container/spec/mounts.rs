//! Mounts (defaults, pod files, CRI mounts) and devices.
//!
//! The mount list is: the defaults (`/proc`, `/dev`, `/dev/pts`, `/dev/mqueue`, `/sys`,
//! `/sys/fs/cgroup`), the pod's `/dev/shm`, `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`,
//! then the CRI mounts, which replace anything at the same destination (kubelet mounts its own
//! `/etc/hosts`). It is sorted by destination depth, stably, so parents are mounted before
//! children. Host paths are not checked here: their existence is the caller's job.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxIdMapping, LinuxIdMappingBuilder, Mount,
};

use super::{invalid, DeviceKind, HostDevice, HostView, SpecError, SpecInput};

pub(super) struct MountPlan {
    pub mounts: Vec<Mount>,
    /// The CRI mounts as applied, for `ContainerStatus.mounts`.
    pub cri_mounts: Vec<cri::Mount>,
    /// `rslave`/`rshared` when a CRI mount needs propagation from the host.
    pub rootfs_propagation: Option<String>,
}

fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// Lexically cleans an absolute container path (`//a/./b/../c/` → `/a/c`); `None` if it is not
/// absolute.
fn clean(path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Some(out)
}

fn depth(p: &Path) -> usize {
    p.components().count()
}

fn default_mounts(privileged: bool) -> Vec<Mount> {
    let ro_unless_privileged = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_unless_privileged],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                ro_unless_privileged,
            ],
        ),
    ]
}

/// Pod files: bind mounts, writable as in CRI-O.
fn pod_mounts(input: &SpecInput) -> Vec<Mount> {
    const FILE_OPTIONS: &[&str] = &["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"];
    let pod = &input.pod;
    let mut out = Vec::new();
    let shm = pod.shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm"));
    out.push(mount("/dev/shm", "bind", shm, FILE_OPTIONS));
    for (destination, source) in [
        ("/etc/hosts", &pod.hosts),
        ("/etc/resolv.conf", &pod.resolv_conf),
        ("/etc/hostname", &pod.hostname_file),
    ] {
        if let Some(source) = source {
            out.push(mount(destination, "bind", source.clone(), FILE_OPTIONS));
        }
    }
    out
}

fn id_mappings(what: &str, given: &[cri::IdMapping]) -> Result<Vec<LinuxIdMapping>, SpecError> {
    given
        .iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .host_id(m.host_id)
                .container_id(m.container_id)
                .size(m.length)
                .build()
                .map_err(|e| invalid(format!("{what}: {e}")))
        })
        .collect()
}

/// Whether a CRI mount is an image volume (`Mount.image`, KEP-4639).
pub fn is_image_volume(m: &cri::Mount) -> bool {
    m.image.as_ref().is_some_and(|i| !i.image.is_empty())
}

/// One CRI mount → an OCI bind mount. An image volume arrives with the path where the
/// container domain mounted the image (read-only) as its `host_path`.
fn cri_mount(i: usize, m: &cri::Mount) -> Result<(PathBuf, Mount, &'static str), SpecError> {
    let name = format!("mounts[{i}] {:?}", m.container_path);
    if m.container_path.is_empty() {
        return Err(invalid(format!("mounts[{i}]: container_path is required")));
    }
    let destination = clean(&m.container_path)
        .ok_or_else(|| invalid(format!("{name}: container_path must be an absolute path")))?;
    let image_volume = is_image_volume(m);
    if image_volume && m.host_path.is_empty() {
        // The container domain mounts the image and gives its path as host_path.
        return Err(invalid(format!("{name}: image volume is not mounted")));
    }
    if m.host_path.is_empty() {
        return Err(invalid(format!("{name}: host_path is required")));
    }
    if !m.host_path.starts_with('/') || m.host_path.contains('\0') {
        return Err(invalid(format!(
            "{name}: host_path {:?} must be an absolute path",
            m.host_path
        )));
    }
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
        Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
        Err(_) => {
            return Err(invalid(format!(
                "{name}: unknown propagation {}",
                m.propagation
            )))
        }
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(format!(
                "{name}: recursive_read_only requires readonly"
            )));
        }
        if propagation != "rprivate" {
            return Err(invalid(format!(
                "{name}: recursive_read_only requires propagation PROPAGATION_PRIVATE"
            )));
        }
    }
    let mut options = vec![
        "rbind",
        propagation,
        if m.readonly || image_volume {
            "ro"
        } else {
            "rw"
        },
    ];
    if image_volume {
        // As kubelet expects of an image volume (KEP-4639), like CRI-O.
        options.extend(["nosuid", "nodev", "noexec"]);
    }
    if m.recursive_read_only {
        options.push("rro");
    }
    let idmapped = !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty();
    if idmapped {
        if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
            return Err(invalid(format!(
                "{name}: an idmapped mount needs both uid_mappings and gid_mappings"
            )));
        }
        options.push("idmap");
    }
    let mut out = mount(
        &destination.to_string_lossy(),
        "bind",
        PathBuf::from(&m.host_path),
        &options,
    );
    if idmapped {
        out.set_uid_mappings(Some(id_mappings(
            &format!("{name}: uid_mappings"),
            &m.uid_mappings,
        )?))
        .set_gid_mappings(Some(id_mappings(
            &format!("{name}: gid_mappings"),
            &m.gid_mappings,
        )?));
    }
    Ok((destination, out, propagation))
}

/// The mapping of the pod's user namespace, given to CRI mounts that have none of their own
/// when the runtime can idmap bind mounts ([`super::HostView::idmap_mounts`]).
pub(super) type PodIdmap<'a> = Option<(&'a [LinuxIdMapping], &'a [LinuxIdMapping])>;

pub(super) fn plan(
    input: &SpecInput,
    privileged: bool,
    pod_idmap: PodIdmap,
) -> Result<MountPlan, SpecError> {
    let mut requested: Vec<Mount> = Vec::new();
    let mut cri_mounts = Vec::new();
    let mut propagation: Option<&str> = None;
    for (i, m) in input.config.mounts.iter().enumerate() {
        let (destination, mut oci, prop) = cri_mount(i, m)?;
        // An image volume is made of idmapped layers already.
        if let (None, Some((uids, gids)), false) =
            (oci.uid_mappings(), pod_idmap, is_image_volume(m))
        {
            oci.options_mut()
                .get_or_insert_with(Vec::new)
                .push("idmap".into());
            oci.set_uid_mappings(Some(uids.to_vec()))
                .set_gid_mappings(Some(gids.to_vec()));
        }
        if requested.iter().any(|r| r.destination() == &destination) {
            return Err(invalid(format!(
                "mounts[{i}] {:?}: another mount already targets {}",
                m.container_path,
                destination.display()
            )));
        }
        propagation = match (propagation, prop) {
            (_, "rshared") | (Some("rshared"), _) => Some("rshared"),
            (_, "rslave") | (Some("rslave"), _) => Some("rslave"),
            (p, _) => p,
        };
        requested.push(oci);
        let mut status = m.clone();
        status.container_path = destination.to_string_lossy().into_owned();
        cri_mounts.push(status);
    }
    let mut mounts: Vec<Mount> = default_mounts(privileged)
        .into_iter()
        .chain(pod_mounts(input))
        .filter(|d| !requested.iter().any(|r| r.destination() == d.destination()))
        .collect();
    mounts.extend(requested);
    mounts.sort_by_key(|m| depth(m.destination()));
    Ok(MountPlan {
        mounts,
        cri_mounts,
        rootfs_propagation: propagation.map(str::to_string),
    })
}

fn device_type(kind: DeviceKind) -> LinuxDeviceType {
    match kind {
        DeviceKind::Char => LinuxDeviceType::C,
        DeviceKind::Block => LinuxDeviceType::B,
    }
}

fn spec_device(path: PathBuf, d: &HostDevice) -> LinuxDevice {
    let mut out = LinuxDevice::default();
    out.set_path(path)
        .set_typ(device_type(d.kind))
        .set_major(d.major)
        .set_minor(d.minor)
        .set_file_mode(Some(d.file_mode))
        .set_uid(Some(d.uid))
        .set_gid(Some(d.gid));
    out
}

fn device_rule(allow: bool, d: Option<&HostDevice>, access: &str) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(d.map(|d| device_type(d.kind)))
        .set_major(d.map(|d| d.major))
        .set_minor(d.map(|d| d.minor))
        .set_access(Some(access.to_string()));
    rule
}

/// CRI devices (and, for privileged containers, every host device) with their cgroup rules:
/// deny everything, then allow each device with its permissions (privileged: allow all).
pub(super) fn devices(
    config: &cri::ContainerConfig,
    host: &HostView,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut out: Vec<LinuxDevice> = Vec::new();
    let mut rules = vec![device_rule(privileged, None, "rwm")];
    for (i, d) in config.devices.iter().enumerate() {
        let name = format!("devices[{i}] {:?}", d.host_path);
        let host_path = clean(&d.host_path)
            .ok_or_else(|| invalid(format!("{name}: host_path must be an absolute path")))?;
        let container_path = if d.container_path.is_empty() {
            host_path.clone()
        } else {
            clean(&d.container_path).ok_or_else(|| {
                invalid(format!(
                    "{name}: container_path {:?} must be an absolute path",
                    d.container_path
                ))
            })?
        };
        let permissions = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(invalid(format!(
                "{name}: permissions {permissions:?} must be made of r, w and m"
            )));
        }
        // The path itself, or every device below it (device plugins pass directories).
        let found: Vec<(PathBuf, &HostDevice)> =
            match host.devices.iter().find(|h| h.path == host_path) {
                Some(h) => vec![(container_path.clone(), h)],
                None => host
                    .devices
                    .iter()
                    .filter_map(|h| {
                        let rest = h.path.strip_prefix(&host_path).ok()?;
                        Some((container_path.join(rest), h))
                    })
                    .collect(),
            };
        if found.is_empty() {
            return Err(invalid(format!("{name}: not a device on the host")));
        }
        for (path, h) in found {
            if !privileged {
                rules.push(device_rule(true, Some(h), permissions));
            }
            out.retain(|o| o.path() != &path);
            out.push(spec_device(path, h));
        }
    }
    if privileged {
        for h in &host.devices {
            // /dev/pts has its own devpts instance.
            if h.path.starts_with("/dev/pts") || out.iter().any(|o| o.path() == &h.path) {
                continue;
            }
            out.push(spec_device(h.path.clone(), h));
        }
    }
    Ok((out, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_makes_paths_canonical() {
        assert_eq!(clean("//a/./b/../c/"), Some(PathBuf::from("/a/c")));
        assert_eq!(clean("/../x"), Some(PathBuf::from("/x")));
        assert_eq!(clean("rel/x"), None);
        assert_eq!(clean(""), None);
    }

    fn m(container: &str, host: &str) -> cri::Mount {
        cri::Mount {
            container_path: container.into(),
            host_path: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cri_mount_options_follow_readonly_propagation_and_rro() {
        let (_, oci, _) = cri_mount(0, &m("/data", "/srv/data")).unwrap();
        assert_eq!(oci.options().clone().unwrap(), ["rbind", "rprivate", "rw"]);
        let mut slave = m("/data", "/srv/data");
        slave.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
        slave.readonly = true;
        let (_, oci, prop) = cri_mount(0, &slave).unwrap();
        assert_eq!(oci.options().clone().unwrap(), ["rbind", "rslave", "ro"]);
        assert_eq!(prop, "rslave");
        let mut rro = m("/data", "/srv/data");
        rro.readonly = true;
        rro.recursive_read_only = true;
        let (_, oci, _) = cri_mount(0, &rro).unwrap();
        assert_eq!(
            oci.options().clone().unwrap(),
            ["rbind", "rprivate", "ro", "rro"]
        );
    }

    #[test]
    fn an_image_volume_is_read_only_and_noexec_whatever_the_request_says() {
        let mut v = m("/data", "/run/crius/containers/c/volumes/0");
        v.readonly = false;
        v.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
        v.image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        let (_, oci, prop) = cri_mount(0, &v).unwrap();
        assert_eq!(prop, "rslave");
        assert_eq!(
            oci.options().clone().unwrap(),
            ["rbind", "rslave", "ro", "nosuid", "nodev", "noexec"]
        );
    }

    #[test]
    fn bad_mounts_are_refused_naming_the_mount() {
        let mut rro_rw = m("/data", "/srv");
        rro_rw.recursive_read_only = true;
        let mut rro_shared = m("/data", "/srv");
        rro_shared.recursive_read_only = true;
        rro_shared.readonly = true;
        rro_shared.propagation = cri::MountPropagation::PropagationBidirectional as i32;
        let mut bad_prop = m("/data", "/srv");
        bad_prop.propagation = 9;
        let mut image = m("/data", "");
        image.image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        let mut half_idmap = m("/data", "/srv");
        half_idmap.uid_mappings = vec![cri::IdMapping {
            host_id: 1,
            container_id: 0,
            length: 1,
        }];
        for (mount, needle) in [
            (m("", "/srv"), "mounts[0]: container_path is required"),
            (
                m("data", "/srv"),
                "mounts[0] \"data\": container_path must be an absolute path",
            ),
            (m("/data", ""), "mounts[0] \"/data\": host_path is required"),
            (
                m("/data", "srv"),
                "host_path \"srv\" must be an absolute path",
            ),
            (rro_rw, "recursive_read_only requires readonly"),
            (
                rro_shared,
                "recursive_read_only requires propagation PROPAGATION_PRIVATE",
            ),
            (bad_prop, "unknown propagation 9"),
            (image, "mounts[0] \"/data\": image volume is not mounted"),
            (half_idmap, "needs both uid_mappings and gid_mappings"),
        ] {
            let err = cri_mount(0, &mount).unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)));
            assert!(err.to_string().contains(needle), "{err} / {needle}");
        }
    }

    fn host_devices() -> HostView {
        let dev = |path: &str, kind, major, minor| HostDevice {
            path: path.into(),
            kind,
            major,
            minor,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
        };
        HostView {
            devices: vec![
                dev("/dev/fuse", DeviceKind::Char, 10, 229),
                dev("/dev/dri/card0", DeviceKind::Char, 226, 0),
                dev("/dev/dri/renderD128", DeviceKind::Char, 226, 128),
                dev("/dev/sda", DeviceKind::Block, 8, 0),
                dev("/dev/pts/0", DeviceKind::Char, 136, 0),
            ],
            ..Default::default()
        }
    }

    fn with_devices(devices: &[(&str, &str, &str)]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            devices: devices
                .iter()
                .map(|(h, c, p)| cri::Device {
                    host_path: h.to_string(),
                    container_path: c.to_string(),
                    permissions: p.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cri_devices_are_looked_up_by_path_or_directory() {
        let cfg = with_devices(&[("/dev/fuse", "", "rw"), ("/dev/dri", "/dev/gpu", "")]);
        let (devs, rules) = devices(&cfg, &host_devices(), false).unwrap();
        let paths: Vec<_> = devs.iter().map(|d| d.path().clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/dev/fuse"),
                PathBuf::from("/dev/gpu/card0"),
                PathBuf::from("/dev/gpu/renderD128")
            ]
        );
        assert_eq!(rules.len(), 4);
        assert!(!rules[0].allow());
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
        assert_eq!(rules[2].access().as_deref(), Some("rwm"));
    }

    #[test]
    fn bad_devices_are_refused_naming_them() {
        for (dev, needle) in [
            (
                ("/dev/nothing", "", "rwm"),
                "devices[0] \"/dev/nothing\": not a device on the host",
            ),
            (
                ("dev/fuse", "", "rwm"),
                "host_path must be an absolute path",
            ),
            (
                ("/dev/fuse", "fuse", "rwm"),
                "container_path \"fuse\" must be an absolute path",
            ),
            (("/dev/fuse", "", "rx"), "permissions \"rx\""),
        ] {
            let err = devices(&with_devices(&[dev]), &host_devices(), false).unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)));
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn privileged_gets_every_host_device_but_pts_and_allows_all() {
        let (devs, rules) = devices(&Default::default(), &host_devices(), true).unwrap();
        assert_eq!(devs.len(), 4);
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
    }
}
