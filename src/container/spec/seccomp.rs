//! Seccomp: which profile a container gets, and the built-in `RuntimeDefault` profile.
//!
//! Profiles are read in the moby/containers-common format, a superset of the OCI
//! `LinuxSeccomp` JSON: rules may carry `includes`/`excludes` conditions on the container's
//! capabilities and the host architecture, and `archMap` picks the seccomp architectures from
//! the native one. A rule applies when the container has *all* `includes.caps` and the host
//! arch is in `includes.arches` (when given), and none of the `excludes`. `minKernel` is not
//! checked (the spec generator does not know the kernel). The result is a plain OCI
//! `LinuxSeccomp`. The built-in profile (`seccomp_default.json`) is read the same way, as are
//! Localhost profiles, so both OCI and Docker-style files work.
//!
//! Choice: the container's `seccomp` field, else the deprecated `seccomp_profile_path`
//! (`runtime/default`, `docker/default`, `unconfined`, `localhost/<path>`), else `Unconfined`
//! (kubelet sends `RuntimeDefault` explicitly when it wants it; containerd and critest read an
//! unset profile the same way), or `RuntimeDefault` with `[runtime]
//! seccomp_use_default_when_empty` (CRI-O's key of the same name). Privileged containers run
//! without seccomp whatever the profile says, Localhost included (containerd and CRI-O skip
//! seccomp for them; kubelet's `seccompDefault` sends `RuntimeDefault` for them too).

use std::path::PathBuf;
use std::sync::LazyLock;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Arch, Capabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSyscall,
};
use serde::Deserialize;

use super::security::parse_capability;
use super::{invalid, SpecError};

/// The built-in profile, in the moby format (see `docs/containers-spec.md`).
const DEFAULT_PROFILE_JSON: &str = include_str!("seccomp_default.json");

static DEFAULT_PROFILE: LazyLock<Result<Profile, String>> = LazyLock::new(|| {
    serde_json::from_str(DEFAULT_PROFILE_JSON)
        .map_err(|e| format!("the built-in seccomp profile: {e}"))
});

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMapEntry>>,
    #[serde(default)]
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default)]
    listener_path: Option<PathBuf>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Option<Vec<String>>,
    /// The single-name form of old Docker profiles.
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
}

/// The native seccomp architecture and the Go-style name profiles use in `arches`.
fn native_arch(arch: &str) -> Option<(Arch, &'static str)> {
    Some(match arch {
        "x86_64" => (Arch::ScmpArchX86_64, "amd64"),
        "x86" => (Arch::ScmpArchX86, "x86"),
        "aarch64" => (Arch::ScmpArchAarch64, "arm64"),
        "arm" => (Arch::ScmpArchArm, "arm"),
        "riscv64" => (Arch::ScmpArchRiscv64, "riscv64"),
        "s390x" => (Arch::ScmpArchS390x, "s390x"),
        "powerpc64" => (Arch::ScmpArchPpc64le, "ppc64le"),
        _ => return None,
    })
}

