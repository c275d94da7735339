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

/// Per-key async read-write locks: many holders of a key's read side at once (containers
/// created in one pod, from one image), or one of its write side (the pod stopped or removed,
/// the image removed).
#[derive(Debug, Default)]
pub struct KeyedRwLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

impl KeyedRwLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = match self.locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Waits for and holds the shared side of `key`.
    pub async fn read(&self, key: &str) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.get(key).read_owned().await
    }

    /// Waits for and holds the exclusive side of `key`.
    pub async fn write(&self, key: &str) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.get(key).write_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_share_a_key_and_a_writer_excludes_them() {
        let locks = KeyedRwLocks::default();
        let r1 = locks.read("pod").await;
        let _r2 = locks.read("pod").await;
        assert!(locks.get("pod").try_write().is_err());
        assert!(locks.get("other").try_write().is_ok());
        drop(r1);
        drop(_r2);
        let w = locks.write("pod").await;
        assert!(locks.get("pod").try_read().is_err());
        drop(w);
        assert!(locks.get("pod").try_read().is_ok());
    }

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
