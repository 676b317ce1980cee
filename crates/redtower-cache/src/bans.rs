//! Prefix bans: "every entry whose key starts with this prefix and that was stored before
//! this time is gone", evaluated lazily on lookup (Varnish's bans).
//!
//! A store keeps one bounded list of bans per cache ([`CacheStore::ban_prefix`],
//! [`CacheStore::bans`]); a [`Cache`](crate::Cache) built with
//! [`prefix_purge`](crate::CacheBuilder::prefix_purge) reads it with every entry from the store
//! and treats a banned entry as a miss. What a prefix is matched against:
//!
//! * a cache-aside value: its key (`price:` matches `price:tea`);
//! * a response: the path and query of the request URI (`/products/` matches
//!   `/products/42?page=2` on every host).
//!
//! A ban covers the entries stored until it: on Redis, until its time by Redis' clock plus
//! [`RedisStore::clock_skew`](crate::RedisStore::clock_skew) (1 s by default), compared with
//! the time each instance stored the entry. A response's time of storing counts the origin's
//! `Age` back, so a response that arrives already aged is banned if the ban is newer than its
//! age; such a route refetches until its responses are younger than the ban.
//!
//! A fetch that started before a ban and stores its value after it is not banned (as with
//! tags): purge after the data changed, as CMS webhooks do.
//!
//! On a Redis that evicts (`allkeys-*`), a lost ban list with a live version bans every entry
//! stored before the last ban; only the loss of the version key itself (read with every entry,
//! so the least likely to be evicted) would forget bans.
//!
//! [`CacheStore::ban_prefix`]: crate::CacheStore::ban_prefix
//! [`CacheStore::bans`]: crate::CacheStore::bans

use std::sync::Arc;

/// The most bans a store keeps. A new ban past this bound drops the oldest one and bans every
/// entry stored before it, whatever its key ([`Bans::horizon`]): the cache over-invalidates,
/// it never serves an entry a ban covers.
pub const MAX_BANS: usize = 1000;

/// The longest prefix accepted, in bytes.
pub const MAX_PREFIX_LEN: usize = 1024;

/// A store's prefix bans at one point in time (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bans {
    /// Entries stored at or before this time (unix ms) are banned whatever their key; 0 when
    /// no ban was ever dropped for the bound.
    pub horizon: u64,
    /// Each prefix and its ban time (unix ms): entries whose key starts with the prefix and
    /// that were stored at or before the time are banned.
    pub prefixes: Vec<(String, u64)>,
}

impl Bans {
    /// No bans.
    pub fn none() -> Arc<Self> {
        static NONE: std::sync::LazyLock<Arc<Bans>> =
            std::sync::LazyLock::new(|| Arc::new(Bans::default()));
        NONE.clone()
    }

    /// Whether there is no ban at all.
    pub fn is_empty(&self) -> bool {
        self.horizon == 0 && self.prefixes.is_empty()
    }

    /// Whether an entry stored at `stored_at` (unix ms) whose key is the concatenation of
    /// `target` is banned.
    pub fn bans(&self, target: &[&[u8]], stored_at: u64) -> bool {
        stored_at <= self.horizon
            || self
                .prefixes
                .iter()
                .any(|(p, at)| stored_at <= *at && starts_with(target, p.as_bytes()))
    }

    /// Adds a ban of `prefix` at `at` (unix ms) with the stores' shared rules: bans the new
    /// one covers (a longer or equal prefix, banned no later) are dropped, bans older than
    /// `max_age` before `now` are dropped (no entry lives that long), and past [`MAX_BANS`]
    /// the oldest ban is dropped and the horizon raised to its time.
    pub(crate) fn add(&mut self, prefix: &str, at: u64, now: u64, max_age: u64) {
        self.prefixes.retain(|(p, t)| {
            !(p.starts_with(prefix) && *t <= at) && t.saturating_add(max_age) > now
        });
        if self.horizon.saturating_add(max_age) <= now {
            self.horizon = 0;
        }
        if self.prefixes.len() >= MAX_BANS
            && let Some(i) = (0..self.prefixes.len()).min_by_key(|&i| self.prefixes[i].1)
        {
            let (_, t) = self.prefixes.swap_remove(i);
            self.horizon = self.horizon.max(t);
        }
        self.prefixes.push((prefix.to_owned(), at));
    }
}

