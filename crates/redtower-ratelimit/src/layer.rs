//! [`RateLimitLayer`]: configuration, validated once, shared by every service it builds.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Response, request::Parts};
use tower_layer::Layer;

use redtower_client::breaker::Breaker;

use crate::{
    CircuitBreaker, ClientIp, ConfigError, Decision, FailurePolicy, Headers, IpLists, KeyExtractor,
    MemoryStore, MissingKey, PeerIp, Policy, QuotaFor, RateLimit, RateLimitHandle, RateLimitStore,
    RefundWhen, failure::DeniedCache, quota::validate_set, response::policy_header,
};

/// The weight of a request.
#[derive(Clone)]
pub(crate) enum Cost {
    Fixed(u32),
    Dynamic(Arc<dyn Fn(&Parts) -> u32 + Send + Sync>),
}

/// Builds a custom 429 response from the decision. The layer adds `Retry-After` and the rate
/// limit headers afterwards.
pub type LimitedResponse = Arc<dyn Fn(&Decision) -> Response<Bytes> + Send + Sync>;

/// What a [`RateLimitLayer`] was configured with: the store, the policies and every setting.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) store: Arc<dyn RateLimitStore>,
    pub(crate) policies: Arc<[Policy]>,
    pub(crate) routes: Arc<HashMap<String, Arc<[Policy]>>>,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) cost: Cost,
    pub(crate) headers: Headers,
    pub(crate) failure: FailurePolicy,
    pub(crate) timeout: Duration,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) denied_cache: usize,
    pub(crate) fallback_subjects: usize,
    pub(crate) missing_key: MissingKey,
    pub(crate) limited: Option<LimitedResponse>,
    pub(crate) shadow: bool,
    pub(crate) tiers: Arc<HashMap<&'static str, Arc<[Policy]>>>,
    pub(crate) quota_for: Option<Arc<dyn QuotaFor>>,
    pub(crate) refund: Option<RefundWhen>,
    pub(crate) lists: Option<(IpLists, Arc<ClientIp>)>,
}

/// A set of policies applied together, with what every response for it repeats, computed once.
pub(crate) struct PolicySet {
    pub(crate) list: Arc<[Policy]>,
    /// The `RateLimit-Policy` field (`None` when the draft headers are off).
    pub(crate) policy_header: Option<HeaderValue>,
    /// Per policy, in `list` order, the keys of its outcome counters (labels built once, not
    /// per request).
    pub(crate) counters: Box<[OutcomeCounters]>,
}

/// The metric keys of one policy's outcomes.
pub(crate) struct OutcomeCounters {
    pub(crate) allowed: metrics::Key,
    pub(crate) limited: metrics::Key,
    pub(crate) shadow_limited: metrics::Key,
}

impl OutcomeCounters {
    pub(crate) fn new(policy: &Policy) -> Self {
        let key = |name: &'static str| {
            metrics::Key::from_parts(
                name,
                vec![metrics::Label::from_static_parts("policy", policy.name())],
            )
        };
        Self {
            allowed: key("redtower_ratelimit_allowed_total"),
            limited: key("redtower_ratelimit_limited_total"),
            shadow_limited: key("redtower_ratelimit_shadow_limited_total"),
        }
    }
}

impl PolicySet {
    fn new(list: &Arc<[Policy]>, headers: Headers) -> Self {
        Self {
            list: list.clone(),
            policy_header: headers.draft.then(|| policy_header(list)).flatten(),
            counters: list.iter().map(OutcomeCounters::new).collect(),
        }
    }
}

/// State shared by every service of one layer (and its clones).
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    /// The layer's own policies.
    pub(crate) policies: Arc<PolicySet>,
    /// Per `MatchedPath`.
    pub(crate) routes: HashMap<String, Arc<PolicySet>>,
    /// Per tier name.
    pub(crate) tiers: HashMap<&'static str, Arc<PolicySet>>,
    pub(crate) breaker: Breaker,
    pub(crate) denied: DeniedCache,
    pub(crate) fallback: MemoryStore,
    /// Set while the store fails in a way the breaker does not count (a script error, or a
    /// store still making its first connection), so that it is logged once, not per request.
    pub(crate) degraded: std::sync::atomic::AtomicBool,
}

