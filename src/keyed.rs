//! Per-key async locks: serialize work on one object (a pod, a digest) without a global lock
//! held across I/O.
//!
//! Owns only the lock table; entries nobody holds are dropped on the next lookup so the table
//! stays as small as the number of objects being worked on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Debug, Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// The lock of `key` (created on first use).
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Waits for and holds the lock of `key`.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        self.get(key).lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_idle_entries_are_dropped() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        assert!(locks.get("a").try_lock().is_err());
        assert!(locks.get("b").try_lock().is_ok());
        drop(a);
        assert!(locks.get("a").try_lock().is_ok());
        let _ = locks.get("c");
        assert!(locks.locks.lock().unwrap().len() <= 1);
    }
}
