//! Capabilities, masked and read-only paths, AppArmor and SELinux.
//!
//! Capabilities are never more than crius' own bounding set ([`HostView::capabilities`]):
//! the default set is cut to it, privileged containers get all of it, and an explicit add of
//! a capability outside it is refused (the runtime would fail later with a worse message).

use std::collections::HashSet;
use std::str::FromStr;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::{invalid, HostView, SpecError};

/// The capabilities of a container that asks for none (CRI-O's default set).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::Kill,
];

/// Masked (made unreadable) unless privileged or the request lists its own.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Mounted read-only unless privileged or the request lists its own.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `CAP_SYS_ADMIN`, `sys_admin`, `SYS_ADMIN` → the capability.
pub(super) fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()
}

pub(super) fn capabilities(
    sc: &cri::LinuxContainerSecurityContext,
    host: &HostView,
    privileged: bool,
) -> Result<Capabilities, SpecError> {
    // Names the daemon cannot express are left out: they cannot be granted anyway.
    let allowed: Capabilities = host
        .capabilities
        .iter()
        .filter_map(|c| parse_capability(c))
        .collect();
    if privileged {
        return Ok(allowed);
    }
    let mut caps: Capabilities = DEFAULT_CAPABILITIES
        .iter()
        .filter(|c| allowed.contains(c))
        .copied()
        .collect();
    let Some(requested) = &sc.capabilities else {
        return Ok(caps);
    };
    let is_all = |c: &String| c.trim().eq_ignore_ascii_case("ALL");
    // Ambient capabilities are granted like the others but the ambient set stays empty.
    let adds: Vec<(&str, &String)> = requested
        .add_capabilities
        .iter()
        .map(|c| ("capabilities.add_capabilities", c))
        .chain(
            requested
                .add_ambient_capabilities
                .iter()
                .map(|c| ("capabilities.add_ambient_capabilities", c)),
        )
        .collect();
    let parse = |field: &str, name: &String| {
        parse_capability(name)
            .ok_or_else(|| invalid(format!("{field}: unknown capability {name:?}")))
    };
    // `ALL` first, so that individual entries still apply on top (add ALL, drop CHOWN).
    if adds.iter().any(|(_, c)| is_all(c)) {
        caps = allowed.clone();
    }
    if requested.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    for (field, name) in adds.iter().filter(|(_, c)| !is_all(c)) {
        let cap = parse(field, name)?;
        if !allowed.contains(&cap) {
            return Err(invalid(format!(
                "{field}: CAP_{cap} is not in crius' bounding set, so it cannot be granted"
            )));
        }
        caps.insert(cap);
    }
    for name in requested.drop_capabilities.iter().filter(|c| !is_all(c)) {
        caps.remove(&parse("capabilities.drop_capabilities", name)?);
    }
    Ok(caps)
}

/// Effective = permitted = bounding = the set; inheritable and ambient empty.
pub(super) fn capability_sets(caps: Capabilities) -> LinuxCapabilities {
    let mut sets = LinuxCapabilities::default();
    sets.set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(Some(HashSet::new()))
        .set_ambient(Some(HashSet::new()));
    sets
}

/// The CRI lists replace the defaults when non-empty (kubelet sends the full lists).
pub(super) fn masked_and_readonly_paths(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |given: &Vec<String>, default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.clone()
        }
    };
    (
        pick(&sc.masked_paths, DEFAULT_MASKED_PATHS),
        pick(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
    )
}

/// The AppArmor profile of the process, or `None` (unconfined or AppArmor disabled).
pub(super) fn apparmor(
    sc: &cri::LinuxContainerSecurityContext,
    host: &HostView,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    enum Want {
        Default,
        Unconfined,
        Named(String),
    }
    let want = if let Some(profile) = &sc.apparmor {
        match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Want::Default,
            Ok(cri::security_profile::ProfileType::Unconfined) => Want::Unconfined,
            Ok(cri::security_profile::ProfileType::Localhost) => {
                let name = profile
                    .localhost_ref
                    .strip_prefix("localhost/")
                    .unwrap_or(&profile.localhost_ref);
                if name.is_empty() {
                    return Err(invalid(
                        "apparmor: a Localhost profile needs localhost_ref (the profile name)",
                    ));
                }
                Want::Named(name.to_string())
            }
            Err(_) => {
                return Err(invalid(format!(
                    "apparmor: unknown profile type {}",
                    profile.profile_type
                )))
            }
        }
    } else {
        #[allow(deprecated)]
        let legacy = sc.apparmor_profile.as_str();
        match legacy {
            "" | "runtime/default" => Want::Default,
            "unconfined" => Want::Unconfined,
            _ => match legacy.strip_prefix("localhost/") {
                Some(name) if !name.is_empty() => Want::Named(name.to_string()),
                _ => {
                    return Err(invalid(format!(
                        "apparmor_profile {legacy:?}: expected runtime/default, unconfined or localhost/<name>"
                    )))
                }
            },
        }
    };
    if !host.apparmor {
        return Ok(None);
    }
    Ok(match want {
        Want::Named(name) => Some(name),
        Want::Unconfined => None,
        // Privileged containers are not confined unless a profile is named.
        Want::Default if privileged => None,
        Want::Default => host.apparmor_default.clone(),
    })
}

