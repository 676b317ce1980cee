//! A user's index in the memory store: handles ordered by expiry, like the Redis ZSET.

use std::collections::{BTreeSet, HashMap};

/// A user's sessions by handle, ordered by expiry (like the Redis ZSET): pruning and eviction
/// take the soonest-expiring entries without scanning the rest.
#[derive(Default)]
pub(super) struct Index {
    score: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
}

impl Index {
    pub(super) fn len(&self) -> usize {
        self.score.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.score.is_empty()
    }

    pub(super) fn insert(&mut self, handle: String, e: i64) {
        if let Some(old) = self.score.insert(handle.clone(), e) {
            self.order.remove(&(old, handle.clone()));
        }
        self.order.insert((e, handle));
    }

    /// Sets the score of an indexed handle (`ZADD XX`).
    pub(super) fn update(&mut self, handle: &str, e: i64) {
        if self.score.contains_key(handle) {
            self.insert(handle.to_owned(), e);
        }
    }

    pub(super) fn remove(&mut self, handle: &str) -> bool {
        match self.score.remove(handle) {
            Some(old) => {
                self.order.remove(&(old, handle.to_owned()));
                true
            }
            None => false,
        }
    }

    /// The entries that expired by `now` (`ZRANGEBYSCORE -inf now`).
    pub(super) fn expired(&self, now: i64) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(e, _)| *e <= now)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Drops the entries that expired by `now` (`ZREMRANGEBYSCORE -inf now`).
    pub(super) fn prune(&mut self, now: i64) {
        while self.order.first().is_some_and(|(e, _)| *e <= now) {
            if let Some((_, h)) = self.order.pop_first() {
                self.score.remove(&h);
            }
        }
    }

    /// The soonest-expiring handle other than `keep`.
    pub(super) fn first_except(&self, keep: &str) -> Option<String> {
        self.order
            .iter()
            .map(|(_, h)| h)
            .find(|h| h.as_str() != keep)
            .cloned()
    }

    /// The handles, soonest-expiring first.
    pub(super) fn handles(&self) -> Vec<String> {
        self.order.iter().map(|(_, h)| h.clone()).collect()
    }

    pub(super) fn drain(&mut self) -> Vec<String> {
        self.score.clear();
        std::mem::take(&mut self.order)
            .into_iter()
            .map(|(_, h)| h)
            .collect()
    }
}
