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
    pub(crate) invalidate_unsafe: bool,
    pub(crate) route: &'static str,
    pub(crate) status_name: String,
    pub(crate) hosts: Hosts,
    /// `Vary` names learned from responses, added to `key_headers` (sorted, merged).
    pub(crate) names: RwLock<Arc<[HeaderName]>>,
    /// Whether `names` is non-empty: routes that vary on nothing skip the lock per request.
    pub(crate) has_names: AtomicBool,
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
            invalidate_unsafe: self.invalidate_unsafe,
            route: self.route,
            status_name: self.status_name.clone(),
            hosts: self.hosts.clone(),
            names: RwLock::new(self.names().unwrap_or_else(|| Arc::from(Vec::new()))),
            has_names: AtomicBool::new(self.has_names.load(Ordering::Acquire)),
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
    /// The header names requests are keyed on (declared and learned), or `None` for none.
    pub(crate) fn names(&self) -> Option<Arc<[HeaderName]>> {
        if !self.has_names.load(Ordering::Acquire) {
            return None;
        }
        let names = self
            .names
            .read()
            .map(|n| n.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        Some(names)
    }

    /// Adds `Vary` names to the key names. Returns whether any was new.
    pub(crate) fn learn(&self, vary: &[HeaderName]) -> bool {
        let mut guard = self
            .names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if vary.iter().all(|n| guard.contains(n)) {
            return false;
        }
        let mut all: Vec<HeaderName> = guard.iter().cloned().chain(vary.iter().cloned()).collect();
        sort_names(&mut all);
        *guard = Arc::from(all);
        self.has_names.store(true, Ordering::Release);
        true
    }

    /// Starts the key names over from the declared `key_headers` (after a setting changed).
    pub(crate) fn reset_names(&mut self) {
        let mut names = self.key_headers.clone();
        sort_names(&mut names);
        self.has_names = AtomicBool::new(!names.is_empty());
        self.names = RwLock::new(Arc::from(names));
    }
}

fn sort_names(names: &mut Vec<HeaderName>) {
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
}
