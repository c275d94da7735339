//! The container process: argv, environment, working directory and stop signal.
//!
//! Kubernetes semantics: CRI `command` replaces the image Entrypoint and CRI `args` the image
//! Cmd; a `command` without `args` does not use the image Cmd.

use k8s_cri::v1 as cri;

use super::{invalid, ImageView, SpecError};

/// `PATH` when neither the image nor the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// SIGTERM, the stop signal when the image has none.
const SIGTERM: i32 = 15;

pub(super) fn argv(
    config: &cri::ContainerConfig,
    image: &ImageView,
) -> Result<Vec<String>, SpecError> {
    let argv: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else {
        let rest = if config.args.is_empty() {
            &image.cmd
        } else {
            &config.args
        };
        image.entrypoint.iter().chain(rest).cloned().collect()
    };
    match argv.first() {
        None => Err(invalid(
            "container has no command: neither command/args nor the image's Entrypoint/Cmd set one",
        )),
        Some(first) if first.is_empty() => Err(invalid("command: the executable is empty")),
        Some(_) => {
            if let Some(bad) = argv.iter().position(|a| a.contains('\0')) {
                return Err(invalid(format!(
                    "command/args: argument {bad} contains a NUL byte"
                )));
            }
            Ok(argv)
        }
    }
}

/// Image env, then `HOSTNAME`, then the CRI envs (each replacing an entry with the same key in
/// place); `PATH` and, for a tty, `TERM=xterm` when still missing.
pub(super) fn env(
    config: &cri::ContainerConfig,
    image: &ImageView,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for (i, entry) in image.env.iter().enumerate() {
        if entry.contains('\0') {
            return Err(invalid(format!("image env entry {i} contains a NUL byte")));
        }
        let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if !key.is_empty() {
            set(&mut env, key, value);
        }
    }
    if !hostname.is_empty() {
        set(&mut env, "HOSTNAME", hostname);
    }
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() {
            return Err(invalid(format!("envs[{i}]: key is required")));
        }
        if kv.key.contains(['=', '\0']) {
            return Err(invalid(format!(
                "envs[{i}]: key {:?} must not contain '=' or NUL",
                kv.key
            )));
        }
        if kv.value.contains('\0') {
            return Err(invalid(format!(
                "envs[{i}] {:?}: value contains a NUL byte",
                kv.key
            )));
        }
        set(&mut env, &kv.key, &kv.value);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if config.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// CRI `working_dir`, else the image's `WorkingDir`, else `/`.
pub(super) fn cwd(config: &cri::ContainerConfig, image: &ImageView) -> Result<String, SpecError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') || config.working_dir.contains('\0') {
            return Err(invalid(format!(
                "working_dir {:?} must be an absolute path",
                config.working_dir
            )));
        }
        return Ok(config.working_dir.clone());
    }
    let wd = image.working_dir.as_str();
    Ok(match wd {
        "" => "/".into(),
        _ if wd.starts_with('/') => wd.into(),
        // Docker makes a relative WorkingDir absolute at build time; old images may not.
        _ => format!("/{wd}"),
    })
}

pub(super) fn stop_signal(image_signal: &str) -> Result<i32, SpecError> {
    if image_signal.is_empty() {
        return Ok(SIGTERM);
    }
    parse_signal(image_signal)
        .ok_or_else(|| invalid(format!("image StopSignal {image_signal:?} is not a signal")))
}