/// Rate limits requests against one or more [`Policy`]s, counted in a [`RateLimitStore`].
///
/// Required inputs go in [`new`](Self::new); every other setting has a documented default.
/// Cloning is cheap, and clones (and every service built from them) share the circuit breaker,
/// the denied cache and the fallback counters. See the [crate docs](crate) for an example.
///
/// Setters take effect on the layer they are called on; call them before `layer()`.
#[must_use]
#[derive(Clone)]
pub struct RateLimitLayer {
    /// Shared until a setter changes it (axum may clone the layer for every request).
    settings: Arc<Settings>,
    /// Built on first use and shared by every clone made after that.
    shared: Arc<OnceLock<Arc<Shared>>>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("store", &self.settings.store)
            .field("policies", &self.settings.policies)
            .field("routes", &self.settings.routes.len())
            .field("headers", &self.settings.headers)
            .field("failure", &self.settings.failure)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Limits every request by `policy` (a [`Quota`](crate::Quota) becomes a policy named
    /// `default`), keyed by [`PeerIp`], with the defaults below.
    pub fn new(store: impl RateLimitStore, policy: impl Into<Policy>) -> Self {
        Self::with_store(store).policy(policy)
    }

    /// A layer with no policy yet: add them with [`policy`](Self::policy) or
    /// [`route`](Self::route). Requests that no policy applies to pass unlimited.
    ///
    /// `store` may be a concrete store or an `Arc<dyn RateLimitStore>` chosen at run time; both
    /// take the same path:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use redtower_client::Redis;
    /// use redtower_ratelimit::{MemoryStore, Quota, RateLimitLayer, RateLimitStore, RedisStore, nonzero};
    ///
    /// fn limit(redis: Option<Redis>) -> RateLimitLayer {
    ///     let store: Arc<dyn RateLimitStore> = match redis {
    ///         Some(redis) => Arc::new(RedisStore::new(redis)),
    ///         None => Arc::new(MemoryStore::new()),
    ///     };
    ///     RateLimitLayer::new(store, Quota::per_second(nonzero!(10)))
    /// }
    /// # let _ = limit(None);
    /// ```
    pub fn with_store(store: impl RateLimitStore) -> Self {
        Self {
            settings: Arc::new(Settings {
                store: Arc::new(store),
                policies: Arc::from(Vec::new()),
                routes: Arc::new(HashMap::new()),
                key: Arc::new(PeerIp),
                cost: Cost::Fixed(1),
                headers: Headers::default(),
                failure: FailurePolicy::FailOpen,
                timeout: Duration::from_millis(100),
                breaker: CircuitBreaker::default(),
                denied_cache: 10_000,
                fallback_subjects: 100_000,
                missing_key: MissingKey::Reject,
                limited: None,
                shadow: false,
                tiers: Arc::new(HashMap::new()),
                quota_for: None,
                refund: None,
                lists: None,
            }),
            shared: Arc::default(),
        }
    }

    fn mark(p: Policy, shadow: bool) -> Policy {
        if shadow { p.shadow(true) } else { p }
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self.shared = Arc::default();
        self
    }

    /// Adds a policy checked for every request without a [`route`](Self::route) of its own.
    /// All policies of a request are checked in one atomic step: if one denies, none is
    /// consumed.
    pub fn policy(self, policy: impl Into<Policy>) -> Self {
        let policy = policy.into();
        self.edit(|c| {
            let mut v = c.policies.to_vec();
            v.push(Self::mark(policy, c.shadow));
            c.policies = v.into();
        })
    }

    /// Uses `policies` instead of the layer's own for requests whose axum
    /// [`MatchedPath`](axum::extract::MatchedPath) is `path` (the route template, such as
    /// `/users/{id}`, never the raw path). Needs the layer inside the router
    /// (`Router::layer`, `route_layer`, or on the route).
    pub fn route(self, path: &str, policies: impl IntoIterator<Item = Policy>) -> Self {
        let list: Arc<[Policy]> = policies.into_iter().collect();
        let path = path.to_owned();
        self.edit(|c| {
            let list: Arc<[Policy]> = list.iter().map(|p| Self::mark(*p, c.shadow)).collect();
            Arc::make_mut(&mut c.routes).insert(path, list);
        })
    }

    /// How requests are identified. Defaults to [`PeerIp`].
    pub fn key(self, key: impl KeyExtractor) -> Self {
        let key: Arc<dyn KeyExtractor> = Arc::new(key);
        self.edit(|c| c.key = key)
    }

    /// The weight of every request. Defaults to 1. Must not exceed any policy's
    /// [capacity](crate::Quota::capacity) (checked by [`build`](Self::build)).
    pub fn cost(self, cost: u32) -> Self {
        self.edit(|c| c.cost = Cost::Fixed(cost))
    }

    /// The weight of each request, computed from it (0 counts as 1). A request heavier than a
    /// policy's capacity can never pass: it is answered 429 without `Retry-After` and without a
    /// store call.
    pub fn cost_fn(self, cost: impl Fn(&Parts) -> u32 + Send + Sync + 'static) -> Self {
        let f: Arc<dyn Fn(&Parts) -> u32 + Send + Sync> = Arc::new(cost);
        self.edit(|c| c.cost = Cost::Dynamic(f))
    }

    /// Which headers to send. Defaults to [`Headers::default`] (the IETF draft fields).
    pub fn headers(self, headers: Headers) -> Self {
        self.edit(|c| c.headers = headers)
    }

    /// Also send legacy `X-RateLimit-Limit/-Remaining/-Reset`. Defaults to `false`.
    pub fn legacy_headers(self, on: bool) -> Self {
        self.edit(|c| c.headers.legacy = on)
    }

    /// What to do when the store fails. Defaults to [`FailurePolicy::FailOpen`].
    pub fn on_store_error(self, policy: FailurePolicy) -> Self {
        self.edit(|c| c.failure = policy)
    }

    /// The longest a request waits for the store before the failure policy applies.
    /// Defaults to 100 ms.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.timeout = timeout)
    }

