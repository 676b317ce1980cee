//! [`RouteSettings`]: what a [`ResponseCacheLayer`](crate::ResponseCacheLayer) was configured
//! with, plus what it learns while serving (the `Vary` names of responses, the first hosts).

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::HeaderName;

use super::{Credentials, QueryKey};

/// The settings of one route's response cache, shared by the layer and every service it
/// builds.
#[derive(Debug)]
pub(crate) struct RouteSettings {
    pub(crate) ttl: Duration,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) max_body: usize,
    pub(crate) query: QueryKey,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) credentials: Credentials,
    pub(crate) session_cookies: Vec<String>,
    pub(crate) tags: Vec<String>,
    /// The response field whose tags are added to the stored entry (and stripped).
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) invalidate_unsafe: bool,
    pub(crate) route: &'static str,
    pub(crate) status_name: String,
    pub(crate) hosts: Hosts,
    /// The targeted cache-control fields (RFC 9213) this cache obeys, first found wins.
    pub(crate) targeted: Vec<HeaderName>,
    /// How long an entry with validators is kept after it stops being fresh, for conditional
    /// revalidation.
    pub(crate) revalidate_window: Duration,
    /// Whether responses with `Set-Cookie` are stored (without it).
    pub(crate) store_set_cookie: bool,
    /// The fraction of `Date - Last-Modified` used as heuristic freshness (`None`: off).
    pub(crate) heuristic: Option<f64>,
    /// The declared `key_headers`, sorted (the names of every first lookup).
    pub(crate) names: Option<Arc<[HeaderName]>>,
    /// Per URI (the primary canonical key): the `Vary` names its stored responses vary on
    /// beyond `names`, as last seen in this process, so a hit on a variant is one read.
    pub(crate) vary_memo: moka::sync::Cache<Vec<u8>, Arc<[HeaderName]>>,
    /// Whether `vary_memo` was ever written: routes whose responses never vary skip it.
    pub(crate) varies: AtomicBool,
    /// Per URI (the primary canonical key): the route's tags and those its last stored
    /// response listed in the [`tag_header`](Self::tag_header), as last seen in this process
    /// (only for URIs whose responses list more), so a hit reads their
    /// generations together with the entry (one round trip) instead of after it.
    pub(crate) tag_memo: moka::sync::Cache<Vec<u8>, Arc<[String]>>,
}

/// The most URIs whose `Vary` names a layer remembers.
const VARY_MEMO: u64 = 10_000;

pub(crate) fn vary_memo() -> moka::sync::Cache<Vec<u8>, Arc<[HeaderName]>> {
    moka::sync::Cache::new(VARY_MEMO)
}

/// The most URIs whose response tags a layer remembers.
const TAG_MEMO: u64 = 10_000;

pub(crate) fn tag_memo() -> moka::sync::Cache<Vec<u8>, Arc<[String]>> {
    moka::sync::Cache::new(TAG_MEMO)
}

impl Clone for RouteSettings {
    fn clone(&self) -> Self {
        Self {
            ttl: self.ttl,
            swr: self.swr,
            sie: self.sie,
            negative_ttl: self.negative_ttl,
            max_body: self.max_body,
            query: self.query.clone(),
            key_headers: self.key_headers.clone(),
            credentials: self.credentials,
            session_cookies: self.session_cookies.clone(),
            tags: self.tags.clone(),
            tag_header: self.tag_header.clone(),
            invalidate_unsafe: self.invalidate_unsafe,
            route: self.route,
            status_name: self.status_name.clone(),
            hosts: self.hosts.clone(),
            targeted: self.targeted.clone(),
            revalidate_window: self.revalidate_window,
            store_set_cookie: self.store_set_cookie,
            heuristic: self.heuristic,
            names: self.names.clone(),
            vary_memo: vary_memo(),
            varies: AtomicBool::new(false),
            tag_memo: tag_memo(),
        }
    }
}

/// Which hosts a layer caches: a configured list, or the first few it sees.
#[derive(Debug)]
pub(crate) enum Hosts {
    Listed(Vec<String>),
    FirstSeen {
        max: usize,
        seen: RwLock<Vec<String>>,
        warned: AtomicBool,
    },
}

impl Clone for Hosts {
    fn clone(&self) -> Self {
        match self {
            Self::Listed(l) => Self::Listed(l.clone()),
            Self::FirstSeen { max, seen, .. } => Self::FirstSeen {
                max: *max,
                seen: RwLock::new(
                    seen.read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone(),
                ),
                warned: AtomicBool::new(false),
            },
        }
    }
}