/// Parses a signal as images write it: `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-1`.
/// Linux numbering (the same on x86_64 and aarch64).
pub fn parse_signal(s: &str) -> Option<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("IOT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("POLL", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    const RTMIN: i32 = 34;
    const RTMAX: i32 = 64;
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Some(n);
    }
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = match rest {
            "" => base,
            _ if rest.starts_with('+') => base + rest[1..].parse::<i32>().ok()?,
            _ if rest.starts_with('-') => base - rest[1..].parse::<i32>().ok()?,
            _ => return None,
        };
        (RTMIN..=RTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(RTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(RTMAX, rest);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageView {
        ImageView {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_kubernetes_command_and_args_semantics() {
        let img = image(&["/entry"], &["cmd-arg"]);
        // Nothing given: Entrypoint + Cmd.
        assert_eq!(
            argv(&config(&[], &[]), &img).unwrap(),
            ["/entry", "cmd-arg"]
        );
        // args only: Entrypoint + args (Cmd replaced).
        assert_eq!(argv(&config(&[], &["a"]), &img).unwrap(), ["/entry", "a"]);
        // command only: the image Cmd is NOT used.
        assert_eq!(argv(&config(&["/bin/sh"], &[]), &img).unwrap(), ["/bin/sh"]);
        // command + args.
        assert_eq!(
            argv(&config(&["/bin/sh"], &["-c", "x"]), &img).unwrap(),
            ["/bin/sh", "-c", "x"]
        );
        // Image with Cmd only.
        assert_eq!(
            argv(&config(&[], &[]), &image(&[], &["sh"])).unwrap(),
            ["sh"]
        );
    }

    #[test]
    fn an_empty_command_is_refused() {
        let err = argv(&config(&[], &[]), &image(&[], &[])).unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)));
        assert!(err.to_string().contains("no command"), "{err}");
        let err = argv(&config(&[""], &[]), &image(&[], &[])).unwrap_err();
        assert!(err.to_string().contains("command"), "{err}");
        let err = argv(&config(&["sh", "a\0b"], &[]), &image(&[], &[])).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn env_is_image_then_hostname_then_cri_with_path_and_term_defaults() {
        let img = ImageView {
            env: vec!["A=1".into(), "B=2".into(), "HOSTNAME=img".into()],
            ..Default::default()
        };
        let mut cfg = config(&[], &[]);
        cfg.envs = vec![
            cri::KeyValue {
                key: "B".into(),
                value: "x=y".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: String::new(),
            },
        ];
        cfg.tty = true;
        assert_eq!(
            env(&cfg, &img, "pod-host").unwrap(),
            [
                format!("PATH={DEFAULT_PATH}"),
                "A=1".into(),
                "B=x=y".into(),
                "HOSTNAME=pod-host".into(),
                "C=".into(),
                "TERM=xterm".into(),
            ]
        );
    }

    #[test]
    fn env_keeps_the_image_path_and_term_and_lets_cri_override_hostname() {
        let img = ImageView {
            env: vec!["PATH=/x".into(), "TERM=vt100".into()],
            ..Default::default()
        };
        let mut cfg = config(&[], &[]);
        cfg.tty = true;
        cfg.envs = vec![cri::KeyValue {
            key: "HOSTNAME".into(),
            value: "mine".into(),
        }];
        assert_eq!(
            env(&cfg, &img, "pod").unwrap(),
            ["PATH=/x", "TERM=vt100", "HOSTNAME=mine"]
        );
    }

    #[test]
    fn bad_env_keys_are_refused_with_their_index() {
        for key in ["", "A=B", "a\0"] {
            let mut cfg = config(&[], &[]);
            cfg.envs = vec![cri::KeyValue {
                key: key.into(),
                value: "v".into(),
            }];
            let err = env(&cfg, &ImageView::default(), "h").unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)));
            assert!(err.to_string().contains("envs[0]"), "{err}");
        }
    }

    #[test]
    fn cwd_prefers_cri_then_image_then_root() {
        let img = ImageView {
            working_dir: "/app".into(),
            ..Default::default()
        };
        let mut cfg = config(&[], &[]);
        assert_eq!(cwd(&cfg, &img).unwrap(), "/app");
        assert_eq!(cwd(&cfg, &ImageView::default()).unwrap(), "/");
        cfg.working_dir = "/work".into();
        assert_eq!(cwd(&cfg, &img).unwrap(), "/work");
        cfg.working_dir = "rel".into();
        let err = cwd(&cfg, &img).unwrap_err();
        assert!(err.to_string().contains("working_dir \"rel\""), "{err}");
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(stop_signal("").unwrap(), 15);
        for (s, n) in [
            ("SIGTERM", 15),
            ("TERM", 15),
            ("sigkill", 9),
            ("2", 2),
            ("SIGRTMIN+3", 37),
            ("RTMAX-1", 63),
            ("SIGWINCH", 28),
        ] {
            assert_eq!(parse_signal(s), Some(n), "{s}");
        }
        for bad in ["SIGFOO", "0", "65", "RTMIN+40", "RTMINx"] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
        let err = stop_signal("SIGFOO").unwrap_err();
        assert!(err.to_string().contains("StopSignal \"SIGFOO\""), "{err}");
    }
}