/// The SELinux process label and mount label. Container options override the pod's field by
/// field; nothing is labelled when SELinux is off, for privileged containers, or when neither
/// sets anything.
pub(super) fn selinux(
    pod: Option<&cri::SeLinuxOption>,
    container: Option<&cri::SeLinuxOption>,
    host: &HostView,
    privileged: bool,
) -> (Option<String>, Option<String>) {
    if !host.selinux || privileged {
        return (None, None);
    }
    let field = |get: fn(&cri::SeLinuxOption) -> &String| -> String {
        container
            .map(get)
            .filter(|s| !s.is_empty())
            .or_else(|| pod.map(get).filter(|s| !s.is_empty()))
            .cloned()
            .unwrap_or_default()
    };
    let (user, role, typ, level) = (
        field(|o| &o.user),
        field(|o| &o.role),
        field(|o| &o.r#type),
        field(|o| &o.level),
    );
    if user.is_empty() && role.is_empty() && typ.is_empty() && level.is_empty() {
        return (None, None);
    }
    let or = |s: String, default: &str| if s.is_empty() { default.to_string() } else { s };
    let with_level = |label: String| {
        if level.is_empty() {
            label
        } else {
            format!("{label}:{level}")
        }
    };
    let process = with_level(format!(
        "{}:{}:{}",
        or(user, "system_u"),
        or(role, "system_r"),
        or(typ, "container_t")
    ));
    let mount = with_level("system_u:object_r:container_file_t".to_string());
    (Some(process), Some(mount))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostView {
        HostView {
            // Like this machine: everything but CAP_SYS_RESOURCE.
            capabilities: [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FSETID",
                "CAP_FOWNER",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE",
                "CAP_KILL",
                "CAP_NET_RAW",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_FUTURE_THING",
            ]
            .map(String::from)
            .to_vec(),
            apparmor: true,
            apparmor_default: Some("crius-default".into()),
            selinux: true,
            ..Default::default()
        }
    }

    fn with_caps(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        }
    }

    fn sorted(caps: &Capabilities) -> Vec<String> {
        let mut v: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_default_set_is_crio_s() {
        let caps = capabilities(&Default::default(), &host(), false).unwrap();
        assert_eq!(caps.len(), 9);
        assert!(caps.contains(&Capability::NetBindService));
        assert!(!caps.contains(&Capability::NetRaw));
    }

    #[test]
    fn add_and_drop_accept_any_spelling_and_all() {
        let caps = capabilities(
            &with_caps(&["net_raw", "CAP_SYS_ADMIN"], &["cap_chown", "Kill"]),
            &host(),
            false,
        )
        .unwrap();
        assert!(caps.contains(&Capability::NetRaw) && caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::Chown) && !caps.contains(&Capability::Kill));

        let caps = capabilities(&with_caps(&[], &["ALL"]), &host(), false).unwrap();
        assert!(caps.is_empty());
        let caps =
            capabilities(&with_caps(&["NET_BIND_SERVICE"], &["all"]), &host(), false).unwrap();
        assert_eq!(sorted(&caps), ["NET_BIND_SERVICE"]);
        let caps = capabilities(&with_caps(&["ALL"], &["SYS_ADMIN"]), &host(), false).unwrap();
        assert_eq!(caps.len(), 11);
        assert!(!caps.contains(&Capability::SysAdmin));
    }

    #[test]
    fn unknown_or_ungrantable_capabilities_are_refused_naming_them() {
        let err = capabilities(&with_caps(&["NET_FOO"], &[]), &host(), false).unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)));
        assert!(
            err.to_string()
                .contains("capabilities.add_capabilities: unknown capability \"NET_FOO\""),
            "{err}"
        );
        let err = capabilities(&with_caps(&[], &["BOGUS"]), &host(), false).unwrap_err();
        assert!(err.to_string().contains("drop_capabilities"), "{err}");
        let err = capabilities(&with_caps(&["SYS_RESOURCE"], &[]), &host(), false).unwrap_err();
        assert!(err.to_string().contains("CAP_SYS_RESOURCE"), "{err}");
        assert!(err.to_string().contains("bounding set"), "{err}");
    }

    #[test]
    fn privileged_gets_the_whole_host_set() {
        let caps = capabilities(&with_caps(&[], &["ALL"]), &host(), true).unwrap();
        assert_eq!(caps.len(), 12);
        assert!(!caps.contains(&Capability::SysResource));
        let sets = capability_sets(caps);
        assert_eq!(sets.inheritable().as_ref().map(|s| s.len()), Some(0));
        assert_eq!(sets.ambient().as_ref().map(|s| s.len()), Some(0));
    }

    #[test]
    fn cri_path_lists_replace_the_defaults_and_privileged_has_none() {
        let sc = cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/x".into()],
            ..Default::default()
        };
        let (masked, readonly) = masked_and_readonly_paths(&sc, false);
        assert_eq!(masked, ["/proc/x"]);
        assert_eq!(readonly.len(), DEFAULT_READONLY_PATHS.len());
        assert_eq!(masked_and_readonly_paths(&sc, true), (vec![], vec![]));
    }

    fn aa(profile_type: i32, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type,
                localhost_ref: localhost_ref.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_profiles_apply_only_when_the_kernel_has_apparmor() {
        let h = host();
        assert_eq!(
            apparmor(&aa(0, ""), &h, false).unwrap().as_deref(),
            Some("crius-default")
        );
        assert_eq!(apparmor(&aa(0, ""), &h, true).unwrap(), None);
        assert_eq!(apparmor(&aa(1, ""), &h, false).unwrap(), None);
        assert_eq!(
            apparmor(&aa(2, "localhost/mine"), &h, true)
                .unwrap()
                .as_deref(),
            Some("mine")
        );
        let legacy = cri::LinuxContainerSecurityContext {
            apparmor_profile: "localhost/old".into(),
            ..Default::default()
        };
        assert_eq!(
            apparmor(&legacy, &h, false).unwrap().as_deref(),
            Some("old")
        );
        let off = HostView {
            apparmor: false,
            ..host()
        };
        assert_eq!(apparmor(&aa(2, "mine"), &off, false).unwrap(), None);
    }

    #[test]
    #[allow(deprecated)]
    fn bad_apparmor_requests_are_refused() {
        let err = apparmor(&aa(2, ""), &host(), false).unwrap_err();
        assert!(err.to_string().contains("localhost_ref"), "{err}");
        let err = apparmor(&aa(9, ""), &host(), false).unwrap_err();
        assert!(
            err.to_string().contains("apparmor: unknown profile type 9"),
            "{err}"
        );
        let legacy = cri::LinuxContainerSecurityContext {
            apparmor_profile: "weird".into(),
            ..Default::default()
        };
        let err = apparmor(&legacy, &host(), false).unwrap_err();
        assert!(
            err.to_string().contains("apparmor_profile \"weird\""),
            "{err}"
        );
    }

    #[test]
    fn selinux_labels_merge_pod_and_container_options() {
        let pod = cri::SeLinuxOption {
            level: "s0:c1,c2".into(),
            ..Default::default()
        };
        let ctr = cri::SeLinuxOption {
            r#type: "spc_t".into(),
            ..Default::default()
        };
        let (label, mount) = selinux(Some(&pod), Some(&ctr), &host(), false);
        assert_eq!(label.as_deref(), Some("system_u:system_r:spc_t:s0:c1,c2"));
        assert_eq!(
            mount.as_deref(),
            Some("system_u:object_r:container_file_t:s0:c1,c2")
        );
        assert_eq!(selinux(None, None, &host(), false), (None, None));
        assert_eq!(selinux(Some(&pod), None, &host(), true), (None, None));
        let off = HostView {
            selinux: false,
            ..host()
        };
        assert_eq!(selinux(Some(&pod), None, &off, false), (None, None));
    }
}
