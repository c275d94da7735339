//! Docker-style credentials files (`~/.docker/config.json`, containers-auth.json).
//!
//! Owns reading `{"auths": {"HOST": {"auth": "base64(user:pass)", "identitytoken": ...}}}` and
//! picking the entry for a registry host. Must not cache: the file is re-read per pull so edits
//! apply without a restart.

use std::path::Path;

use base64::Engine;

use super::registry::Credentials;

/// Keys a docker.io entry may be stored under.
const DOCKER_HUB_KEYS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "https://index.docker.io/v1/",
    "registry-1.docker.io",
];

/// Credentials for `registry` in the file at `path`; None when absent or unreadable (logged).
pub fn lookup(path: &Path, registry: &str) -> Option<Credentials> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "auth file unreadable");
            return None;
        }
    };
    let doc: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "auth file is not JSON");
            return None;
        }
    };
    let auths = doc.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(key, value)| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let matches = host == registry
            || (registry == "docker.io" && DOCKER_HUB_KEYS.iter().any(|k| k == key || *k == host));
        matches.then_some(value)
    })?;
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let mut creds = Credentials {
        username: field("username"),
        password: field("password"),
        auth: field("auth"),
        identity_token: field("identitytoken"),
        registry_token: field("registrytoken"),
    };
    if creds.username.is_empty() && !creds.auth.is_empty() {
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(creds.auth.trim()) {
            if let Some((u, p)) = String::from_utf8_lossy(&decoded).split_once(':') {
                creds.username = u.to_string();
                creds.password = p.to_string();
            }
        }
    }
    Some(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entries_by_host_and_docker_hub_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // "dXNlcjpwYXNz" is base64("user:pass").
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let hub = lookup(&path, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pass")
        );
        let local = lookup(&path, "127.0.0.1:5000").unwrap();
        assert_eq!(local.username, "u");
        assert!(lookup(&path, "quay.io").is_none());
        assert!(lookup(&dir.path().join("missing.json"), "docker.io").is_none());
    }
}