impl Profile {
    /// Resolves conditions against the container's capabilities and the host arch.
    fn resolve(&self, caps: &Capabilities, arch: &str) -> Result<LinuxSeccomp, String> {
        let native = native_arch(arch);
        let architectures = match (&self.architectures, &self.arch_map) {
            (Some(a), Some(m)) if !a.is_empty() && !m.is_empty() => {
                return Err("sets both architectures and archMap".into())
            }
            (Some(a), _) if !a.is_empty() => Some(a.clone()),
            (_, Some(map)) => native.and_then(|(native, _)| {
                map.iter().find(|e| e.architecture == native).map(|e| {
                    std::iter::once(e.architecture)
                        .chain(e.sub_architectures.iter().flatten().copied())
                        .collect()
                })
            }),
            _ => None,
        };
        let go_arch = native.map(|(_, go)| go).unwrap_or(arch);
        let has_caps = |names: &[String]| -> Result<bool, String> {
            names.iter().try_fold(true, |all, name| {
                let cap = parse_capability(name).ok_or(format!("unknown capability {name:?}"))?;
                Ok(all && caps.contains(&cap))
            })
        };
        let mut syscalls = Vec::new();
        for rule in self.syscalls.iter().flatten() {
            let inc = rule.includes.clone().unwrap_or_default();
            let exc = rule.excludes.clone().unwrap_or_default();
            if let Some(needed) = inc.caps.as_deref().filter(|c| !c.is_empty()) {
                if !has_caps(needed)? {
                    continue;
                }
            }
            if let Some(arches) = inc.arches.as_deref().filter(|a| !a.is_empty()) {
                if !arches.iter().any(|a| a == go_arch) {
                    continue;
                }
            }
            if let Some(excluded) = exc.caps.as_deref() {
                let mut any = false;
                for name in excluded {
                    let cap =
                        parse_capability(name).ok_or(format!("unknown capability {name:?}"))?;
                    any |= caps.contains(&cap);
                }
                if any {
                    continue;
                }
            }
            if exc.arches.iter().flatten().any(|a| a == go_arch) {
                continue;
            }
            let names: Vec<String> = rule
                .names
                .iter()
                .flatten()
                .chain(rule.name.iter())
                .cloned()
                .collect();
            if names.is_empty() {
                return Err("a syscall rule has no names".into());
            }
            let mut out = LinuxSyscall::default();
            out.set_names(names)
                .set_action(rule.action)
                .set_errno_ret(rule.errno_ret)
                .set_args(rule.args.clone().filter(|a| !a.is_empty()));
            syscalls.push(out);
        }
        let mut seccomp = LinuxSeccomp::default();
        seccomp
            .set_default_action(self.default_action)
            .set_default_errno_ret(self.default_errno_ret)
            .set_architectures(architectures)
            .set_flags(self.flags.clone().filter(|f| !f.is_empty()))
            .set_listener_path(self.listener_path.clone())
            .set_listener_metadata(self.listener_metadata.clone())
            .set_syscalls(Some(syscalls));
        Ok(seccomp)
    }
}

/// The built-in `RuntimeDefault` profile for a container with `caps` on `arch`
/// (`std::env::consts::ARCH` naming).
pub fn default_profile(caps: &Capabilities, arch: &str) -> Result<LinuxSeccomp, SpecError> {
    DEFAULT_PROFILE
        .as_ref()
        .map_err(|e| SpecError::Internal(e.clone()))?
        .resolve(caps, arch)
        .map_err(|e| SpecError::Internal(format!("the built-in seccomp profile: {e}")))
}

enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

fn localhost_path(field: &str, path: &str) -> Result<Choice, SpecError> {
    if !path.starts_with('/') {
        return Err(invalid(format!(
            "{field}: the Localhost profile {path:?} must be an absolute path"
        )));
    }
    Ok(Choice::Localhost(path.to_string()))
}

fn choice(sc: &cri::LinuxContainerSecurityContext) -> Result<Option<Choice>, SpecError> {
    use cri::security_profile::ProfileType;
    if let Some(profile) = &sc.seccomp {
        return Ok(Some(match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Choice::RuntimeDefault,
            Ok(ProfileType::Unconfined) => Choice::Unconfined,
            Ok(ProfileType::Localhost) => {
                localhost_path("seccomp.localhost_ref", &profile.localhost_ref)?
            }
            Err(_) => {
                return Err(invalid(format!(
                    "seccomp: unknown profile type {}",
                    profile.profile_type
                )))
            }
        }));
    }
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    Ok(match legacy {
        "" => None,
        "runtime/default" | "docker/default" => Some(Choice::RuntimeDefault),
        "unconfined" => Some(Choice::Unconfined),
        _ => match legacy.strip_prefix("localhost/") {
            Some(path) => Some(localhost_path("seccomp_profile_path", path)?),
            None => {
                return Err(invalid(format!(
                    "seccomp_profile_path {legacy:?}: expected runtime/default, unconfined or localhost/<path>"
                )))
            }
        },
    })
}

/// The Localhost profile file a container asks for, if any: the caller reads it and passes
/// its contents as `SpecInput::seccomp_localhost`. None for a privileged container (its
/// profile is ignored).
pub fn localhost_profile_path(config: &cri::ContainerConfig) -> Option<PathBuf> {
    let sc = config.linux.as_ref()?.security_context.as_ref()?;
    if sc.privileged {
        return None;
    }
    match choice(sc) {
        Ok(Some(Choice::Localhost(path))) => Some(PathBuf::from(path)),
        _ => None,
    }
}