    /// Circuit breaker settings. Defaults to [`CircuitBreaker::default`] (5 failures, 1 s).
    pub fn circuit_breaker(self, breaker: CircuitBreaker) -> Self {
        self.edit(|c| c.breaker = breaker)
    }

    /// How many denied subjects are remembered locally until their retry time, answered with
    /// no store call. 0 disables it. Defaults to 10,000.
    ///
    /// Beyond the bound, the subjects least likely to be asked for again are dropped first
    /// (moka's TinyLFU: a subject that keeps sending stays cached; a flood of one-off subjects
    /// does not push it out). A dropped denial only costs a store call.
    pub fn denied_cache(self, capacity: usize) -> Self {
        self.edit(|c| c.denied_cache = capacity)
    }

    /// The most subjects the [local fallback](FailurePolicy::LocalFallback) store holds (see
    /// [`MemoryStore::max_subjects`]). Defaults to 100,000.
    ///
    /// ```
    /// use redtower_ratelimit::{FailurePolicy, MemoryStore, Quota, RateLimitLayer, nonzero};
    ///
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(nonzero!(60)))
    ///     .on_store_error(FailurePolicy::LocalFallback)
    ///     .fallback_max_subjects(20_000);
    /// # let _ = layer;
    /// ```
    pub fn fallback_max_subjects(self, max: usize) -> Self {
        self.edit(|c| c.fallback_subjects = max)
    }

    /// What to do when the key extractor finds no identity. Defaults to
    /// [`MissingKey::Reject`].
    pub fn on_missing_key(self, missing: MissingKey) -> Self {
        self.edit(|c| c.missing_key = missing)
    }

    /// Replaces the 429 response (by default [`too_many_requests`](crate::too_many_requests),
    /// a problem+json body). `Retry-After` and the rate limit headers are added to it.
    pub fn limited_response(
        self,
        f: impl Fn(&Decision) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        let f: LimitedResponse = Arc::new(f);
        self.edit(|c| c.limited = Some(f))
    }

    /// Shadow (dry-run) mode for every policy of this layer, present and future: evaluate,
    /// count and send headers, never reject. Defaults to `false`.
    pub fn shadow(self, on: bool) -> Self {
        self.edit(|c| {
            c.shadow = on;
            if on {
                c.policies = c.policies.iter().map(|p| p.shadow(true)).collect();
                let routes = Arc::make_mut(&mut c.routes);
                for list in routes.values_mut() {
                    *list = list.iter().map(|p| p.shadow(true)).collect();
                }
                let tiers = Arc::make_mut(&mut c.tiers);
                for list in tiers.values_mut() {
                    *list = list.iter().map(|p| p.shadow(true)).collect();
                }
            }
        })
    }

    /// Declares the tier `name`: its policies replace the route's (or the layer's) for the
    /// requests that [`quota_for`](Self::quota_for) puts in it. See [`QuotaFor`].
    pub fn tier(self, name: &'static str, policies: impl IntoIterator<Item = Policy>) -> Self {
        let list: Arc<[Policy]> = policies.into_iter().collect();
        self.edit(|c| {
            let list: Arc<[Policy]> = list.iter().map(|p| Self::mark(*p, c.shadow)).collect();
            Arc::make_mut(&mut c.tiers).insert(name, list);
        })
    }

    /// Chooses a [tier](Self::tier) per request (plan tiers from an extension the
    /// authentication layer set). Defaults to none: the route's or the layer's policies.
    pub fn quota_for(self, f: impl QuotaFor) -> Self {
        let f: Arc<dyn QuotaFor> = Arc::new(f);
        self.edit(|c| c.quota_for = Some(f))
    }

    /// Counts requests by outcome: an admitted request whose response `when` accepts gives
    /// its units back before the response leaves (one more store call for those responses).
    /// Defaults to none (every admitted request counts). See the crate docs, "Counting by
    /// outcome".
    ///
    /// ```
    /// use redtower_ratelimit::{MemoryStore, Quota, RateLimitLayer, RefundWhen, nonzero};
    ///
    /// // At most 5 failed logins per 15 minutes; successful ones do not count.
    /// let login = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(nonzero!(1)).burst(nonzero!(5)))
    ///     .refund_when(RefundWhen::Successful);
    /// # let _ = login;
    /// ```
    pub fn refund_when(self, when: RefundWhen) -> Self {
        self.edit(|c| c.refund = Some(when))
    }

    /// Allow and deny lists, matched against the client address `ip` finds (the same
    /// [`ClientIp`] settings as the key, usually): an allowed address skips limiting, a denied
    /// one is answered 403 before anything else. Reload them through the [`IpLists`] handle.
    /// Defaults to none.
    pub fn ip_lists(self, lists: IpLists, ip: ClientIp) -> Self {
        let ip = Arc::new(ip);
        self.edit(|c| c.lists = Some((lists, ip)))
    }

    /// A handle on this layer's counters: [peek and reset](RateLimitHandle) from handlers or
    /// admin routes.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            store: self.settings.store.clone(),
            policies: self.settings.policies.clone(),
            routes: self.settings.routes.clone(),
            tiers: self.settings.tiers.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Checks the configuration and prepares the shared state.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: no policy, a bad or duplicate policy name, a quota too large, a
    /// fixed cost of 0 or above a policy's capacity, a key extractor that cannot work (such as
    /// an IP prefix out of range).
    pub fn build(self) -> Result<Self, ConfigError> {
        self.validate()?;
        let _ = self.shared.get_or_init(|| self.new_shared());
        Ok(self)
    }

    fn new_shared(&self) -> Arc<Shared> {
        let headers = self.settings.headers;
        Arc::new(Shared {
            policies: Arc::new(PolicySet::new(&self.settings.policies, headers)),
            routes: self
                .settings
                .routes
                .iter()
                .map(|(path, list)| (path.clone(), Arc::new(PolicySet::new(list, headers))))
                .collect(),
            tiers: self
                .settings
                .tiers
                .iter()
                .map(|(name, list)| (*name, Arc::new(PolicySet::new(list, headers))))
                .collect(),
            breaker: Breaker::new(self.settings.breaker),
            denied: DeniedCache::new(self.settings.denied_cache),
            fallback: MemoryStore::new().max_subjects(self.settings.fallback_subjects),
            degraded: Default::default(),
            settings: (*self.settings).clone(),
        })
    }

    /// Checks the configuration (see [`build`](Self::build)).
    ///
    /// # Errors
    ///
    /// See [`build`](Self::build).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cost = match self.settings.cost {
            Cost::Fixed(n) => Some(n),
            Cost::Dynamic(_) => None,
        };
        if self.settings.policies.is_empty() && self.settings.routes.is_empty() {
            return Err(ConfigError::NoPolicy);
        }
        self.settings.key.validate()?;
        if !self.settings.policies.is_empty() {
            validate_set(&self.settings.policies, cost)?;
        }
        for list in self
            .settings
            .routes
            .values()
            .chain(self.settings.tiers.values())
        {
            validate_set(list, cost)?;
        }
        Ok(())
    }

    fn shared(&self) -> Arc<Shared> {
        self.shared
            .get_or_init(|| {
                if let Err(e) = self.validate() {
                    panic!("invalid RateLimitLayer: {e}");
                }
                self.new_shared()
            })
            .clone()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    /// # Panics
    ///
    /// If the configuration is invalid and [`build`](RateLimitLayer::build) was not called to
    /// get the error as a value.
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, self.shared())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    use axum::{body::Body, extract::ConnectInfo};
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::{Error, Quota, Result, Subject, nonzero};

    #[derive(Debug)]
    struct Down;

    #[async_trait::async_trait]
    impl RateLimitStore for Down {
        async fn check(&self, _: &Subject, _: &[Policy], _: u32) -> Result<Decision> {
            Err(Error::Timeout(Duration::ZERO))
        }
    }

    /// Requests from `n` distinct IPv6 /64s (what a routed /48 gives a client).
    async fn flood(layer: &RateLimitLayer, n: u16, each: usize) {
        let svc = layer.layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        }));
        for i in 0..n {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, i, 0, 0, 0, 1));
            for _ in 0..each {
                let req = Request::get("/")
                    .extension(ConnectInfo(SocketAddr::new(ip, 1)))
                    .body(Body::empty())
                    .unwrap();
                let res = svc.clone().oneshot(req).await.unwrap();
                assert_ne!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_fallback_holds_at_most_its_bound() {
        let layer = RateLimitLayer::new(Down, Quota::per_hour(nonzero!(10)))
            .on_store_error(FailurePolicy::LocalFallback)
            .fallback_max_subjects(1_024)
            .build()
            .unwrap();
        flood(&layer, 20_000, 1).await;
        let held = layer.shared().fallback.len();
        eprintln!("fallback: 20,000 /64s, bound 1,024: {held} held");
        assert!((512..=1_024).contains(&held), "{held}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_denied_cache_of_a_layer_is_bounded() {
        let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1)))
            .denied_cache(1_000)
            .build()
            .unwrap();
        // Every subject's second request is denied and cached.
        flood(&layer, 10_000, 2).await;
        let held = layer.shared().denied.len();
        eprintln!("denied cache: 10,000 denied subjects, bound 1,000: {held} held");
        assert!((1..=1_000).contains(&held), "{held}");
    }
}
