//! Registry authentication: credentials, `WWW-Authenticate` challenges, token requests and the
//! per-pull cache of `Authorization` values.
//!
//! Owns the Docker token flow (`Bearer realm=...` → GET/POST realm → `token`/`access_token`)
//! and HTTP Basic. Must not log secrets or send credentials before a registry asks for them
//! (with a challenge); must not decide endpoint order or interpret manifests.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;

use super::error::RegistryError;

/// Largest token-server answer read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Overall deadline of one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
/// `client_id` sent with OAuth2 refresh-token requests.
const CLIENT_ID: &str = "crius";

/// Credentials for one registry, as CRI's `AuthConfig` or a Docker auth file carries them.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `user:pass`.
    pub auth: String,
    /// OAuth2 refresh token for the token server.
    pub identity_token: String,
    /// Bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    /// Never prints secrets: only which fields are set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

impl Credentials {
    /// `(user, password)` from `username`/`password`, else decoded from `auth`.
    pub(crate) fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if self.auth.is_empty() {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercased: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names lowercased; values unquoted.
    pub params: BTreeMap<String, String>,
}

/// Parses `WWW-Authenticate` values (RFC 7235): several challenges, quoted values with commas
/// and escapes. Never fails: unparsable parts are skipped.
pub(crate) fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let is_sep = |b: u8| b == b',' || b.is_ascii_whitespace();
    let skip = |i: &mut usize, f: &dyn Fn(u8) -> bool| {
        while *i < s.len() && f(s[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !is_sep(s[*i]) && s[*i] != b'=' && s[*i] != b'"' {
            *i += 1;
        }
        &header[start..*i]
    };
    loop {
        skip(&mut i, &is_sep);
        let scheme = token(&mut i);
        if scheme.is_empty() {
            // Stray '=' or '"': skip a byte so we always make progress.
            if i >= s.len() {
                break;
            }
            i += 1;
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        loop {
            skip(&mut i, &|b: u8| b.is_ascii_whitespace() || b == b',');
            let save = i;
            let name = token(&mut i);
            skip(&mut i, &|b: u8| b == b' ' || b == b'\t');
            if name.is_empty() || i >= s.len() || s[i] != b'=' {
                // Not `name=`: the start of the next challenge (or token68; ignored).
                i = save;
                break;
            }
            i += 1; // '='
            skip(&mut i, &|b: u8| b == b' ' || b == b'\t');
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                let mut chars = header[i..].char_indices();
                let mut end = header.len();
                while let Some((off, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, esc)) = chars.next() {
                                v.push(esc);
                            }
                        }
                        '"' => {
                            end = i + off + 1;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                i = end;
                v
            } else {
                let start = i;
                while i < s.len() && !is_sep(s[i]) {
                    i += 1;
                }
                header[start..i].to_string()
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
        }
        out.push(challenge);
        if i >= s.len() {
            break;
        }
    }
    out
}

/// Authorization state of one pull: the credentials and the `Authorization` value that worked
/// per (endpoint host, repository).
pub(crate) struct Session {
    credentials: Option<Credentials>,
    cache: Mutex<HashMap<(String, String), String>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(credentials: Option<Credentials>) -> Session {
        Session {
            credentials,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cached `Authorization` value for `repository` on `host`.
    pub fn cached(&self, host: &str, repository: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&(host.to_string(), repository.to_string()))
            .cloned()
    }

    fn remember(&self, host: &str, repository: &str, value: String) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert((host.to_string(), repository.to_string()), value);
    }

    /// Answers `challenges` for pull access to `repository` on `host`; returns the
    /// `Authorization` value to retry with (and caches it), or `None` when we have nothing to
    /// offer (no credentials for Basic, unknown scheme).
    pub async fn authorize(
        &self,
        http: &reqwest::Client,
        challenges: &[Challenge],
        host: &str,
        repository: &str,
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        let creds = self.credentials.as_ref();
        let value = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            match creds.filter(|c| !c.registry_token.is_empty()) {
                Some(c) => Some(format!("Bearer {}", c.registry_token)),
                None => {
                    let token = fetch_token(http, bearer, creds, repository, what).await?;
                    Some(format!("Bearer {token}"))
                }
            }
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            creds.and_then(Credentials::basic).map(|(u, p)| {
                let raw = format!("{u}:{p}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            })
        } else {
            None
        };
        if let Some(v) = &value {
            self.remember(host, repository, v.clone());
        }
        Ok(value)
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

/// Gets a bearer token from the challenge's realm for `repository:<repository>:pull`.
async fn fetch_token(
    http: &reqwest::Client,
    challenge: &Challenge,
    creds: Option<&Credentials>,
    repository: &str,
    what: &str,
) -> Result<String, RegistryError> {
    let realm = challenge
        .params
        .get("realm")
        .map(String::as_str)
        .unwrap_or("");
    let realm_url = reqwest::Url::parse(realm)
        .ok()
        .filter(|u| u.scheme() == "https" || u.scheme() == "http");
    let Some(realm_url) = realm_url else {
        return Err(RegistryError::BadContent {
            what: what.to_string(),
            detail: format!("bearer challenge has no usable realm ({realm:?})"),
        });
    };
    let realm_host = realm_url.host_str().unwrap_or("").to_string();
    let service = challenge.params.get("service").cloned().unwrap_or_default();
    let scope = format!("repository:{repository}:pull");

    let mut response = None;
    if let Some(refresh) = creds
        .map(|c| c.identity_token.as_str())
        .filter(|t| !t.is_empty())
    {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("service", service.as_str()),
            ("scope", scope.as_str()),
            ("client_id", CLIENT_ID),
        ];
        tracing::debug!(realm = %realm_url, %service, %scope, "token request (oauth2 refresh token)");
        let r = http
            .post(realm_url.clone())
            .form(&form)
            .timeout(TOKEN_TIMEOUT)
            .send()
            .await
            .map_err(|e| token_unavailable(what, &realm_host, &e))?;
        // Token servers without OAuth2 support answer 404/405: fall back to GET below.
        if !matches!(r.status().as_u16(), 404 | 405) {
            response = Some(r);
        }
    }
    let response = match response {
        Some(r) => r,
        None => {
            let mut query: Vec<(&str, &str)> = vec![("scope", scope.as_str())];
            if !service.is_empty() {
                query.insert(0, ("service", service.as_str()));
            }
            let mut req = http
                .get(realm_url.clone())
                .query(&query)
                .timeout(TOKEN_TIMEOUT);
            if let Some((u, p)) = creds.and_then(Credentials::basic) {
                req = req.basic_auth(u, Some(p));
            }
            tracing::debug!(realm = %realm_url, %service, %scope, "token request");
            req.send()
                .await
                .map_err(|e| token_unavailable(what, &realm_host, &e))?
        }
    };
    let status = response.status();
    let body = super::read_limited(response, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| RegistryError::Unavailable {
            what: what.to_string(),
            detail: format!("token server {realm_host}: {e}"),
        })?;
    tracing::debug!(realm = %realm_url, status = status.as_u16(), "token response");
    if !status.is_success() {
        let message = super::error_message(status, &body);
        return Err(match status.as_u16() {
            401 => RegistryError::Unauthenticated {
                what: what.to_string(),
                host: realm_host,
                message,
            },
            403 => RegistryError::PermissionDenied {
                what: what.to_string(),
                host: realm_host,
                message,
            },
            429 | 500..=599 => RegistryError::Unavailable {
                what: what.to_string(),
                detail: format!("token server {realm_host}: {message}"),
            },
            s => RegistryError::Http {
                what: what.to_string(),
                host: realm_host,
                status: s,
                message,
            },
        });
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| RegistryError::BadContent {
            what: what.to_string(),
            detail: format!("token server {realm_host} answered invalid JSON: {e}"),
        })?;
    let token = if parsed.token.is_empty() {
        parsed.access_token
    } else {
        parsed.token
    };
    if token.is_empty() {
        return Err(RegistryError::Unauthenticated {
            what: what.to_string(),
            host: realm_host,
            message: "token server answered without a token".to_string(),
        });
    }
    Ok(token)
}

fn token_unavailable(what: &str, host: &str, e: &reqwest::Error) -> RegistryError {
    RegistryError::Unavailable {
        what: what.to_string(),
        detail: format!("token server {host}: {}", super::error_chain(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "https://auth.docker.io/token"),
                ("scope", "repository:library/busybox:pull"),
                ("service", "registry.docker.io"),
            ]
        );
    }

    #[test]
    fn parses_quoted_commas_escapes_spacing_and_case() {
        let c = parse_www_authenticate(
            r#"BEARER Realm = "https://a.example/token?x=1,2" , scope="repository:a/b:pull,push",error="insufficient_scope", desc="say \"hi\"""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://a.example/token?x=1,2");
        assert_eq!(c[0].params["scope"], "repository:a/b:pull,push");
        assert_eq!(c[0].params["error"], "insufficient_scope");
        assert_eq!(c[0].params["desc"], r#"say "hi""#);
    }

    #[test]
    fn parses_basic_unquoted_and_several_challenges() {
        let c = parse_www_authenticate(r#"Basic realm=registry"#);
        assert_eq!(
            (c[0].scheme.as_str(), c[0].params["realm"].as_str()),
            ("basic", "registry")
        );

        let c = parse_www_authenticate(
            r#"Basic realm="Registry Realm", Bearer realm="https://t.example/token",service="svc""#,
        );
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer"]);
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].params["service"], "svc");

        let c = parse_www_authenticate("Negotiate, Basic");
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "basic"]);
    }

    #[test]
    fn never_panics_on_garbage() {
        for h in [
            "",
            "   ",
            ",,,",
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=",
            "Bearer =x",
            "Bearer realm=\"a\\",
            "Bearer realm=\"é\\\"ü\"",
            "a=b=c, \"x\"=y",
            "Basic dG9rZW42OA==",
        ] {
            let _ = parse_www_authenticate(h);
        }
        let c = parse_www_authenticate("Bearer realm=\"unterminated");
        assert_eq!(c[0].params["realm"], "unterminated");
    }

    #[test]
    fn basic_credentials_from_fields_or_auth() {
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(c.basic(), Some(("u".into(), "p".into())));
        let c = Credentials {
            auth: "dXNlcjpwYTpzcw==".into(), // user:pa:ss
            ..Default::default()
        };
        assert_eq!(c.basic(), Some(("user".into(), "pa:ss".into())));
        let c = Credentials {
            auth: "not base64!".into(),
            ..Default::default()
        };
        assert_eq!(c.basic(), None);
        assert_eq!(Credentials::default().basic(), None);
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
            auth: "c2VjcmV0".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
        };
        let s = format!("{c:?}");
        for secret in ["hunter2", "c2VjcmV0", "idtok", "regtok"] {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(s.contains("\"u\""), "{s}");
    }

    #[tokio::test]
    async fn basic_challenge_without_credentials_offers_nothing() {
        let http = reqwest::Client::new();
        let s = Session::new(None);
        let c = parse_www_authenticate("Basic realm=x");
        assert_eq!(s.authorize(&http, &c, "h", "r", "w").await.unwrap(), None);
        let s = Session::new(Some(Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        }));
        let v = s.authorize(&http, &c, "h", "r", "w").await.unwrap();
        assert_eq!(v.as_deref(), Some("Basic dTpw"));
        assert_eq!(s.cached("h", "r").as_deref(), Some("Basic dTpw"));
        assert_eq!(s.cached("h", "other"), None);
    }

    #[tokio::test]
    async fn registry_token_is_used_directly() {
        let http = reqwest::Client::new();
        let s = Session::new(Some(Credentials {
            registry_token: "rt".into(),
            ..Default::default()
        }));
        let c = parse_www_authenticate(r#"Bearer realm="https://unreachable.invalid/token""#);
        let v = s.authorize(&http, &c, "h", "r", "w").await.unwrap();
        assert_eq!(v.as_deref(), Some("Bearer rt"));
    }
}
