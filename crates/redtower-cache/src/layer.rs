//! [`ResponseCacheLayer`]: per-route configuration of the response cache.

use std::{
    fmt,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use http::HeaderName;
use tower_layer::Layer;

use crate::{
    Cache, Credentials, QueryKey, ResponseCache,
    http::{Hosts, Responder, RouteSettings, normalize_host, tag_memo, vary_memo},
};

/// `CDN-Cache-Control` (RFC 9213).
const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

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
    cache: Cache,
    settings: Arc<RouteSettings>,
}

impl fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("cache", &self.cache)
            .field("settings", &self.settings)
            .finish()
    }
}

impl ResponseCacheLayer {
    /// The default cap on stored bodies: 1 MiB.
    pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

    /// The default number of distinct hosts a layer caches when no list is configured: 8.
    pub const DEFAULT_MAX_HOSTS: usize = 8;

    /// How long, by default, a response with validators is kept after it stops being fresh,
    /// for conditional revalidation: 5 minutes.
    pub const DEFAULT_REVALIDATE_WINDOW: Duration = Duration::from_secs(300);

    /// Caches responses in `cache`, fresh for `ttl` when the response states no freshness of
    /// its own (`s-maxage`, `max-age`, `Expires` take precedence).
    pub fn new(cache: Cache, ttl: Duration) -> Self {
        let mut settings = RouteSettings {
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
            tag_header: None,
            invalidate_unsafe: true,
            route: "default",
            status_name: "redtower".to_owned(),
            hosts: Hosts::first_seen(Self::DEFAULT_MAX_HOSTS),
            targeted: vec![CDN_CACHE_CONTROL],
            revalidate_window: Self::DEFAULT_REVALIDATE_WINDOW,
            store_set_cookie: false,
            heuristic: None,
            names: None,
            vary_memo: vary_memo(),
            varies: AtomicBool::new(false),
            tag_memo: tag_memo(),
        };
        settings.reset_names();
        Self {
            cache,
            settings: Arc::new(settings),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut RouteSettings)) -> Self {
        let settings = Arc::make_mut(&mut self.settings);
        f(settings);
        settings.reset_names();
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
    /// A response's `Vary` names need not be declared (RFC 9111 4.1): the first response is
    /// stored under the values of the headers it names, and its URI records those names, so
    /// later requests find their variant (one read once this process has seen the URI's
    /// names). Declaring them saves that record. `Vary: *` is never stored. `Accept-Encoding` is
    /// bucketed by the set of codings it accepts (`br`, `compress`, `deflate`, `gzip`,
    /// `identity`, `zstd`; `q=0` excludes one, `*` stands for the unlisted ones; no header
    /// accepts only `identity`), and a response is stored in a bucket only when every request
    /// of that bucket accepts its `Content-Encoding`. A response with a `Content-Encoding` is
    /// keyed on `Accept-Encoding` even without `Vary`. Each URI holds at most the store's
    /// [`max_variants`](crate::RedisStore::max_variants) variants. Defaults to none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::{HeaderName, header};
    /// use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let layer = ResponseCacheLayer::new(cache, Duration::from_secs(60))
    ///     .key_headers([header::ACCEPT_LANGUAGE, HeaderName::from_static("x-tenant")]);
    /// # let _ = layer;
    /// ```
    pub fn key_headers<I>(self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<HeaderName>,
    {
        let names: Vec<HeaderName> = names.into_iter().map(Into::into).collect();
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

    /// Reads tags from this response field (`Surrogate-Key`, Fastly's and Varnish's
    /// convention, space separated; or `Cache-Tag`, Cloudflare's, comma separated: both
    /// separators are accepted) and adds them to the stored entry, next to
    /// [`tags`](Self::tags), for [`Cache::invalidate_tag`] and the
    /// purge router (`purge::router`, feature `axum`). The field is removed from every response that leaves
    /// the layer (stored, passed through or served from the cache), so it never reaches
    /// clients. At most 32 tags per response, each at most 128 bytes of visible ASCII;
    /// others are dropped (logged at debug level). Defaults to off: the field passes through
    /// untouched (a CDN in front may want it).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use axum::{Router, body::Body, routing::get};
    /// use http::{HeaderName, Request};
    /// use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer};
    /// use tower::ServiceExt;
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let app = Router::new().route(
    ///     "/products/42",
    ///     get(|| async { ([("surrogate-key", "product:42 products")], "tea") }).layer(
    ///         ResponseCacheLayer::new(cache.clone(), Duration::from_secs(300))
    ///             .tag_header(HeaderName::from_static("surrogate-key")),
    ///     ),
    /// );
    /// let get = || Request::get("/products/42").body(Body::empty()).unwrap();
    /// let first = app.clone().oneshot(get()).await.unwrap();
    /// assert!(first.headers().get("surrogate-key").is_none()); // stripped
    /// assert_eq!(app.clone().oneshot(get()).await.unwrap().headers()["x-cache"], "HIT");
    ///
    /// cache.invalidate_tag("product:42").await.unwrap();
    /// assert_eq!(app.clone().oneshot(get()).await.unwrap().headers()["x-cache"], "MISS");
    /// # }
    /// ```
    pub fn tag_header(self, name: HeaderName) -> Self {
        self.edit(|c| c.tag_header = Some(name))
    }

    /// Whether a non-error response to an unsafe request through this layer (any method but
    /// `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PROPFIND`, `SEARCH` and `REPORT`) invalidates the
    /// entries of its URI, and of its `Location` and `Content-Location` on the same host
    /// (RFC 9111 4.4). Defaults to `true`.
    pub fn invalidate_on_unsafe(self, on: bool) -> Self {
        self.edit(|c| c.invalidate_unsafe = on)
    }

    /// A targeted cache-control field (RFC 9213) for this cache alone, such as
    /// `Redtower-Cache-Control`: when a response carries it with a valid value, its directives
    /// decide storing and freshness here and `Cache-Control` and `Expires` are ignored, so an
    /// application can give its own cache a lifetime different from what browsers and CDNs
    /// see. It takes precedence over `CDN-Cache-Control`. Calling it again replaces the field.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::HeaderName;
    /// use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// // The handler answers `Cache-Control: no-cache` (browsers) and
    /// // `Redtower-Cache-Control: max-age=60` (this cache).
    /// let layer = ResponseCacheLayer::new(cache, Duration::ZERO)
    ///     .targeted_cache_control(HeaderName::from_static("redtower-cache-control"));
    /// # let _ = layer;
    /// ```
    pub fn targeted_cache_control(self, field: impl Into<HeaderName>) -> Self {
        let field = field.into();
        self.edit(|c| {
            c.targeted.retain(|f| *f == CDN_CACHE_CONTROL);
            c.targeted.insert(0, field);
        })
    }

    /// Whether this cache obeys `CDN-Cache-Control` (RFC 9213): when a response carries it
    /// with a valid value (and no field set with
    /// [`targeted_cache_control`](Self::targeted_cache_control) is present), its directives
    /// replace `Cache-Control` and `Expires` here. Defaults to `true`: the layer is a shared
    /// cache in front of the application, as a CDN is.
    pub fn cdn_cache_control(self, on: bool) -> Self {
        self.edit(|c| {
            c.targeted.retain(|f| *f != CDN_CACHE_CONTROL);
            if on {
                c.targeted.push(CDN_CACHE_CONTROL);
            }
        })
    }

    /// How long a response with a validator of the handler's (`ETag` or `Last-Modified`) is
    /// kept after it stops being fresh (beyond any stale window), so the next request
    /// revalidates it with a conditional request (`If-None-Match`, `If-Modified-Since`) and a
    /// `304 Not Modified` refreshes it without a body (RFC 9111 4.3). Defaults to
    /// [`DEFAULT_REVALIDATE_WINDOW`](Self::DEFAULT_REVALIDATE_WINDOW) (5 minutes); zero keeps
    /// nothing past freshness.
    pub fn revalidate_window(self, window: Duration) -> Self {
        self.edit(|c| c.revalidate_window = window)
    }

    /// Whether responses with `Set-Cookie` are stored. Defaults to `false`: an application's
    /// response that sets a cookie is usually personal. With `true` (the RFC 9111 behaviour,
    /// for a shared proxy), the response is stored without its `Set-Cookie` fields: the
    /// request that fetched it gets them, every later one does not.
    pub fn store_set_cookie(self, on: bool) -> Self {
        self.edit(|c| c.store_set_cookie = on)
    }

    /// Heuristic freshness (RFC 9111 4.2.2): a response with `Last-Modified` and no explicit
    /// lifetime is fresh for this fraction of the time since it was last modified (10% is the
    /// customary value), instead of the route's TTL. Defaults to off: an application route's
    /// TTL is usually the better guess.
    pub fn heuristic_freshness(self, fraction: f64) -> Self {
        let fraction = (fraction.is_finite() && fraction > 0.0).then_some(fraction);
        self.edit(|c| c.heuristic = fraction)
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
        ResponseCache::new(
            inner,
            Responder::new(self.cache.clone(), self.settings.clone()),
        )
    }
}
