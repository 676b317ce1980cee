//! Hostile input, on the memory backend and on Redis: lifetimes from headers or settings that
//! overflow saturate (never panic), and what a client can vary (query strings, hosts, header
//! values) creates a bounded number of entries and handler calls.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, http::Request, response::IntoResponse, routing::get};
use futures::TryStreamExt;
use http_body_util::BodyExt;
use redtower_cache::{Cache, MemoryStore, RedisStore, ResponseCacheLayer};
use redtower_client::{Redis, RedisConfig, fred::interfaces::KeysInterface};
use redtower_testkit::unique_prefix;
use tower::ServiceExt;

/// The backends every check here runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
    Cluster,
}

const BACKENDS: [Backend; 3] = [Backend::Memory, Backend::Redis, Backend::Cluster];

struct Under {
    cache: Cache,
    memory: Option<MemoryStore>,
    redis: Option<Redis>,
}

impl Under {
    async fn new(backend: Backend, test: &str) -> Self {
        Self::with(backend, test, |c| c).await
    }

    async fn with(
        backend: Backend,
        test: &str,
        build: impl FnOnce(redtower_cache::CacheBuilder) -> redtower_cache::CacheBuilder,
    ) -> Self {
        let url = match backend {
            Backend::Memory => {
                let store = MemoryStore::new();
                return Self {
                    cache: build(Cache::builder(store.clone())).build(),
                    memory: Some(store),
                    redis: None,
                };
            }
            Backend::Redis => redtower_testkit::shared_url(),
            Backend::Cluster => redtower_testkit::shared_cluster().url(),
        };
        let config = RedisConfig::from_url(&url)
            .unwrap()
            .key_prefix(unique_prefix(test));
        let redis = Redis::new(config).unwrap();
        redis.wait_ready(Duration::from_secs(20)).await.unwrap();
        let store = RedisStore::new(redis.clone()).timeout(Duration::from_secs(10));
        Self {
            cache: build(Cache::builder(store)).build(),
            memory: None,
            redis: Some(redis),
        }
    }

    /// Keys (Redis) or entries (memory) stored, and every Redis key's TTL in ms.
    async fn stored(&self) -> (u64, Vec<i64>) {
        if let Some(m) = &self.memory {
            return (m.entry_count(), Vec::new());
        }
        let redis = self.redis.as_ref().unwrap();
        let keys: Vec<String> = redis
            .scan(&redis.keyspace().pattern())
            .try_collect()
            .await
            .unwrap();
        let mut ttls = Vec::new();
        for k in &keys {
            ttls.push(redis.client().pttl::<i64, _>(k.as_str()).await.unwrap());
        }
        (keys.len() as u64, ttls)
    }
}

async fn send(app: &Router, req: Request<Body>) -> (u16, String, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let x = resp
        .headers()
        .get("x-cache")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, x, String::from_utf8(body.to_vec()).unwrap())
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn counted<R: IntoResponse + Clone + Send + Sync + 'static>(
    calls: &Arc<AtomicUsize>,
    response: R,
) -> axum::routing::MethodRouter {
    let calls = calls.clone();
    get(move || {
        let calls = calls.clone();
        let response = response.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            response
        }
    })
}

const MAX_TTL_MS: i64 = 365 * 24 * 3600 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_lifetimes_from_headers_saturate() {
    const HUGE: &str = "18446744073709551615";
    let cases: [(&str, &'static str, String, bool); 5] = [
        ("max-age", "cache-control", format!("max-age={HUGE}"), true),
        (
            "max-age-swr-sie",
            "cache-control",
            format!("max-age={HUGE}, stale-while-revalidate={HUGE}, stale-if-error={HUGE}"),
            true,
        ),
        (
            "beyond-u64",
            "cache-control",
            "s-maxage=99999999999999999999999999, stale-while-revalidate=99999999999999999999999"
                .to_owned(),
            true,
        ),
        (
            "expires",
            "expires",
            "Fri, 31 Dec 9999 23:59:59 GMT".to_owned(),
            true,
        ),
        // An `Age` beyond any lifetime: nothing fresh is left, so nothing is stored.
        ("age", "age", "99999999999999999999999999".to_owned(), false),
    ];
    for backend in BACKENDS {
        for (name, header_name, value, stored) in &cases {
            let under = Under::new(backend, &format!("huge-{name}")).await;
            let calls = Arc::new(AtomicUsize::new(0));
            let layer = ResponseCacheLayer::new(under.cache.clone(), Duration::from_secs(60));
            let response = ([(*header_name, value.clone())], "body");
            let app = Router::new().route("/r", counted(&calls, response).layer(layer));
            let first = send(&app, get_req("/r")).await;
            assert_eq!(
                (first.0, first.2.as_str()),
                (200, "body"),
                "{backend:?} {name}"
            );
            let second = send(&app, get_req("/r")).await;
            let expected = if *stored { ("HIT", 1) } else { ("MISS", 2) };
            assert_eq!(
                (second.1.as_str(), calls.load(Ordering::SeqCst)),
                expected,
                "{backend:?} {name}"
            );
            let (_, ttls) = under.stored().await;
            for ttl in ttls {
                assert!(
                    ttl > 0 && ttl <= MAX_TTL_MS,
                    "{backend:?} {name}: TTL {ttl} is cut to Cache::MAX_TTL"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_settings_saturate() {
    for backend in BACKENDS {
        let under = Under::with(backend, "huge-settings", |b| {
            b.lock_ttl(Duration::MAX)
                .lock_wait(Duration::MAX)
                .breaker_cooldown(Duration::MAX)
                .poll_interval(Duration::MAX, Duration::MAX)
        })
        .await;
        let v: u32 = under
            .cache
            .fetch("v")
            .ttl(Duration::MAX)
            .stale_while_revalidate(Duration::MAX)
            .stale_if_error(Duration::MAX)
            .tags(["t"])
            .run(|| async { Ok::<_, String>(7) })
            .await
            .unwrap();
        assert_eq!(v, 7, "{backend:?}");
        let again: u32 = under
            .cache
            .get_or_fetch("v", Duration::MAX, || async { Ok::<_, String>(0) })
            .await
            .unwrap();
        assert_eq!(again, 7, "{backend:?}: stored");

        let calls = Arc::new(AtomicUsize::new(0));
        let layer = ResponseCacheLayer::new(under.cache.clone(), Duration::MAX)
            .stale_while_revalidate(Duration::MAX)
            .stale_if_error(Duration::MAX)
            .negative_ttl(Duration::MAX);
        let app = Router::new().route("/r", counted(&calls, "x").layer(layer));
        assert_eq!(send(&app, get_req("/r")).await.1, "MISS");
        assert_eq!(send(&app, get_req("/r")).await.1, "HIT", "{backend:?}");
        let (_, ttls) = under.stored().await;
        for ttl in ttls {
            assert!(ttl > 0 && ttl <= MAX_TTL_MS, "{backend:?}: TTL {ttl}");
        }
    }
}

#[test]
fn max_ttl_is_a_year() {
    assert_eq!(Cache::MAX_TTL, Duration::from_millis(MAX_TTL_MS as u64));
}
