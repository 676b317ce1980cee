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
use redtower_cache::{Cache, CircuitBreaker, MemoryStore, RedisStore, ResponseCacheLayer};
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
                .circuit_breaker(CircuitBreaker::default().cool_down(Duration::MAX))
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

/// Sends `n` requests built by `req`, 16 at a time; every answer must be a 200.
async fn flood(app: &Router, n: usize, req: impl Fn(usize) -> Request<Body>) {
    use futures::StreamExt;
    let answers: Vec<u16> = futures::stream::iter(0..n)
        .map(|i| {
            let app = app.clone();
            let req = req(i);
            async move { app.oneshot(req).await.unwrap().status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(answers.iter().all(|s| *s == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_query_strings_share_one_entry() {
    for backend in BACKENDS {
        for allow in [None, Some(["page"])] {
            let under = Under::new(backend, "query-flood").await;
            let calls = Arc::new(AtomicUsize::new(0));
            let mut layer = ResponseCacheLayer::new(under.cache.clone(), Duration::from_secs(60));
            if let Some(names) = allow {
                layer = layer.query(redtower_cache::QueryKey::allow(names));
            }
            let app =
                Router::new().route("/products/featured", counted(&calls, "[1]").layer(layer));
            flood(&app, 10_000, |i| {
                get_req(&format!("/products/featured?page=1&r={i}&utm_{i}=x"))
            })
            .await;
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "{backend:?} allow={allow:?}: 10,000 distinct query strings, one handler call"
            );
            let (stored, _) = under.stored().await;
            assert!(stored <= 1, "{backend:?}: {stored} entries");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_query_strings_leave_redis_memory_bounded() {
    let server = redtower_testkit::RedisServer::start();
    let used = || -> i64 {
        let info = server.cmd(&["INFO", "memory"]).as_text().unwrap();
        let at = info.find("used_memory:").unwrap() + "used_memory:".len();
        info[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let redis = Redis::new(RedisConfig::from_url(&server.url()).unwrap()).unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let cache = Cache::new(RedisStore::new(redis.clone()).timeout(Duration::from_secs(10)));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ResponseCacheLayer::new(cache, Duration::from_secs(60));
    let app = Router::new().route("/products/featured", counted(&calls, "[1]").layer(layer));
    // One request first, so the scripts and the client's buffers are in place.
    flood(&app, 1, |_| get_req("/products/featured")).await;
    let before = used();
    flood(&app, 10_000, |i| {
        get_req(&format!("/products/featured?r={i}"))
    })
    .await;
    let after = used();
    let keys: i64 = server.cmd(&["DBSIZE"]).as_text().unwrap().parse().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(keys, 1, "one entry");
    assert!(
        after - before < 256 * 1024,
        "10,000 random query strings grew used_memory by {} bytes",
        after - before
    );
    println!("used_memory {before} -> {after} ({} bytes)", after - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_hosts_create_a_bounded_number_of_entries() {
    for backend in BACKENDS {
        // Default: the first DEFAULT_MAX_HOSTS hosts are cached, the others bypass.
        let under = Under::new(backend, "host-flood").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = ResponseCacheLayer::new(under.cache.clone(), Duration::from_secs(60));
        let app = Router::new().route("/r", counted(&calls, "x").layer(layer));
        let host = |i: usize| {
            Request::get("/r")
                .header("host", format!("h{i}.example"))
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(send(&app, host(0)).await.1, "MISS");
        flood(&app, 2_000, host).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2_000,
            "{backend:?}: one handler call per request at most (no amplification)"
        );
        let (stored, _) = under.stored().await;
        assert!(
            stored <= ResponseCacheLayer::DEFAULT_MAX_HOSTS as u64,
            "{backend:?}: {stored} entries for 2,000 hosts"
        );
        let first = send(&app, host(0)).await;
        assert_eq!(first.1, "HIT", "{backend:?}: an early host stays cached");

        // A declared list: only those hosts, compared normalised.
        let under = Under::new(backend, "host-list").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = ResponseCacheLayer::new(under.cache.clone(), Duration::from_secs(60))
            .hosts(["shop.example"]);
        let app = Router::new().route("/r", counted(&calls, "x").layer(layer));
        flood(&app, 500, host).await;
        assert_eq!(
            under.stored().await.0,
            0,
            "{backend:?}: unlisted hosts store nothing"
        );
        for (h, x) in [
            ("shop.example", "MISS"),
            ("SHOP.example.", "HIT"),
            ("shop.example:80", "HIT"),
            ("evil.example", "BYPASS"),
        ] {
            let req = Request::get("/r")
                .header("host", h)
                .body(Body::empty())
                .unwrap();
            assert_eq!(send(&app, req).await.1, x, "{backend:?} {h}");
        }
        assert!(under.stored().await.0 <= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_per_uri_are_bounded() {
    for backend in BACKENDS {
        let under = Under::new(backend, "variant-flood").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = ResponseCacheLayer::new(under.cache.clone(), Duration::from_secs(60))
            .key_headers([axum::http::header::ACCEPT_LANGUAGE]);
        let app = Router::new().route("/r", counted(&calls, "x").layer(layer));
        let lang = |i: usize| {
            Request::get("/r")
                .header("accept-language", format!("x-{i}"))
                .body(Body::empty())
                .unwrap()
        };
        flood(&app, 1_000, lang).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1_000, "{backend:?}");
        let (stored, _) = under.stored().await;
        // The variants, plus the group's variant index on Redis.
        let bound = RedisStore::DEFAULT_MAX_VARIANTS as u64 + 1;
        assert!(
            stored <= bound,
            "{backend:?}: {stored} keys for 1,000 values"
        );
        assert!(
            stored >= 32,
            "{backend:?}: variants are still stored ({stored})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_variants_stop_counting_once_they_expired() {
    for backend in BACKENDS {
        let under = Under::new(backend, "variant-junk").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = ResponseCacheLayer::new(under.cache.clone(), Duration::from_secs(60))
            .key_headers([axum::http::header::ACCEPT_LANGUAGE]);
        // Junk values get a 1 s lifetime, real languages a minute.
        let handler = {
            let calls = calls.clone();
            get(move |headers: axum::http::HeaderMap| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let lang = headers
                        .get("accept-language")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let age = if lang.starts_with("x-") { 1 } else { 60 };
                    ([("cache-control", format!("max-age={age}"))], lang)
                }
            })
        };
        let app = Router::new().route("/r", handler.layer(layer));
        let lang = |l: &str| {
            Request::get("/r")
                .header("accept-language", l)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(send(&app, lang("en")).await.1, "MISS", "{backend:?}");
        assert_eq!(send(&app, lang("en")).await.1, "HIT", "{backend:?}");
        // An attacker fills the URI's variants with junk values, once each.
        for i in 1..RedisStore::DEFAULT_MAX_VARIANTS {
            send(&app, lang(&format!("x-{i}"))).await;
        }
        assert_eq!(
            send(&app, lang("de")).await.1,
            "MISS",
            "{backend:?}: the URI holds its most variants"
        );
        assert_eq!(
            send(&app, lang("de")).await.1,
            "MISS",
            "{backend:?}: a new variant is not stored while the junk lives"
        );
        // Once the junk expired, a new language is stored again: one handler call, then hits.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let started = tokio::time::Instant::now();
        let mut filled = 0;
        loop {
            let before = calls.load(Ordering::SeqCst);
            let (_, x, body) = send(&app, lang("de")).await;
            assert_eq!(body, "de");
            if x == "HIT" {
                break;
            }
            filled = calls.load(Ordering::SeqCst) - before;
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{backend:?}: a new variant is stored after the junk expired"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(filled, 1, "{backend:?}: the last miss ran the handler");
        let before = calls.load(Ordering::SeqCst);
        for _ in 0..5 {
            assert_eq!(send(&app, lang("de")).await.1, "HIT", "{backend:?}");
        }
        assert_eq!(send(&app, lang("en")).await.1, "HIT", "{backend:?}");
        assert_eq!(calls.load(Ordering::SeqCst), before, "{backend:?}");
    }
}