/// What a container without any seccomp profile gets (`[runtime]
/// seccomp_use_default_when_empty`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WhenEmpty {
    Unconfined,
    RuntimeDefault,
}

/// The seccomp section of a container's spec; `None` = unconfined.
pub(super) fn for_container(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    when_empty: WhenEmpty,
    localhost: Option<&str>,
    caps: &Capabilities,
    arch: &str,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    // The request is still validated for a privileged container, then ignored.
    let choice = match choice(sc)? {
        _ if privileged => Choice::Unconfined,
        Some(c) => c,
        None => match when_empty {
            WhenEmpty::Unconfined => Choice::Unconfined,
            WhenEmpty::RuntimeDefault => Choice::RuntimeDefault,
        },
    };
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => default_profile(caps, arch).map(Some),
        Choice::Localhost(path) => {
            let contents = localhost
                .ok_or_else(|| SpecError::NotFound(format!("seccomp profile {path} not found")))?;
            let profile: Profile = serde_json::from_str(contents)
                .map_err(|e| invalid(format!("seccomp profile {path}: {e}")))?;
            profile
                .resolve(caps, arch)
                .map(Some)
                .map_err(|e| invalid(format!("seccomp profile {path}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    fn allowed(seccomp: &LinuxSeccomp, name: &str) -> bool {
        seccomp.syscalls().iter().flatten().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().is_none()
                && s.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn the_default_profile_parses_and_denies_with_eperm() {
        let p = default_profile(&caps(&[]), "x86_64").unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().clone().unwrap(),
            [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        for name in [
            "read",
            "openat2",
            "close_range",
            "execve",
            "clock_gettime",
            "arch_prctl",
        ] {
            assert!(allowed(&p, name), "{name}");
        }
        for name in [
            "mount",
            "unshare",
            "kexec_load",
            "reboot",
            "bpf",
            "kcmp",
            "open_by_handle_at",
            "io_uring_setup",
        ] {
            assert!(!allowed(&p, name), "{name}");
        }
        let a = default_profile(&caps(&[]), "aarch64").unwrap();
        assert_eq!(
            a.architectures().clone().unwrap(),
            [Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
        assert!(!allowed(&a, "arch_prctl"));
        assert!(allowed(&a, "set_tls"));
    }

    #[test]
    fn capabilities_open_their_syscalls() {
        let p = default_profile(
            &caps(&[Capability::SysAdmin, Capability::SysPtrace]),
            "x86_64",
        )
        .unwrap();
        for name in ["mount", "unshare", "setns", "kcmp", "clone3"] {
            assert!(allowed(&p, name), "{name}");
        }
        // The clone argument filter only exists without CAP_SYS_ADMIN.
        let plain = default_profile(&caps(&[]), "x86_64").unwrap();
        let clone_rules = |p: &LinuxSeccomp| {
            p.syscalls()
                .iter()
                .flatten()
                .filter(|s| s.names().iter().any(|n| n == "clone"))
                .count()
        };
        assert_eq!(clone_rules(&plain), 1);
        assert!(plain
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.names().iter().any(|n| n == "clone3") && s.errno_ret() == Some(38)));
    }

    fn sc_with(profile_type: i32, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type,
                localhost_ref: localhost_ref.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    #[allow(deprecated)]
    fn the_choice_follows_the_field_then_the_legacy_path_then_the_default() {
        let none = caps(&[]);
        let run = |sc: &cri::LinuxContainerSecurityContext, privileged, local| {
            for_container(
                sc,
                privileged,
                WhenEmpty::Unconfined,
                local,
                &none,
                "x86_64",
            )
        };
        // No profile at all: unconfined, or the built-in one when configured so (issue 11).
        assert!(run(&Default::default(), false, None).unwrap().is_none());
        let with_default = |sc: &cri::LinuxContainerSecurityContext, privileged| {
            for_container(
                sc,
                privileged,
                WhenEmpty::RuntimeDefault,
                None,
                &none,
                "x86_64",
            )
        };
        assert_eq!(
            with_default(&Default::default(), false).unwrap(),
            Some(default_profile(&none, "x86_64").unwrap())
        );
        assert!(with_default(&Default::default(), true).unwrap().is_none());
        assert!(with_default(&sc_with(1, ""), false).unwrap().is_none());
        assert!(run(&sc_with(0, ""), false, None).unwrap().is_some());
        assert!(run(&Default::default(), true, None).unwrap().is_none());
        assert!(run(&sc_with(1, ""), false, None).unwrap().is_none());
        assert!(run(&sc_with(0, ""), true, None).unwrap().is_none());
        let legacy = |path: &str| cri::LinuxContainerSecurityContext {
            seccomp_profile_path: path.into(),
            ..Default::default()
        };
        assert!(run(&legacy("unconfined"), false, None).unwrap().is_none());
        assert!(run(&legacy("docker/default"), false, None)
            .unwrap()
            .is_some());
        let oci = r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#;
        let got = run(&legacy("localhost//etc/p.json"), false, Some(oci))
            .unwrap()
            .unwrap();
        assert_eq!(got.default_action(), LinuxSeccompAction::ScmpActLog);
        assert!(run(&sc_with(2, "/etc/p.json"), false, Some(oci))
            .unwrap()
            .is_some());
    }

    /// Issue 11 item 4b: a privileged container was confined by a Localhost profile; it runs
    /// without seccomp whatever the profile says, and its profile file is not even read.
    #[test]
    fn privileged_containers_ignore_every_profile_including_localhost() {
        let none = caps(&[]);
        let oci = r#"{"defaultAction":"SCMP_ACT_LOG"}"#;
        for (sc, local) in [
            (sc_with(0, ""), None),
            (sc_with(2, "/etc/p.json"), Some(oci)),
            (sc_with(2, "/etc/missing.json"), None),
        ] {
            for when_empty in [WhenEmpty::Unconfined, WhenEmpty::RuntimeDefault] {
                let got = for_container(&sc, true, when_empty, local, &none, "x86_64");
                assert!(got.unwrap().is_none(), "{sc:?}");
            }
        }
        let privileged = cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    privileged: true,
                    ..sc_with(2, "/var/lib/kubelet/seccomp/p.json")
                }),
                resources: None,
            }),
            ..Default::default()
        };
        assert_eq!(localhost_profile_path(&privileged), None);
        // A malformed request is still refused.
        let err = for_container(
            &sc_with(2, "p.json"),
            true,
            WhenEmpty::Unconfined,
            None,
            &none,
            "x86_64",
        );
        assert!(err.is_err());
    }

    #[test]
    fn localhost_profiles_are_found_through_the_helper() {
        let config = cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc_with(2, "/var/lib/kubelet/seccomp/p.json")),
                resources: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            localhost_profile_path(&config),
            Some(PathBuf::from("/var/lib/kubelet/seccomp/p.json"))
        );
        assert_eq!(localhost_profile_path(&Default::default()), None);
    }

    #[test]
    #[allow(deprecated)]
    fn bad_seccomp_requests_are_refused_naming_the_field() {
        const U: WhenEmpty = WhenEmpty::Unconfined;
        let none = caps(&[]);
        let err =
            for_container(&sc_with(2, "/p.json"), false, U, None, &none, "x86_64").unwrap_err();
        assert!(matches!(err, SpecError::NotFound(_)));
        assert!(err.to_string().contains("/p.json"), "{err}");
        let err =
            for_container(&sc_with(2, "p.json"), false, U, None, &none, "x86_64").unwrap_err();
        assert!(err.to_string().contains("seccomp.localhost_ref"), "{err}");
        let err = for_container(&sc_with(2, "/p.json"), false, U, Some("{"), &none, "x86_64")
            .unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)));
        assert!(err.to_string().contains("seccomp profile /p.json"), "{err}");
        let err = for_container(&sc_with(5, ""), false, U, None, &none, "x86_64").unwrap_err();
        assert!(
            err.to_string().contains("seccomp: unknown profile type 5"),
            "{err}"
        );
        let legacy = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: "strict".into(),
            ..Default::default()
        };
        let err = for_container(&legacy, false, U, None, &none, "x86_64").unwrap_err();
        assert!(
            err.to_string().contains("seccomp_profile_path \"strict\""),
            "{err}"
        );
        let both = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#;
        let err = for_container(
            &sc_with(2, "/p.json"),
            false,
            U,
            Some(both),
            &none,
            "x86_64",
        )
        .unwrap_err();
        assert!(err.to_string().contains("archMap"), "{err}");
    }
}
