//! Pending streaming requests: what an Exec/Attach/PortForward RPC asked for, kept under a
//! random single-use token until the client connects to the URL the RPC returned.
//!
//! Tokens expire after [`TTL`] (kubelet connects at once) and at most [`MAX_PENDING`] wait at a
//! time, as in the kubelet streaming library CRI-O uses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::error::{Error, Result};
use crate::util::lock;

/// How long a token stays valid.
pub const TTL: Duration = Duration::from_secs(60);
/// Most tokens waiting at once.
pub const MAX_PENDING: usize = 1000;

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    /// The URL path segment of this kind of request.
    pub fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

#[derive(Default)]
pub struct RequestCache {
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl RequestCache {
    /// Stores `pending` and returns its token.
    pub fn insert(&self, pending: Pending) -> Result<String> {
        let token = crate::util::new_id()?[..32].to_string();
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        entries.retain(|_, (at, _)| now.duration_since(*at) < TTL);
        if entries.len() >= MAX_PENDING {
            return Err(Error::FailedPrecondition(format!(
                "{MAX_PENDING} streaming requests are already waiting for their client; retry later"
            )));
        }
        entries.insert(token.clone(), (now, pending));
        Ok(token)
    }

    /// Takes the request of `token` (once); `None` when unknown or expired.
    pub fn take(&self, token: &str) -> Option<Pending> {
        let (at, pending) = lock(&self.entries).remove(token)?;
        (at.elapsed() < TTL).then_some(pending)
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_once() {
        let cache = RequestCache::default();
        let token = cache
            .insert(Pending::Exec(cri::ExecRequest {
                container_id: "c".into(),
                ..Default::default()
            }))
            .unwrap();
        assert_eq!(token.len(), 32);
        let other = cache.insert(Pending::Attach(Default::default())).unwrap();
        assert_ne!(token, other);
        match cache.take(&token) {
            Some(Pending::Exec(r)) => assert_eq!(r.container_id, "c"),
            other => panic!("{other:?}"),
        }
        assert!(cache.take(&token).is_none());
        assert!(cache.take("nope").is_none());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn too_many_pending_requests_are_refused() {
        let cache = RequestCache::default();
        for _ in 0..MAX_PENDING {
            cache.insert(Pending::Attach(Default::default())).unwrap();
        }
        let err = cache
            .insert(Pending::Attach(Default::default()))
            .unwrap_err();
        assert!(err.to_string().contains("already waiting"), "{err}");
    }
}
