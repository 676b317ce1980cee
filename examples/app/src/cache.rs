//! Response caching: `GET /products/featured`, a slow "database" call behind
//! [`ResponseCacheLayer`] (300 s, then 60 s of stale-while-revalidate). Responses name what
//! they show in `Surrogate-Key` (`products product:1 ...`): the layer records those tags on
//! the entry and strips the field; `POST /cache/purge` (on when `CACHE_PURGE_TOKEN` is set)
//! purges by tag or by path prefix on every instance.
//!
//! Environment: `NEAR_CACHE` (with Redis, keep entries this instance read in process,
//! invalidated by Redis client tracking), `CACHE_L1` (with Redis, also keep hot entries in
//! process for 500 ms, for servers without tracking),
//! `CACHE_HOSTS` (the `Host` values the cache serves), `FEATURED_DELAY_MS` (the simulated
//! database), `CACHE_PURGE_TOKEN` (the purge endpoint's bearer token).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use http::HeaderName;
use redtower_cache::{
    Cache, Credentials, ResponseCacheLayer,
    purge::{self, PurgeAuth},
};
use redtower_client::Redis;
use serde_json::{Value, json};

use crate::Config;

/// The app's response cache, in process or in Redis, and the "database" it protects.
#[derive(Debug, Clone)]
pub(crate) struct ResponseCache {
    cache: Cache,
    /// `CACHE_HOSTS`: the `Host` values the cache serves (none declared: the first 8 seen).
    hosts: Vec<String>,
    featured: Featured,
    /// `CACHE_PURGE_TOKEN`: the purge endpoint's auth (none: no endpoint).
    purge: Option<PurgeAuth>,
}

/// The response field naming the tags of a response (Fastly's and Varnish's convention).
const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// The state of `GET /products/featured`: cloning is one reference-count bump.
#[derive(Debug, Clone)]
struct Featured {
    db_calls: Arc<AtomicU64>,
    delay: Duration,
}

impl ResponseCache {
    /// The cache: in process without Redis; in Redis, with the entries this instance read
    /// kept in a tracked in-process tier unless `NEAR_CACHE` is off, and in a 500 ms L1 when
    /// `CACHE_L1` is on.
    pub(crate) fn new(config: &Config, redis: Option<&Redis>) -> Self {
        let cache = match redis {
            // Prefix purge on every instance (`POST /cache/purge {"prefixes":[..]}` is served
            // only where `CACHE_PURGE_TOKEN` is set, but every instance must honour it).
            None => Cache::builder(redtower_cache::MemoryStore::new())
                .prefix_purge(true)
                .build(),
            Some(redis) => {
                let store = redtower_cache::RedisStore::new(redis.clone()).near_cache(
                    config
                        .near_cache
                        .then(|| redtower_client::NearCacheConfig::new("cache")),
                );
                let builder = Cache::builder(store).prefix_purge(true);
                if config.cache_l1 {
                    builder.l1(1_000, Duration::from_millis(500)).build()
                } else {
                    builder.build()
                }
            }
        };
        Self {
            cache,
            hosts: config.cache_hosts.clone(),
            featured: Featured {
                db_calls: Arc::default(),
                delay: config.featured_delay,
            },
            // The token's length is checked by `Config`.
            purge: config
                .cache_purge_token
                .as_ref()
                .and_then(|t| PurgeAuth::bearer(t).ok()),
        }
    }

    /// A response cache layer keeping answers `ttl`, for the hosts of `CACHE_HOSTS`, tagged
    /// by the handlers' `Surrogate-Key`.
    pub(crate) fn layer(&self, ttl: Duration) -> ResponseCacheLayer {
        let layer = ResponseCacheLayer::new(self.cache.clone(), ttl).tag_header(SURROGATE_KEY);
        if self.hosts.is_empty() {
            layer
        } else {
            layer.hosts(&self.hosts)
        }
    }

    /// How often the "database" behind `/products/featured` was called on this instance.
    pub(crate) fn featured_db_calls(&self) -> u64 {
        self.featured.db_calls.load(Ordering::Relaxed)
    }

    /// `GET /products/featured`, cached; `POST /cache/purge` when `CACHE_PURGE_TOKEN` is set.
    pub(crate) fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        // The handler reads no query parameter: the default (`QueryKey::Ignore`) keeps
        // `?r=<random>` from making entries, and the handler never sees the query.
        let featured_cache = self
            .layer(Duration::from_secs(300))
            .stale_while_revalidate(Duration::from_secs(60))
            // The featured list is the same for everyone, logged in or not.
            .credentials(Credentials::Shared)
            .route_name("/products/featured");
        let routes = Router::new()
            .route("/products/featured", get(featured).layer(featured_cache))
            .with_state(self.featured.clone());
        match &self.purge {
            Some(auth) => routes.merge(purge::router(self.cache.clone(), auth.clone())),
            None => routes,
        }
    }
}

/// The "database query" the cache protects.
async fn featured(
    State(featured): State<Featured>,
) -> ([(HeaderName, &'static str); 1], Json<Value>) {
    featured.db_calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(featured.delay).await;
    // What the answer shows: purging any of these tags purges it.
    let tags = [(SURROGATE_KEY, "products product:1 product:2 product:3")];
    (
        tags,
        Json(json!([
            {"id": 1, "name": "Rust mug", "price_cents": 1200},
            {"id": 2, "name": "Ferris plush", "price_cents": 2400},
            {"id": 3, "name": "Tower of Redis poster", "price_cents": 900},
        ])),
    )
}