impl Hosts {
    pub(crate) fn first_seen(max: usize) -> Self {
        Self::FirstSeen {
            max,
            seen: RwLock::new(Vec::new()),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether requests for `host` (normalised) are cached.
    pub(crate) fn admits(&self, host: &str, route: &'static str) -> bool {
        let (max, seen, warned) = match self {
            Self::Listed(list) => return list.iter().any(|h| h == host),
            Self::FirstSeen { max, seen, warned } => (*max, seen, warned),
        };
        {
            let seen = seen
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.iter().any(|h| h == host) {
                return true;
            }
            if seen.len() >= max {
                drop(seen);
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "redtower::cache",
                        route,
                        max_hosts = max,
                        "the route is cached for its most hosts already; requests for other hosts bypass the cache (declare the hosts with ResponseCacheLayer::hosts)"
                    );
                }
                return false;
            }
        }
        let mut seen = seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.iter().any(|h| h == host) {
            return true;
        }
        if seen.len() >= max {
            return false;
        }
        seen.push(host.to_owned());
        true
    }
}

impl RouteSettings {
    /// The declared key header names (sorted), or `None` for none.
    pub(crate) fn names(&self) -> Option<Arc<[HeaderName]>> {
        self.names.clone()
    }

    /// The `Vary` names remembered for the URI whose primary canonical key is `primary`.
    pub(crate) fn remembered(&self, primary: &[u8]) -> Option<Arc<[HeaderName]>> {
        if !self.varies.load(Ordering::Relaxed) {
            return None;
        }
        self.vary_memo.get(primary)
    }

    /// Remembers (or, with `None`, forgets) the `Vary` names of a URI.
    pub(crate) fn remember(&self, primary: &[u8], names: Option<Arc<[HeaderName]>>) {
        match names {
            Some(names) => {
                self.varies.store(true, Ordering::Relaxed);
                self.vary_memo.insert(primary.to_vec(), names);
            }
            None if self.varies.load(Ordering::Relaxed) => self.vary_memo.invalidate(primary),
            None => {}
        }
    }

    /// The tags to validate on a lookup of the URI whose primary canonical key is `primary`:
    /// the route's own, plus those its responses' tag field listed when last seen here.
    pub(crate) fn lookup_tags(&self, primary: &[u8]) -> LookupTags<'_> {
        if self.tag_header.is_none() {
            return LookupTags::Route(&self.tags);
        }
        match self.tag_memo.get(primary) {
            Some(all) => LookupTags::Learned(all),
            None => LookupTags::Route(&self.tags),
        }
    }

    /// Remembers the tags a URI's stored response listed in the tag field (beyond the
    /// route's own); none forgets them. The memo keeps the whole list a lookup validates
    /// (the route's tags, then these), so a lookup copies nothing.
    pub(crate) fn remember_tags<'t>(&self, primary: &[u8], tags: impl Iterator<Item = &'t String>) {
        if self.tag_header.is_none() {
            return;
        }
        let mut all = self.tags.clone();
        let route = all.len();
        for t in tags {
            if !all.contains(t) {
                all.push(t.clone());
            }
        }
        if all.len() == route {
            self.tag_memo.invalidate(primary);
        } else if self.tag_memo.get(primary).as_deref() != Some(&all[..]) {
            self.tag_memo.insert(primary.to_vec(), Arc::from(all));
        }
    }

    /// Recomputes the sorted key names from `key_headers` (after a setting changed).
    pub(crate) fn reset_names(&mut self) {
        let mut names = self.key_headers.clone();
        sort_names(&mut names);
        self.names = (!names.is_empty()).then(|| Arc::from(names));
        self.vary_memo = vary_memo();
        self.varies = AtomicBool::new(false);
    }
}

/// Sorts and dedups header names.
pub(crate) fn sort_names(names: &mut Vec<HeaderName>) {
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
}

/// The tags a lookup validates: the route's own, or those and the ones its URI's responses
/// listed (shared with the memo that keeps them).
pub(crate) enum LookupTags<'a> {
    Route(&'a [String]),
    Learned(Arc<[String]>),
}

impl std::ops::Deref for LookupTags<'_> {
    type Target = [String];

    fn deref(&self) -> &[String] {
        match self {
            Self::Route(tags) => tags,
            Self::Learned(tags) => tags,
        }
    }
}