/// Whether the concatenation of `parts` starts with `prefix`, without concatenating.
pub(crate) fn starts_with(parts: &[&[u8]], mut prefix: &[u8]) -> bool {
    for part in parts {
        if prefix.is_empty() {
            return true;
        }
        let n = part.len().min(prefix.len());
        if part[..n] != prefix[..n] {
            return false;
        }
        prefix = &prefix[n..];
    }
    prefix.is_empty()
}

/// The text a ban's prefix is matched against, read from a key's canonical bytes (see
/// `key::Canonical`): the key of a cache-aside value (`aside`, key), or the path and query of
/// a response's URI (`http`, method, scheme, host, path, `?` or empty, query). `None` for
/// anything else (never banned by prefix, only by the horizon). The text ends with
/// [`END`], so that a "prefix" ending with it matches one key exactly.
pub(crate) fn target(canonical: &[u8]) -> Option<[&[u8]; 4]> {
    let mut parts = Parts(canonical);
    match parts.next()? {
        b"aside" => Some([parts.next()?, b"", b"", END]),
        b"http" => {
            let (_method, _scheme, _host) = (parts.next()?, parts.next()?, parts.next()?);
            let path = parts.next()?;
            match parts.next()? {
                b"?" => Some([path, b"?", parts.next()?, END]),
                _ => Some([path, b"", b"", END]),
            }
        }
        _ => None,
    }
}

/// The end of a ban target: a NUL byte, which no URI holds.
pub(crate) const END: &[u8] = b"\0";

/// The length-prefixed components of canonical bytes.
struct Parts<'a>(&'a [u8]);

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let part = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Canonical;

    #[test]
    fn targets_of_keys() {
        let mut c = Canonical::new("aside");
        c.push(b"price:tea");
        assert_eq!(target(c.as_bytes()).unwrap().concat(), b"price:tea\0");
        let mut c = Canonical::new("http");
        c.push(b"GET")
            .push(b"https")
            .push(b"shop.example")
            .push(b"/products/42")
            .push(b"?")
            .push(b"page=2");
        assert_eq!(
            target(c.as_bytes()).unwrap().concat(),
            b"/products/42?page=2\0"
        );
        let mut c = Canonical::new("http");
        c.push(b"GET")
            .push(b"http")
            .push(b"h")
            .push(b"/a")
            .push(b"");
        assert_eq!(target(c.as_bytes()).unwrap().concat(), b"/a\0");
        assert!(target(b"\0\0").is_none());
    }

    #[test]
    fn a_ban_covers_older_entries_under_its_prefix() {
        let mut bans = Bans::default();
        bans.add("/products/", 100, 100, 1000);
        let t: &[&[u8]] = &[b"/products/4", b"2", b""];
        assert!(bans.bans(t, 100));
        assert!(!bans.bans(t, 101));
        assert!(!bans.bans(&[b"/product", b"", b""], 50));
        assert!(bans.bans(&[b"/products/", b"", b""], 50));
        bans.add("/", 200, 200, 1000);
        assert_eq!(bans.prefixes, [("/".to_owned(), 200)]);
    }

    #[test]
    fn the_bound_raises_the_horizon_and_old_bans_expire() {
        let mut bans = Bans::default();
        for i in 0..MAX_BANS as u64 + 1 {
            bans.add(&format!("k{i}:"), 10 + i, 10 + i, 1_000_000);
        }
        assert_eq!(bans.prefixes.len(), MAX_BANS);
        assert_eq!(bans.horizon, 10);
        assert!(bans.bans(&[b"other"], 10));
        bans.add("x", 2_000_000, 2_000_000, 1_000_000);
        assert_eq!(bans.prefixes.len(), 1);
        assert_eq!(bans.horizon, 0);
    }
}
