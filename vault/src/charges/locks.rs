//! Per-request-id locks: copies of one request in this process run one after another, so that
//! 50 identical requests make one processor call and 49 replays.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Per-request-id locks: copies of one request in this process run one after another.
#[derive(Debug, Default)]
pub struct RequestLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one request id's lock; dropping it releases the lock and forgets an idle entry.
pub struct RequestGuard<'a> {
    owner: &'a RequestLocks,
    key: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RequestLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> RequestGuard<'_> {
        let lock = self.entry(key).lock_owned().await;
        RequestGuard {
            owner: self,
            key: key.to_owned(),
            lock: Some(lock),
        }
    }

    /// The lock of `key` if nobody holds it.
    pub fn try_lock(&self, key: &str) -> Option<RequestGuard<'_>> {
        let lock = self.entry(key).try_lock_owned().ok()?;
        Some(RequestGuard {
            owner: self,
            key: key.to_owned(),
            lock: Some(lock),
        })
    }

    /// Ids currently locked or awaited, for tests of the map's bound.
    pub fn len(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// True when no id is locked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let mut locks = self
            .owner
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map holds the entry now: nobody waits for it.
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request id's lock serializes its holders and is forgotten when the last one leaves,
    /// so the map stays bounded by requests in flight.
    #[tokio::test]
    async fn request_locks_serialize_and_forget() {
        let locks = RequestLocks::default();
        let first = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none());
        assert!(locks.try_lock("b").is_some());
        assert_eq!(locks.len(), 1, "an idle entry is removed on release");
        drop(first);
        assert!(locks.is_empty());
        let again = locks.try_lock("a");
        assert!(again.is_some());
        drop(again);
        assert!(locks.is_empty());
    }
}
