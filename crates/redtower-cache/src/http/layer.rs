//! [`ResponseCacheLayer`]: per-route configuration of the response cache.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::HeaderName;
use tower_layer::Layer;

use super::{Credentials, QueryKey, ResponseCache, key::normalize_host};
use crate::Cache;

/// A [`Layer`] that caches a route's `GET` responses in a [`Cache`] (Redis or memory), shared
/// by every instance.
///
/// Put it on the routes that opt in (`.route_layer(..)` or `get(h).layer(..)`), after routing,
/// so path parameters and `MatchedPath` reach the handler unchanged. See the
/// [crate docs](crate) for an example and the full list of rules.
///
/// Cloning is cheap; the layer and every service it builds share one configuration.
#[derive(Clone)]
#[must_use]
pub struct ResponseCacheLayer {
    pub(crate) cache: Cache,
    pub(crate) config: Arc<Config>,
}

#[derive(Debug)]
pub(crate) struct Config {
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

impl Clone for Config {
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
    fn first_seen(max: usize) -> Self {
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

impl Config {
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

    fn reset_names(&mut self) {
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

impl fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("cache", &self.cache)
            .field("config", &self.config)
            .finish()
    }
}

impl ResponseCacheLayer {
    /// The default cap on stored bodies: 1 MiB.
    pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

    /// The default number of distinct hosts a layer caches when no list is configured: 8.
    pub const DEFAULT_MAX_HOSTS: usize = 8;

    /// Caches responses in `cache`, fresh for `ttl` when the response states no freshness of
    /// its own (`s-maxage`, `max-age`, `Expires` take precedence).
    pub fn new(cache: Cache, ttl: Duration) -> Self {
        let mut config = Config {
            ttl,
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            negative_ttl: None,
            max_body: Self::DEFAULT_MAX_BODY,
            query: QueryKey::Ignore,
            key_headers: Vec::new(),
            credentials: Credentials::Bypass,
            session_cookies: vec!["id".to_owned()],
            tags: Vec::new(),
            invalidate_unsafe: true,
            route: "default",
            status_name: "redtower".to_owned(),
            hosts: Hosts::first_seen(Self::DEFAULT_MAX_HOSTS),
            names: RwLock::new(Arc::from(Vec::new())),
            has_names: AtomicBool::new(false),
        };
        config.reset_names();
        Self {
            cache,
            config: Arc::new(config),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let config = Arc::make_mut(&mut self.config);
        f(config);
        config.reset_names();
        self
    }

    /// The default freshness lifetime (see [`new`](Self::new)).
    pub fn ttl(self, ttl: Duration) -> Self {
        self.edit(|c| c.ttl = ttl)
    }

    /// After freshness ends, serve the stale response for this long while one background
    /// request refreshes it (the requester never waits). A response's own
    /// `stale-while-revalidate` directive overrides it; `must-revalidate`, `proxy-revalidate`
    /// and `s-maxage` forbid it unless the response also states `stale-while-revalidate`.
    /// Defaults to zero.
    pub fn stale_while_revalidate(self, window: Duration) -> Self {
        self.edit(|c| c.swr = window)
    }

    /// After freshness ends, serve the stale response for this long when the handler errors or
    /// answers 5xx. A response's own `stale-if-error` overrides it. Defaults to zero.
    pub fn stale_if_error(self, window: Duration) -> Self {
        self.edit(|c| c.sie = window)
    }

    /// Also store 404, 405, 410, 414 and 501 responses, for this long unless they state their
    /// own freshness. Defaults to off.
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.edit(|c| c.negative_ttl = Some(ttl))
    }

    /// The largest body stored. Larger responses stream through untouched and are not stored;
    /// responses whose length is unknown are read up to this size to find out. Defaults to
    /// [`DEFAULT_MAX_BODY`](Self::DEFAULT_MAX_BODY) (1 MiB).
    pub fn max_body(self, bytes: usize) -> Self {
        self.edit(|c| c.max_body = bytes)
    }

    /// Which query parameters are keyed. Defaults to [`QueryKey::Ignore`]: none, and the query
    /// is removed before the handler sees it, so `?r=<random>` shares one entry. A route that
    /// reads parameters declares them with [`QueryKey::allow`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore, QueryKey, ResponseCacheLayer};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// // `/products?page=2&sort=price`: keyed on both; `utm_source=...` is dropped.
    /// let layer = ResponseCacheLayer::new(cache, Duration::from_secs(60))
    ///     .query(QueryKey::allow(["page", "sort"]));
    /// # let _ = layer;
    /// ```
    pub fn query(self, query: QueryKey) -> Self {
        self.edit(|c| c.query = query)
    }

    /// Caches only requests for these hosts (the `Host` header, or the URI's authority).
    /// Requests for any other host bypass the cache (`X-Cache: BYPASS`, `Cache-Status`
    /// `detail=HOST`) and reach the handler unchanged, so a client sending random `Host`
    /// values creates no entries. Names are compared normalised: case, a trailing dot and the
    /// scheme's default port do not matter.
    ///
    /// Defaults to no list: the layer caches the first
    /// [`max_hosts`](Self::max_hosts) distinct hosts it sees in this process and bypasses the
    /// others (with one warning). Declare the hosts in production.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let layer = ResponseCacheLayer::new(cache, Duration::from_secs(60))
    ///     .hosts(["shop.example", "www.shop.example", "localhost:3000"]);
    /// # let _ = layer;
    /// ```
    pub fn hosts<I, S>(self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = hosts
            .into_iter()
            .map(|h| normalize_host(h.as_ref(), "http").into_owned())
            .collect();
        self.edit(|c| c.hosts = Hosts::Listed(list))
    }

    /// Without a [`hosts`](Self::hosts) list: how many distinct hosts this layer caches (the
    /// first ones it sees, per process); requests for others bypass the cache. Replaces a
    /// `hosts` list. Defaults to [`DEFAULT_MAX_HOSTS`](Self::DEFAULT_MAX_HOSTS) (8).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use axum::{Router, body::Body, routing::get};
    /// use http::Request;
    /// use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer};
    /// use tower::ServiceExt;
    ///
    /// let layer = ResponseCacheLayer::new(Cache::new(MemoryStore::new()), Duration::from_secs(60))
    ///     .max_hosts(1);
    /// let app = Router::new().route("/", get(|| async { "hi" }).layer(layer));
    /// let get = |host: &str| Request::get("/").header("host", host).body(Body::empty()).unwrap();
    /// let first = app.clone().oneshot(get("a.example")).await.unwrap();
    /// assert_eq!(first.headers()["x-cache"], "MISS");
    /// let other = app.clone().oneshot(get("b.example")).await.unwrap();
    /// assert_eq!(other.headers()["x-cache"], "BYPASS");
    /// # }
    /// ```
    pub fn max_hosts(self, n: usize) -> Self {
        self.edit(|c| c.hosts = Hosts::first_seen(n))
    }

    /// Request headers the route's response depends on: each value gets its own entry.
    /// `Vary` names of a response are learned and added automatically, but declaring them
    /// keeps the very first request of each instance from missing. `Accept-Encoding` is
    /// bucketed by the set of codings it accepts (`br`, `compress`, `deflate`, `gzip`,
    /// `identity`, `zstd`; `q=0` excludes one, `*` stands for the unlisted ones; no header
    /// accepts only `identity`), and a response is stored in a bucket only when every request
    /// of that bucket accepts its `Content-Encoding`. A response with a `Content-Encoding` is
    /// keyed on `Accept-Encoding` even without `Vary`. Each URI holds at most the store's
    /// [`max_variants`](crate::RedisStore::max_variants) variants. Defaults to none.
    ///
    /// # Panics
    ///
    /// If a name is not a valid header name (a programmer error).
    pub fn key_headers<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<HeaderName> = names
            .into_iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_ref().to_ascii_lowercase().as_bytes())
                    .unwrap_or_else(|_| panic!("invalid header name {:?}", n.as_ref()))
            })
            .collect();
        self.edit(|c| c.key_headers = names)
    }

    /// What to do with requests carrying `Authorization` or a session cookie. Defaults to
    /// [`Credentials::Bypass`].
    pub fn credentials(self, credentials: Credentials) -> Self {
        self.edit(|c| c.credentials = credentials)
    }

    /// The cookie names that identify a session (treated like `Authorization`). Defaults to
    /// `["id"]`, the tower-sessions default.
    pub fn session_cookies<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = names.into_iter().map(Into::into).collect();
        self.edit(|c| c.session_cookies = names)
    }

    /// Tags every stored response, for [`Cache::invalidate_tag`]. Defaults to none.
    pub fn tags<I, S>(self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags = tags.into_iter().map(Into::into).collect();
        self.edit(|c| c.tags = tags)
    }

    /// Whether a successful `POST`, `PUT`, `PATCH` or `DELETE` through this layer invalidates
    /// the entries of its URI (RFC 9111 4.4). Defaults to `true`.
    pub fn invalidate_on_unsafe(self, on: bool) -> Self {
        self.edit(|c| c.invalidate_unsafe = on)
    }

    /// The `route` label of this layer's metrics (use the route template, never a raw URI).
    /// Defaults to `"default"`.
    pub fn route_name(self, route: &'static str) -> Self {
        self.edit(|c| c.route = route)
    }

    /// The cache name in `Cache-Status` headers. Defaults to `"redtower"`.
    pub fn status_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|c| c.status_name = name)
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            cache: self.cache.clone(),
            config: self.config.clone(),
        }
    }
}
