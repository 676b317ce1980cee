//! The conformance suite and Redis-specific behaviour on real servers (standalone and Cluster).

#[macro_use]
mod conformance;

use std::time::Duration;

use redtower_cache::RedisStore;
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::unique_prefix;

async fn connect(url: &str, test: &str) -> Redis {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    redis
}

async fn standalone(test: &str) -> RedisStore {
    RedisStore::new(connect(&redtower_testkit::shared_url(), test).await)
}

async fn cluster(test: &str) -> RedisStore {
    RedisStore::new(connect(&redtower_testkit::shared_cluster().url(), test).await)
}

async fn standalone_single_reads(test: &str) -> RedisStore {
    standalone(test).await.coalesce_reads(false)
}

mod standalone {
    use super::conformance;
    all_conformance!(super::standalone);
}

/// The same, with every read its own `GET` (coalescing off).
mod standalone_single_reads {
    use super::conformance;
    all_conformance!(super::standalone_single_reads);
}

mod cluster {
    use super::conformance;
    all_conformance!(super::cluster);
}

mod specific {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use axum::{Router, body::Body, http::Request, routing::get};
    use futures::TryStreamExt;
    use http_body_util::BodyExt;
    use redtower_cache::{Cache, CacheStore, CircuitBreaker, RedisStore, ResponseCacheLayer};
    use redtower_client::{
        Redis, RedisConfig,
        fred::interfaces::{ClientLike, KeysInterface},
    };
    use redtower_testkit::{RedisServer, unique_prefix};
    use tower::ServiceExt;

    async fn handle(url: &str, prefix: &str) -> Redis {
        let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
        redis.wait_ready(Duration::from_secs(20)).await.unwrap();
        redis
    }

    /// A cache for the stampede tests: store timeout and fill wait far above what a loaded
    /// machine can stall, so that only the fill lock (not the fail-open outage policy or the
    /// bounded wait) decides who runs the handler.
    async fn patient_cache(url: &str, prefix: &str) -> Cache {
        let store = RedisStore::new(handle(url, prefix).await).timeout(Duration::from_secs(10));
        Cache::builder(store)
            .lock_ttl(Duration::from_secs(30))
            .lock_wait(Duration::from_secs(30))
            .build()
    }

