//! Lookups: the L1, then the store; undecodable, colliding or invalidated entries are misses.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Cache, Tracked, stats::bump};
use crate::{
    envelope::{DecodeError, Entry},
    key::Key,
};

impl Cache {
    /// Reads and validates an entry: L1 first, then the store (with the tags' generations
    /// read concurrently). Undecodable, colliding or invalidated entries are misses. Store
    /// failures are misses too (fail-open, counted).
    pub(crate) async fn read(&self, key: &Key, tags: &[String]) -> Option<Arc<Entry>> {
        match self.read_in_process(key) {
            Some(entry) => Some(entry),
            None => self.read_store(key, tags).await,
        }
    }

    /// The entry held in process for `key`: the L1's, else the tracked tier's while its stamp
    /// is current. Such an entry needs no tag check: the L1's lifetime is its bound, and a
    /// tracked entry's stamp covers all of its tags.
    pub(crate) fn read_in_process(&self, key: &Key) -> Option<Arc<Entry>> {
        if let Some(l1) = &self.inner.l1 {
            // Keyed by the full canonical key: equal keys, same entry (no digest needed).
            if let Some(v) = l1.get(key.canonical()) {
                bump(&self.inner.stats.l1_hits);
                return Some(v.entry);
            }
        }
        let tracked = self.inner.tracked.as_ref()?;
        let v = tracked.get(key.canonical())?;
        if v.stamp.is_current() {
            bump(&self.inner.stats.near_hits);
            return Some(v.entry);
        }
        tracked.invalidate(key.canonical());
        None
    }

    /// Reads and validates an entry from the store (never the L1), and puts it in the L1.
    pub(crate) async fn read_store(&self, key: &Key, tags: &[String]) -> Option<Arc<Entry>> {
        self.read_store_counted(key, tags, true).await
    }

    /// [`read_store`](Self::read_store); `count_corrupt` is false for re-reads of an entry
    /// the caller already found undecodable, so one bad entry is counted once.
    pub(super) async fn read_store_counted(
        &self,
        key: &Key,
        tags: &[String],
        count_corrupt: bool,
    ) -> Option<Arc<Entry>> {
        let digest = key.digest();
        let store_key = key.entry();
        let store = &self.inner.store;
        // Taken before the read: what it reads may be kept decoded while nothing changed it.
        let stamp = self
            .inner
            .tracked
            .as_ref()
            .and_then(|_| store.stamp(store_key, tags, self.inner.settings.prefix_purge));
        // The entry, its tags' generations and (prefix bans on) the bans: one round trip.
        let read = store.lookup(store_key, tags, self.inner.settings.prefix_purge);
        let (bytes, generations, bans) = match self.guard(read).await {
            Ok(found) => (found.value, found.generations, found.bans),
            Err(e) => {
                self.fail_open("get", &e);
                return None;
            }
        };
        let bytes = bytes?;
        let entry = match self.inner.last_decoded.decode(bytes) {
            Ok(e) => e,
            Err(error) => {
                if !count_corrupt {
                    return None;
                }
                bump(&self.inner.stats.corrupt);
                tracing::warn!(target: "redtower::cache", cache = self.name(), %error, "undecodable cache entry; treating as a miss");
                return None;
            }
        };
        if entry.key_digest != *digest {
            tracing::debug!(target: "redtower::cache", cache = self.name(), "cache key collision; treating as a miss");
            return None;
        }
        if self.banned(key, &entry, bans.as_deref()) {
            return None;
        }
        // Tags the caller did not ask for are read on their own, outside the stamp.
        let stamped = entry.tags.iter().all(|(t, _)| tags.contains(t));
        if !entry.tags.is_empty() && !self.tags_valid(&entry, tags, &generations).await {
            return None;
        }
        self.l1_insert(key, &entry);
        if let (Some(tracked), Some(stamp)) = (&self.inner.tracked, stamp)
            && stamped
        {
            let value = Tracked {
                entry: entry.clone(),
                stamp,
            };
            tracked.insert(key.canonical().to_vec(), value);
        }
        Some(entry)
    }

    async fn tags_valid(&self, entry: &Entry, asked: &[String], generations: &[u64]) -> bool {
        let mut missing = Vec::new();
        for (tag, generation) in &entry.tags {
            match asked.iter().position(|t| t == tag) {
                Some(i) => {
                    if generations.get(i) != Some(generation) {
                        return false;
                    }
                }
                None => missing.push(tag.clone()),
            }
        }
        if missing.is_empty() {
            return true;
        }
        match self.guard(self.inner.store.tag_generations(&missing)).await {
            Ok(current) => entry
                .tags
                .iter()
                .filter(|(t, _)| missing.contains(t))
                .zip(current)
                .all(|((_, g), c)| *g == c),
            Err(e) => {
                self.fail_open("tags", &e);
                false
            }
        }
    }
}

/// The entry last decoded from the store, with the bytes it was decoded from.
///
/// The concurrent hits of one URI read the same bytes (one reply of a coalesced `MGET`,
/// shared by every read of the batch): a read of bytes equal to the last ones shares that
/// entry instead of decoding them again. Each read still validates the entry for itself (key
/// digest, bans, tag generations). One entry is kept at a time, and a read that finds the
/// memo busy decodes on its own, so it never waits.
#[derive(Default)]
pub(crate) struct LastDecoded(Mutex<Option<(Bytes, Arc<Entry>)>>);

impl LastDecoded {
    /// The entry `bytes` encode: the last one when the bytes are equal, else decoded (and kept).
    pub(crate) fn decode(&self, bytes: Bytes) -> Result<Arc<Entry>, DecodeError> {
        if let Ok(last) = self.0.try_lock()
            && let Some((seen, entry)) = last.as_ref()
            && *seen == bytes
        {
            return Ok(entry.clone());
        }
        let entry = Arc::new(Entry::decode(&bytes)?);
        if let Ok(mut last) = self.0.try_lock() {
            *last = Some((bytes, entry.clone()));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bytes_share_one_decoded_entry() {
        let memo = LastDecoded::default();
        let entry = |body: &'static str| {
            let mut e = crate::envelope::tests::sample();
            e.body = Bytes::from_static(body.as_bytes());
            e.encode().unwrap()
        };
        let a = memo.decode(entry("a")).unwrap();
        // Equal bytes from another buffer: the same entry.
        let again = memo.decode(Bytes::from(entry("a").to_vec())).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let b = memo.decode(entry("b")).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.body, "b");
        assert_eq!(memo.decode(entry("a")).unwrap().body, "a");
        assert!(memo.decode(Bytes::from_static(b"not an entry")).is_err());
    }
}
