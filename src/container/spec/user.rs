//! The identity of the container process: uid, primary gid and supplemental groups.
//!
//! The user comes from `run_as_user` (a uid) or `run_as_username`, else from the image's
//! `User` (`name`, `uid`, `name:group`, `uid:gid`); `run_as_group` overrides the group. Names
//! are resolved in the image's `/etc/passwd` and `/etc/group`, given as contents. Supplemental
//! groups follow `SupplementalGroupsPolicy`: `Merge` (default) = the primary gid, the groups
//! listing the user in `/etc/group`, then the CRI `supplemental_groups`; `Strict` = the primary
//! gid and the CRI ones only.

use k8s_cri::v1 as cri;

use super::{invalid, SpecError};

/// The identity the container process starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The effective groups, primary gid first (what `setgroups` receives).
    pub additional_gids: Vec<u32>,
    /// The name of the uid in the image's `/etc/passwd`, when it has one.
    pub username: Option<String>,
}

impl ResolvedUser {
    /// The CRI form, for `ContainerStatus.user`.
    pub fn to_cri(&self) -> cri::ContainerUser {
        cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: self.uid.into(),
                gid: self.gid.into(),
                supplemental_groups: self.additional_gids.iter().map(|&g| g.into()).collect(),
            }),
        }
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines and comments are skipped, as
/// libc does.
fn passwd_entries(contents: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    contents.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?.trim();
        if name.is_empty() || name.starts_with('#') {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// `name:password:gid:member,member`.
fn group_entries(contents: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    contents.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?.trim();
        if name.is_empty() || name.starts_with('#') {
            return None;
        }
        let _password = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

fn id_from_cri(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| invalid(format!("{field}: {value} is not a valid id")))
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn resolve(
    sc: &cri::LinuxContainerSecurityContext,
    image_user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    // (what names the user, the user part, the group part)
    let (source, user_part, group_part): (String, String, Option<String>) =
        if let Some(uid) = &sc.run_as_user {
            let uid = id_from_cri("run_as_user", uid.value)?;
            ("run_as_user".into(), uid.to_string(), None)
        } else if !sc.run_as_username.is_empty() {
            if sc.run_as_username.contains(':') {
                return Err(invalid(format!(
                    "run_as_username {:?} is not a user name",
                    sc.run_as_username
                )));
            }
            ("run_as_username".into(), sc.run_as_username.clone(), None)
        } else {
            if sc.run_as_group.is_some() {
                return Err(invalid(
                    "run_as_group requires run_as_user or run_as_username",
                ));
            }
            let (u, g) = match image_user.split_once(':') {
                Some((u, g)) => (u, Some(g.to_string())),
                None => (image_user, None),
            };
            let u = if u.is_empty() { "0" } else { u };
            (format!("image user {image_user:?}"), u.to_string(), g)
        };

    let (uid, passwd_gid, username) = if is_numeric(&user_part) {
        let uid: u32 = user_part
            .parse()
            .map_err(|_| invalid(format!("{source}: {user_part} is not a valid uid")))?;
        match passwd
            .into_iter()
            .flat_map(passwd_entries)
            .find(|e| e.uid == uid)
        {
            Some(e) => (uid, e.gid, Some(e.name.to_string())),
            // A uid without an entry runs with gid 0, as Docker and CRI-O do.
            None => (uid, 0, None),
        }
    } else {
        let Some(contents) = passwd else {
            return Err(invalid(format!(
                "{source}: user {user_part:?} cannot be resolved: the image has no /etc/passwd"
            )));
        };
        let entry = passwd_entries(contents)
            .find(|e| e.name == user_part)
            .ok_or_else(|| {
                invalid(format!(
                    "{source}: user {user_part:?} not found in the image's /etc/passwd"
                ))
            })?;
        (entry.uid, entry.gid, Some(entry.name.to_string()))
    };

    let gid = if let Some(g) = &sc.run_as_group {
        id_from_cri("run_as_group", g.value)?
    } else {
        match group_part.as_deref() {
            None | Some("") => passwd_gid,
            Some(g) if is_numeric(g) => g
                .parse()
                .map_err(|_| invalid(format!("{source}: {g} is not a valid gid")))?,
            Some(g) => {
                let Some(contents) = group else {
                    return Err(invalid(format!(
                        "{source}: group {g:?} cannot be resolved: the image has no /etc/group"
                    )));
                };
                group_entries(contents)
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| {
                        invalid(format!(
                            "{source}: group {g:?} not found in the image's /etc/group"
                        ))
                    })?
            }
        }
    };

    let strict = match cri::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(cri::SupplementalGroupsPolicy::Merge) => false,
        Ok(cri::SupplementalGroupsPolicy::Strict) => true,
        Err(_) => {
            return Err(invalid(format!(
                "supplemental_groups_policy: unknown policy {}",
                sc.supplemental_groups_policy
            )))
        }
    };
    let mut groups = vec![gid];
    let mut add = |g: u32| {
        if !groups.contains(&g) {
            groups.push(g);
        }
    };
    if !strict {
        if let (Some(name), Some(contents)) = (&username, group) {
            for e in group_entries(contents) {
                if e.members.contains(&name.as_str()) {
                    add(e.gid);
                }
            }
        }
    }
    for (i, &g) in sc.supplemental_groups.iter().enumerate() {
        add(id_from_cri(&format!("supplemental_groups[{i}]"), g)?);
    }

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: groups,
        username,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/sbin/nologin
broken line
app:x:1000:1000:App:/home/app:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1000:
audio:x:29:app
video:x:44:daemon
";

    fn sc() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    fn resolve_image(user: &str) -> Result<ResolvedUser, SpecError> {
        resolve(&sc(), user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn empty_image_user_is_root_with_its_groups() {
        let u = resolve_image("").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.additional_gids, [0, 10]);
        assert_eq!(u.username.as_deref(), Some("root"));
    }

    #[test]
    fn image_user_forms_resolve() {
        let u = resolve_image("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, [1000, 10, 29]);
        let u = resolve_image("1000").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.username.as_deref()),
            (1000, 1000, Some("app"))
        );
        let u = resolve_image("app:video").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 44));
        let u = resolve_image("1000:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        // A uid without a passwd entry runs with gid 0 and no name.
        let u = resolve_image("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.username), (4242, 0, None));
        assert_eq!(u.additional_gids, [0]);
        // No /etc/passwd at all: numeric ids still work.
        let u = resolve(&sc(), "5:6", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (5, 6));
    }

    #[test]
    fn unknown_names_are_refused_naming_them() {
        for (user, needle) in [
            ("nobody", "user \"nobody\" not found"),
            ("app:nogroup", "group \"nogroup\" not found"),
        ] {
            let err = resolve_image(user).unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)));
            assert!(err.to_string().contains(needle), "{err}");
            assert!(err.to_string().contains("image user"), "{err}");
        }
        let err = resolve(&sc(), "app", None, None).unwrap_err();
        assert!(err.to_string().contains("no /etc/passwd"), "{err}");
        let mut c = sc();
        c.run_as_username = "ghost".into();
        let err = resolve(&c, "", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(
            err.to_string().contains("run_as_username: user \"ghost\""),
            "{err}"
        );
    }

    #[test]
    fn run_as_fields_override_the_image_user() {
        let mut c = sc();
        c.run_as_user = Some(cri::Int64Value { value: 1000 });
        let u = resolve(&c, "root", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        c.run_as_group = Some(cri::Int64Value { value: 3000 });
        let u = resolve(&c, "root", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        assert_eq!(u.additional_gids, [3000, 10, 29]);

        let mut c = sc();
        c.run_as_username = "daemon".into();
        let u = resolve(&c, "app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid), (1, 1));
    }

    #[test]
    fn invalid_ids_and_a_lone_run_as_group_are_refused() {
        let mut c = sc();
        c.run_as_user = Some(cri::Int64Value { value: -1 });
        let err = resolve(&c, "", None, None).unwrap_err();
        assert!(err.to_string().contains("run_as_user: -1"), "{err}");

        let mut c = sc();
        c.run_as_group = Some(cri::Int64Value { value: 5 });
        let err = resolve(&c, "", None, None).unwrap_err();
        assert!(err.to_string().contains("run_as_group requires"), "{err}");

        let mut c = sc();
        c.run_as_user = Some(cri::Int64Value { value: 1 });
        c.supplemental_groups = vec![5, 1 << 40];
        let err = resolve(&c, "", None, None).unwrap_err();
        assert!(err.to_string().contains("supplemental_groups[1]"), "{err}");

        let mut c = sc();
        c.supplemental_groups_policy = 7;
        let err = resolve(&c, "", None, None).unwrap_err();
        assert!(
            err.to_string().contains("supplemental_groups_policy"),
            "{err}"
        );
    }

    #[test]
    fn merge_adds_image_groups_and_strict_keeps_only_the_given_ones() {
        let mut c = sc();
        c.run_as_user = Some(cri::Int64Value { value: 1000 });
        c.supplemental_groups = vec![5000, 29];
        let merged = resolve(&c, "", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(merged.additional_gids, [1000, 10, 29, 5000]);

        c.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        let strict = resolve(&c, "", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(strict.additional_gids, [1000, 5000, 29]);
        let user = strict.to_cri().linux.unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.supplemental_groups, [1000, 5000, 29]);
    }
}