    fn slow_app(cache: Cache, calls: Arc<AtomicUsize>) -> Router {
        Router::new().route(
            "/featured",
            get(move || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "[1,2,3]"
                }
            })
            .layer(ResponseCacheLayer::new(cache, Duration::from_secs(60))),
        )
    }

    async fn send(app: &Router, uri: &str) -> (u16, String, String) {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let x = resp
            .headers()
            .get("x-cache")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, x, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stampede_across_two_layers_runs_the_handler_once() {
        let prefix = unique_prefix("stampede-layer");
        let url = redtower_testkit::shared_url();
        let calls = Arc::new(AtomicUsize::new(0));
        let a = slow_app(patient_cache(&url, &prefix).await, calls.clone());
        let b = slow_app(patient_cache(&url, &prefix).await, calls.clone());
        let requests = (0..500).map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { send(&app, "/featured").await })
        });
        let results = futures::future::join_all(requests).await;
        for r in results {
            let (status, _, body) = r.unwrap();
            assert_eq!((status, body.as_str()), (200, "[1,2,3]"));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one handler run for 500 requests on 2 instances"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stampede_across_two_caches_runs_the_fetcher_once() {
        let prefix = unique_prefix("stampede-aside");
        let url = redtower_testkit::shared_url();
        let a = patient_cache(&url, &prefix).await;
        let b = patient_cache(&url, &prefix).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks = (0..500).map(|i| {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("report", Duration::from_secs(60), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, String>(vec![1u32, 2, 3])
                    })
                    .await
                    .unwrap()
            })
        });
        for r in futures::future::join_all(tasks).await {
            assert_eq!(r.unwrap(), vec![1, 2, 3]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.fetches + sb.fetches, 1);
        assert!(
            sa.remote_fills + sb.remote_fills >= 1,
            "the other instance waited for the fill"
        );
        assert_eq!(
            sa.coalesced + sb.coalesced + sa.remote_fills + sb.remote_fills,
            499,
            "every other call got the filled value: from its instance's flight, or from the store"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_while_revalidate_refreshes_once_across_instances() {
        let prefix = unique_prefix("swr");
        let url = redtower_testkit::shared_url();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = |cache: Cache| {
            let calls = calls.clone();
            Router::new().route(
                "/r",
                get(move || {
                    let calls = calls.clone();
                    async move {
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        format!("v{n}")
                    }
                })
                .layer(
                    ResponseCacheLayer::new(cache, Duration::from_secs(1))
                        .stale_while_revalidate(Duration::from_secs(60)),
                ),
            )
        };
        let a = app(Cache::new(RedisStore::new(handle(&url, &prefix).await)));
        let b = app(Cache::new(RedisStore::new(handle(&url, &prefix).await)));
        assert_eq!(send(&a, "/r").await.2, "v1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = futures::future::join_all((0..50).map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { send(&app, "/r").await }
        }))
        .await;
        for (status, x, body) in &stale {
            assert_eq!((*status, x.as_str(), body.as_str()), (200, "STALE", "v1"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, x, body) = send(&b, "/r").await;
            if x == "HIT" {
                assert_eq!(body, "v2");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one background refresh for both instances"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outage_fails_open_and_recovers() {
        let mut server = RedisServer::start();
        let redis = handle(&server.url(), "outage").await;
        let cache = Cache::new(RedisStore::new(redis.clone()));
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new().route("/r", {
            let calls = calls.clone();
            get(move || {
                let calls = calls.clone();
                async move { format!("{}", calls.fetch_add(1, Ordering::SeqCst) + 1) }
            })
            .layer(ResponseCacheLayer::new(
                cache.clone(),
                Duration::from_secs(60),
            ))
        });
        assert_eq!(send(&app, "/r").await.1, "MISS");
        assert_eq!(send(&app, "/r").await.1, "HIT");

        server.kill();
        for i in 0..20 {
            let (status, x, body) = send(&app, "/r").await;
            assert_eq!(
                (status, x.as_str()),
                (200, "MISS"),
                "request {i} during the outage"
            );
            assert_eq!(body, format!("{}", i + 2), "served by the handler");
        }
        let v: u32 = cache
            .get_or_fetch("k", Duration::from_secs(60), || async {
                Ok::<_, String>(9)
            })
            .await
            .unwrap();
        assert_eq!(v, 9, "get_or_fetch fails open too");
        assert!(cache.stats().fail_open >= 1);

        server.restart();
        redis.wait_ready(Duration::from_secs(20)).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, x, _) = send(&app, "/r").await;
            assert_eq!(status, 200);
            if x == "HIT" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cache never recovered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_redis_is_bypassed_after_the_command_timeout() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "frozen").await;
        let store = RedisStore::new(redis).timeout(Duration::from_millis(200));
        let cache = Cache::new(store);
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new().route("/r", {
            let calls = calls.clone();
            get(move || {
                let calls = calls.clone();
                async move { format!("{}", calls.fetch_add(1, Ordering::SeqCst) + 1) }
            })
            .layer(ResponseCacheLayer::new(
                cache.clone(),
                Duration::from_secs(60),
            ))
        });
        assert_eq!(send(&app, "/r").await.1, "MISS");
        server.pause();
        for i in 0..5 {
            let (status, x, body) = send(&app, "/r").await;
            assert_eq!(
                (status, x.as_str()),
                (200, "MISS"),
                "request {i} while Redis is frozen"
            );
            assert_eq!(body, format!("{}", i + 2));
        }
        assert!(cache.stats().fail_open >= 1);
        server.resume();
    }

    /// Values of `n` keys stored through `cache`; then `calls` concurrent reads of them, each
    /// checked against its own key's value, with no fetch.
    async fn concurrent_reads(cache: &Cache, n: u32, calls: u32) {
        for i in 0..n {
            let v: u32 = cache
                .get_or_fetch(
                    &format!("k{i}"),
                    Duration::from_secs(60),
                    move || async move { Ok::<_, String>(i * 7) },
                )
                .await
                .unwrap();
            assert_eq!(v, i * 7);
        }
        let fetched = Arc::new(AtomicUsize::new(0));
        let reads = (0..calls).map(|c| {
            let cache = cache.clone();
            let fetched = fetched.clone();
            let i = c % n;
            tokio::spawn(async move {
                let v: u32 = cache
                    .get_or_fetch(
                        &format!("k{i}"),
                        Duration::from_secs(60),
                        move || async move {
                            fetched.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, String>(u32::MAX)
                        },
                    )
                    .await
                    .unwrap();
                (i, v)
            })
        });
        for r in futures::future::join_all(reads).await {
            let (i, v) = r.unwrap();
            assert_eq!(v, i * 7, "key k{i} got its own value");
        }
        assert_eq!(fetched.load(Ordering::SeqCst), 0, "every read was a hit");
        assert_eq!(cache.stats().fail_open, 0);
    }

    fn calls_of(stats: &str, cmd: &str) -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|r| r.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hits_leave_together_as_mget() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "coalesce").await;
        let cache = Cache::new(RedisStore::new(redis));
        // Warm the connection and the scripts, then count only the reads.
        concurrent_reads(&cache, 50, 50).await;
        server.cmd(&["CONFIG", "RESETSTAT"]);
        concurrent_reads(&cache, 50, 2000).await;
        let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
        let (gets, mgets) = (calls_of(&stats, "get"), calls_of(&stats, "mget"));
        assert!(mgets >= 1, "{stats}");
        assert!(
            gets + mgets < 2000,
            "2,000 concurrent hits in fewer commands: {stats}"
        );
        for other in ["set", "evalsha", "eval", "del"] {
            assert_eq!(
                calls_of(&stats, other),
                0,
                "{other} on the hit path: {stats}"
            );
        }
    }

    /// Concurrent hits of a few hot keys: a batch sends each key once and shares its reply,
    /// so Redis looks up far fewer keys than there are reads (and each read still gets its
    /// own key's value, checked by `concurrent_reads`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_reads_each_hot_key_once() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "dedup").await;
        let cache = Cache::new(RedisStore::new(redis));
        concurrent_reads(&cache, 5, 50).await;
        server.cmd(&["CONFIG", "RESETSTAT"]);
        concurrent_reads(&cache, 5, 2000).await;
        let stats = server.cmd(&["INFO", "stats"]).as_text().unwrap();
        let lookups: u64 = ["keyspace_hits:", "keyspace_misses:"]
            .iter()
            .map(|field| {
                stats
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .map_or(0, |n| n.trim().parse::<u64>().unwrap())
            })
            .sum();
        assert!(
            lookups < 1000,
            "2,000 concurrent hits of 5 keys made {lookups} key lookups"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn coalesced_hits_on_a_cluster_each_get_their_own_value() {
        let cluster = redtower_testkit::shared_cluster();
        let prefix = unique_prefix("coalesce-cluster");
        let cache = Cache::new(RedisStore::new(handle(&cluster.url(), &prefix).await));
        // 200 keys spread over the slots of all three primaries, read 4,000 times at once.
        concurrent_reads(&cache, 200, 4000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hit_is_exactly_one_get() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "one-get").await;
        let cache = Cache::new(RedisStore::new(redis));
        let calls = Arc::new(AtomicUsize::new(0));
        let app = slow_app(cache, calls);
        assert_eq!(send(&app, "/featured").await.1, "MISS");
        server.cmd(&["CONFIG", "RESETSTAT"]);
        for _ in 0..10 {
            assert_eq!(send(&app, "/featured").await.1, "HIT");
        }
        let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
        assert_eq!(calls_of(&stats, "get"), 10, "{stats}");
        for other in [
            "set", "evalsha", "eval", "del", "smembers", "pttl", "exists", "mget",
        ] {
            assert_eq!(
                calls_of(&stats, other),
                0,
                "{other} on the hit path: {stats}"
            );
        }
    }

    /// Tags from a response header: a hit reads the entry and the tags' generations together,
    /// in one `MGET` (the layer remembers each URI's tags), where reading the entry first and
    /// its tags after would take two round trips. A layer that has not seen the URI learns its
    /// tags on its first hit. A purge of one of the tags is still seen at once.
    ///
    /// (A current-thread runtime, so that the reads a request queues together always leave in
    /// one batch.)
    #[tokio::test]
    async fn a_hit_with_response_tags_is_one_mget() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "tag-mget").await;
        let cache = Cache::new(RedisStore::new(redis));
        let app = |cache: Cache| {
            Router::new().route(
                "/featured",
                get(|| async { ([("surrogate-key", "products product:1 product:2")], "[1,2]") })
                    .layer(
                        ResponseCacheLayer::new(cache, Duration::from_secs(60))
                            .tag_header(axum::http::HeaderName::from_static("surrogate-key")),
                    ),
            )
        };
        let one = app(cache.clone());
        assert_eq!(send(&one, "/featured").await.1, "MISS");
        server.cmd(&["CONFIG", "RESETSTAT"]);
        for _ in 0..10 {
            assert_eq!(send(&one, "/featured").await.1, "HIT");
        }
        let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
        assert_eq!(calls_of(&stats, "mget"), 10, "{stats}");
        assert_eq!(calls_of(&stats, "get"), 0, "{stats}");

        // Another instance: the entry, then its tags (learned); then one MGET per hit.
        let two = app(cache.clone());
        server.cmd(&["CONFIG", "RESETSTAT"]);
        for _ in 0..3 {
            assert_eq!(send(&two, "/featured").await.1, "HIT");
        }
        let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
        assert_eq!(
            calls_of(&stats, "mget") + calls_of(&stats, "get"),
            4,
            "{stats}"
        );

        cache.invalidate_tag("product:2").await.unwrap();
        assert_eq!(send(&one, "/featured").await.1, "MISS");
        assert_eq!(send(&two, "/featured").await.1, "HIT");
    }

    /// A response that varies on an undeclared header: once this layer has seen the URI's
    /// Vary names, a hit is still one `GET`; a layer that has not reads the URI's Vary record
    /// first (two `GET`s), once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hit_on_a_variant_is_one_get() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "vary-get").await;
        let cache = Cache::new(RedisStore::new(redis));
        let app = |cache: Cache| {
            Router::new().route(
                "/lang",
                get(|headers: axum::http::HeaderMap| async move {
                    let lang = headers
                        .get("accept-language")
                        .map_or("none", |v| v.to_str().unwrap())
                        .to_owned();
                    ([("vary", "Accept-Language")], lang)
                })
                .layer(ResponseCacheLayer::new(cache, Duration::from_secs(60))),
            )
        };
        let send_lang = |app: Router, lang: &'static str| async move {
            let resp = app
                .oneshot(
                    Request::get("/lang")
                        .header("accept-language", lang)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let x = resp.headers()["x-cache"].to_str().unwrap().to_owned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (x, String::from_utf8(body.to_vec()).unwrap())
        };
        let one = app(cache.clone());
        assert_eq!(send_lang(one.clone(), "en").await.0, "MISS");
        server.cmd(&["CONFIG", "RESETSTAT"]);
        for _ in 0..10 {
            assert_eq!(
                send_lang(one.clone(), "en").await,
                ("HIT".to_owned(), "en".to_owned())
            );
        }
        let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
        assert_eq!(calls_of(&stats, "get"), 10, "{stats}");
        // Another instance: the record, then the variant; then the variant alone.
        let two = app(cache);
        server.cmd(&["CONFIG", "RESETSTAT"]);
        for _ in 0..3 {
            assert_eq!(send_lang(two.clone(), "en").await.0, "HIT");
        }
        let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
        assert_eq!(calls_of(&stats, "get"), 4, "{stats}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripts_are_reloaded_after_script_flush() {
        let server = RedisServer::start();
        let redis = handle(&server.url(), "flush").await;
        let cache = Cache::new(RedisStore::new(redis));
        let v: u32 = cache
            .get_or_fetch("a", Duration::from_secs(60), || async {
                Ok::<_, String>(1)
            })
            .await
            .unwrap();
        assert_eq!(v, 1);
        server.cmd(&["SCRIPT", "FLUSH"]);
        let v: u32 = cache
            .get_or_fetch("b", Duration::from_secs(60), || async {
                Ok::<_, String>(2)
            })
            .await
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(cache.stats().stored, 2);
        assert_eq!(cache.stats().fail_open, 0);
    }

    /// Redis unreachable when the process starts: requests fail open, but that is no
    /// evidence of an outage of a connection that was up, so the breaker stays closed: the
    /// first request after Redis comes up is cached at once (with a breaker that opens on one
    /// failure for an hour, an opened breaker would skip the store for the rest of the test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_at_start_fails_open_without_opening_the_breaker() {
        let port = redtower_testkit::free_port();
        let config = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .key_prefix(unique_prefix("boot-down"))
            .command_timeout(Duration::from_millis(300));
        let redis = Redis::new(config).unwrap();
        let cache = Cache::builder(RedisStore::new(redis.clone()).timeout(Duration::from_secs(10)))
            .circuit_breaker(
                CircuitBreaker::default()
                    .failures(1)
                    .cool_down(Duration::from_secs(3600)),
            )
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = slow_app(cache.clone(), calls.clone());
        for _ in 0..3 {
            let (status, x, _) = send(&app, "/featured").await;
            assert_eq!((status, x.as_str()), (200, "MISS"), "fail-open");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(cache.stats().fail_open >= 3);

        let _server = RedisServer::options().port(port).start();
        redis.wait_ready(Duration::from_secs(20)).await.unwrap();
        let (_, x, _) = send(&app, "/featured").await;
        assert_eq!(x, "MISS");
        let (_, x, _) = send(&app, "/featured").await;
        assert_eq!(x, "HIT", "stored at once: the breaker never opened");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let _ = redis.client().quit().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_has_a_ttl_covering_the_stale_windows() {
        for url in [
            redtower_testkit::shared_url(),
            redtower_testkit::shared_cluster().url(),
        ] {
            let prefix = unique_prefix("ttl");
            let redis = handle(&url, &prefix).await;
            let store = RedisStore::new(redis.clone());
            let cache = Cache::new(store.clone());
            let v: u32 = cache
                .fetch("v")
                .ttl(Duration::from_secs(60))
                .stale_while_revalidate(Duration::from_secs(30))
                .tags(["t1"])
                .run(|| async { Ok::<_, String>(1) })
                .await
                .unwrap();
            assert_eq!(v, 1);
            let layer = ResponseCacheLayer::new(cache.clone(), Duration::from_secs(60))
                .key_headers([axum::http::header::ACCEPT_LANGUAGE])
                .stale_if_error(Duration::from_secs(600))
                .tags(["t2"]);
            let app = Router::new().route("/r", get(|| async { "x" }).layer(layer));
            for lang in ["en", "fr"] {
                let resp = app
                    .clone()
                    .oneshot(
                        Request::get("/r")
                            .header("accept-language", lang)
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(resp.headers()["x-cache"], "MISS");
            }
            let held = store
                .try_lock(&cache.entry_key("locked"), Duration::from_secs(5))
                .await
                .unwrap();
            assert!(held.is_some());

            let keys: Vec<String> = redis
                .scan(&redis.keyspace().pattern())
                .try_collect()
                .await
                .unwrap();
            assert_eq!(
                keys.len(),
                7,
                "entry, 2 variants, index, 2 tags, 1 lock: {keys:?}"
            );
            for key in &keys {
                let pttl: i64 = redis.client().pttl(key.as_str()).await.unwrap();
                assert!(pttl > 0, "{key} has no TTL ({pttl})");
            }
            let entry = store.entry_key(&cache.entry_key("v")).into_string();
            let pttl: i64 = redis.client().pttl(entry.as_str()).await.unwrap();
            assert!(
                (85_000..=90_000).contains(&pttl),
                "TTL covers fresh + stale: {pttl}"
            );
            let raw: Vec<u8> = redis.client().get(entry.as_str()).await.unwrap();
            assert_eq!(&raw[..4], b"RTC\x01");
            let variant = keys.iter().find(|k| k.ends_with(":ix")).unwrap();
            assert!(variant.starts_with(&format!("{prefix}:c:{{")));
            let pttl: i64 = redis.client().pttl(variant.as_str()).await.unwrap();
            assert!(
                pttl > 600_000,
                "the index lives as long as its variants: {pttl}"
            );
            let _ = redis.client().quit().await;
        }
    }

    /// An index written as a plain set (by an earlier version of the store) keeps working: a
    /// put converts it to the sorted set with its members' lifetime, and invalidation finds
    /// the variants in either form.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_variant_index_written_as_a_set_is_converted() {
        use bytes::Bytes;
        use redtower_cache::EntryKey;
        use redtower_client::fred::{
            interfaces::{SetsInterface, SortedSetsInterface},
            types::Expiration,
        };

        for url in [
            redtower_testkit::shared_url(),
            redtower_testkit::shared_cluster().url(),
        ] {
            let redis = handle(&url, &unique_prefix("legacy-index")).await;
            let store = RedisStore::new(redis.clone()).max_variants(2);
            let client = redis.client();
            let legacy = |group: &str| {
                let store = store.clone();
                let group = group.to_owned();
                async move {
                    let index = store.index_key(&group).into_string();
                    for v in ["a", "b"] {
                        let px = Some(Expiration::PX(30_000));
                        let () = client
                            .set(entry_of(&store, &group, v), v, px, None, false)
                            .await
                            .unwrap();
                        let _: i64 = client.sadd(index.as_str(), v).await.unwrap();
                    }
                    // Half the lifetime the puts below give: a conversion scores the set's
                    // members with the set's own expiry, so a variant put again afterwards
                    // sorts after them by a clear margin, never a tie within one millisecond.
                    let _: i64 = client.pexpire(index.as_str(), 30_000, None).await.unwrap();
                    index
                }
            };
            fn entry_of(store: &RedisStore, group: &str, v: &str) -> String {
                store
                    .entry_key(&EntryKey::new(group, Some(v.to_owned())))
                    .into_string()
            }

            // Invalidation reads a legacy set.
            legacy("g1").await;
            store.invalidate("g1").await.unwrap();
            for v in ["a", "b"] {
                let n: i64 = client.exists(entry_of(&store, "g1", v)).await.unwrap();
                assert_eq!(n, 0, "{v} invalidated");
            }

            // A put converts it, keeping its members live and counted.
            let index = legacy("g2").await;
            let c = EntryKey::new("g2", Some("c".to_owned()));
            let a = EntryKey::new("g2", Some("a".to_owned()));
            let ttl = Duration::from_secs(60);
            assert!(
                !store
                    .put(&c, Bytes::from_static(b"c"), ttl, None)
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .put(&a, Bytes::from_static(b"a2"), ttl, None)
                    .await
                    .unwrap()
            );
            let members: Vec<String> = client
                .zrange(index.as_str(), 0, -1, None, false, None, false)
                .await
                .unwrap();
            assert_eq!(members, ["b", "a"]);
            let pttl: i64 = client.pttl(index.as_str()).await.unwrap();
            assert!(pttl > 0, "the index keeps a TTL ({pttl})");
            store.invalidate("g2").await.unwrap();
            for v in ["a", "b"] {
                let n: i64 = client.exists(entry_of(&store, "g2", v)).await.unwrap();
                assert_eq!(n, 0, "{v} invalidated");
            }
        }
    }
}
