//! Against real Redis (standalone and Cluster): the conformance suite, the Lua script against
//! the reference model, over-admission across instances, outages, round trips and TTLs.

#[macro_use]
mod conformance;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, routing::get};
use futures::TryStreamExt;
use http::{Request, StatusCode};
use proptest::prelude::*;
use redtower_client::{Redis, RedisConfig};
use redtower_ratelimit::{
    Algorithm, CircuitBreaker, FailurePolicy, Global, ManualClock, MemoryStore, Policy, Quota,
    RateLimitLayer, RateLimitStore, RedisStore, Subject, nonzero,
};
use redtower_testkit::{RedisServer, unique_prefix};
use tower::ServiceExt;

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

mod standalone {
    use super::*;
    conformance!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        |clock: ManualClock| async move {
            RedisStore::new(connect(&redtower_testkit::shared_url(), "conf").await).clock(clock)
        }
    );
}

mod cluster {
    use super::*;
    conformance!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        |clock: ManualClock| async move {
            RedisStore::new(connect(&redtower_testkit::shared_cluster().url(), "conf").await)
                .clock(clock)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_time_is_used_when_no_clock_is_given() {
    let store = RedisStore::new(connect(&redtower_testkit::shared_url(), "time").await);
    let p = [Policy::new("t", Quota::per_hour(nonzero!(2)))];
    let s = Subject::new("alice");
    let d = store.check(&s, &p, 1).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.policies()[0].remaining(), 1);
    assert_eq!(d.policies()[0].reset(), Duration::from_secs(1800));
    let key = store.key(&s, "t");
    assert!(key.as_str().ends_with(":rl:{alice}:t"), "{key}");
    let pttl = redtower_testkit::shared()
        .cmd(&["PTTL", key.as_str()])
        .as_int()
        .unwrap();
    assert!((1_799_000..=1_800_000).contains(&pttl), "PTTL {pttl}");
}

// ---------------------------------------------------------------------------------------------
// Differential test: the Lua script against the Rust model (the memory store runs the model).

#[derive(Debug, Clone)]
struct Case {
    policies: Vec<Policy>,
    steps: Vec<(u64, u32)>,
}

const NAMES: [&str; 3] = ["p0", "p1", "p2"];

fn quota() -> impl Strategy<Value = Quota> {
    let period = prop_oneof![
        Just(1_000u64),
        Just(7_919),
        Just(1_000_000),
        Just(60_000_000),
        Just(86_400_000_000)
    ];
    let algo = prop_oneof![
        Just(Algorithm::Gcra),
        Just(Algorithm::FixedWindow),
        Just(Algorithm::SlidingWindow)
    ];
    (1u32..12, period, algo, proptest::option::of(1u32..16)).prop_map(|(limit, us, algo, burst)| {
        let mut q = Quota::new(limit, Duration::from_micros(us))
            .unwrap()
            .with_algorithm(algo);
        if let Some(b) = burst {
            q = q.burst(std::num::NonZeroU32::new(b).unwrap());
        }
        q
    })
}

fn case() -> impl Strategy<Value = Case> {
    proptest::collection::vec(quota(), 1..=3).prop_flat_map(|quotas| {
        let cap = quotas.iter().map(|q| q.capacity()).min().unwrap();
        let longest = quotas.iter().map(|q| q.period_us()).max().unwrap();
        let policies: Vec<Policy> = quotas
            .iter()
            .enumerate()
            .map(|(i, q)| Policy::new(NAMES[i], *q).shadow(i == 2))
            .collect();
        let step = (
            prop_oneof![Just(0u64), 0..longest / 4 + 2, 0..longest * 2 + 2],
            1..=cap,
        );
        proptest::collection::vec(step, 1..40).prop_map(move |steps| Case {
            policies: policies.clone(),
            steps,
        })
    })
}

#[test]
fn lua_script_matches_the_reference_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(connect(&redtower_testkit::shared_url(), "diff"));
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let counter = AtomicUsize::new(0);
    proptest!(config, |(case in case(), start in 0u64..86_400_000_000)| {
        let clock = ManualClock::at_micros(conformance::T0 + start);
        let lua = RedisStore::new(redis.clone()).clock(clock.clone());
        let model = MemoryStore::new().clock(clock.clone());
        let subject = Subject::new(format!("case{}", counter.fetch_add(1, Ordering::SeqCst)));
        for (i, (advance, cost)) in case.steps.iter().enumerate() {
            clock.advance(Duration::from_micros(*advance));
            let got = rt.block_on(lua.check(&subject, &case.policies, *cost)).unwrap();
            let want = model.check_now(&subject, &case.policies, *cost);
            prop_assert_eq!(got.is_allowed(), want.is_allowed(), "step {}", i);
            for (g, w) in got.policies().iter().zip(want.policies()) {
                prop_assert_eq!(g.outcome(), w.outcome(), "step {} policy {}", i, g.name());
            }
        }
    });
}

/// Subjects of a batch case.
const SUBJECTS: usize = 24;

/// A batch: requests of up to `SUBJECTS` subjects (indexes) with their costs, checked in one
/// call.
#[derive(Debug, Clone)]
struct BatchCase {
    policies: Vec<Policy>,
    steps: Vec<(u64, Vec<(usize, u32)>)>,
}

fn batch_case() -> impl Strategy<Value = BatchCase> {
    case().prop_flat_map(|c| {
        let cap = c.steps.iter().map(|s| s.1).max().unwrap_or(1);
        let longest = c
            .policies
            .iter()
            .map(|p| p.quota().period_us())
            .max()
            .unwrap();
        // Mostly three subjects (requests that see each other's consumption), sometimes up to
        // `SUBJECTS` (batches of many distinct keys).
        let request = (prop_oneof![3 => 0usize..3, 1 => 0..SUBJECTS], 1..=cap);
        let step = (
            prop_oneof![Just(0u64), 0..longest / 4 + 2, 0..longest * 2 + 2],
            prop_oneof![
                3 => proptest::collection::vec(request.clone(), 1..8),
                1 => proptest::collection::vec(request, 1..48),
            ],
        );
        let policies = c.policies.clone();
        proptest::collection::vec(step, 1..12).prop_map(move |steps| BatchCase {
            policies: policies.clone(),
            steps,
        })
    })
}

/// Batches (one script call for several requests, some of one subject) decide exactly what
/// the model decides for the same requests one after another at the same instant.
fn batches_match_the_reference_model(url: String, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(connect(&url, "diff-batch"));
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let counter = AtomicUsize::new(0);
    proptest!(config, |(case in batch_case(), start in 0u64..86_400_000_000)| {
        let clock = ManualClock::at_micros(conformance::T0 + start);
        let lua = RedisStore::new(redis.clone()).clock(clock.clone());
        let model = MemoryStore::new().clock(clock.clone());
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let subjects: Vec<Subject> =
            (0..SUBJECTS).map(|i| Subject::new(format!("b{n}-{i}"))).collect();
        for (i, (advance, batch)) in case.steps.iter().enumerate() {
            clock.advance(Duration::from_micros(*advance));
            let requests: Vec<(&Subject, &[Policy], u32)> = batch
                .iter()
                .map(|(s, cost)| (&subjects[*s], case.policies.as_slice(), *cost))
                .collect();
            let got = rt.block_on(lua.check_batch(&requests));
            prop_assert_eq!(got.len(), requests.len());
            for (j, (got, (s, cost))) in got.into_iter().zip(batch).enumerate() {
                let got = got.unwrap();
                let want = model.check_now(&subjects[*s], &case.policies, *cost);
                prop_assert_eq!(got.is_allowed(), want.is_allowed(), "step {} request {}", i, j);
                for (g, w) in got.policies().iter().zip(want.policies()) {
                    prop_assert_eq!(g.outcome(), w.outcome(), "step {} request {} policy {}", i, j, g.name());
                }
            }
        }
    });
}

#[test]
fn batched_lua_matches_the_reference_model_standalone() {
    batches_match_the_reference_model(redtower_testkit::shared_url(), 128);
}

#[test]
fn batched_lua_matches_the_reference_model_cluster() {
    // Subjects in different slots: one script call per slot, each in order.
    batches_match_the_reference_model(redtower_testkit::shared_cluster().url(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_script_calls_and_admit_exactly_the_limit() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), "coalesce").await;
    let store = Arc::new(RedisStore::new(redis));
    // GCRA, a burst of 700 and one more every two minutes: no refill during the test, and
    // no window boundary to cross.
    let policies: Arc<[Policy]> =
        Arc::from(vec![Policy::new("day", Quota::per_day(nonzero!(700)))]);
    // 2,000 concurrent checks over four subjects; how many were admitted.
    let round = || {
        let checks = (0..2000).map(|i| {
            let store = store.clone();
            let policies = policies.clone();
            tokio::spawn(async move {
                let subject = Subject::new(format!("s{}", i % 4));
                store
                    .check(&subject, &policies, 1)
                    .await
                    .unwrap()
                    .is_allowed()
            })
        });
        async move {
            futures::future::join_all(checks)
                .await
                .into_iter()
                .filter(|r| *r.as_ref().unwrap())
                .count()
        }
    };
    // Load the script, then count.
    assert!(
        store
            .check(&Subject::new("warm"), &policies, 1)
            .await
            .unwrap()
            .is_allowed()
    );
    let before = cmdstat(&server, "evalsha");
    assert_eq!(
        round().await,
        4 * 500,
        "four subjects, 500 checks each, all within 700"
    );
    let calls = cmdstat(&server, "evalsha") - before;
    assert!(
        (1..2000).contains(&calls),
        "2,000 concurrent checks in fewer script calls: {calls}"
    );
    assert_eq!(
        round().await,
        4 * 200,
        "exactly the 200 left per subject, batches or not"
    );
}

// ---------------------------------------------------------------------------------------------
// Over-admission: two app instances, one Redis, 64 concurrent clients.

fn instance(redis: Redis, policy: Policy) -> Router {
    let layer = RateLimitLayer::new(RedisStore::new(redis), policy)
        .key(Global)
        .timeout(Duration::from_secs(5))
        .on_store_error(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
}

async fn admitted(url: &str, quota: Quota) -> (usize, usize) {
    let prefix = unique_prefix("over");
    let mk = || {
        Redis::new(
            RedisConfig::from_url(url)
                .unwrap()
                .key_prefix(prefix.clone()),
        )
        .unwrap()
    };
    let (a, b) = (mk(), mk());
    a.wait_ready(Duration::from_secs(20)).await.unwrap();
    b.wait_ready(Duration::from_secs(20)).await.unwrap();
    let policy = Policy::new("shared", quota);
    let apps = [instance(a, policy), instance(b, policy)];
    let ok = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..64 {
        let app = apps[client % 2].clone();
        let (ok, other) = (ok.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let res = app
                    .clone()
                    .oneshot(Request::get("/").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                match res.status() {
                    StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    StatusCode::TOO_MANY_REQUESTS => 0,
                    s => panic!("unexpected status {s}"),
                };
                let _ = &other;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::SeqCst), other.load(Ordering::SeqCst))
}

async fn check_no_over_admission(url: &str) {
    let (gcra, _) = admitted(url, Quota::per_day(nonzero!(100))).await;
    assert_eq!(gcra, 100, "GCRA admits exactly its burst");
    let (fixed, _) = admitted(url, Quota::per_day(nonzero!(100)).fixed_window()).await;
    assert_eq!(fixed, 100, "fixed window admits exactly its limit");
    let (sliding, _) = admitted(url, Quota::per_day(nonzero!(100)).sliding_window()).await;
    assert!(
        sliding <= 100,
        "sliding window stays within its limit in one window: {sliding}"
    );
    assert!(sliding >= 99, "and admits (almost) all of it: {sliding}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_over_admit_standalone() {
    check_no_over_admission(&redtower_testkit::shared_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_over_admit_cluster() {
    check_no_over_admission(&redtower_testkit::shared_cluster().url()).await;
}

// ---------------------------------------------------------------------------------------------
// Round trips, TTLs, outages.

fn cmdstat(server: &RedisServer, cmd: &str) -> i64 {
    let info = server
        .cmd(&["INFO", "commandstats"])
        .as_text()
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_subjects_is_one_script_call_on_a_standalone_server() {
    let server = RedisServer::start();
    let store = RedisStore::new(connect(&server.url(), "subjects").await);
    let policies = [Policy::new("a", Quota::per_minute(nonzero!(1)))];
    // Subjects whose keys hash to different Cluster slots.
    let subjects: Vec<Subject> = (0..20).map(|i| Subject::new(format!("s{i}"))).collect();
    let requests: Vec<(&Subject, &[Policy], u32)> =
        subjects.iter().map(|s| (s, &policies[..], 1)).collect();
    // Loads the script (a fresh server answers the first call NOSCRIPT).
    store
        .check(&Subject::new("warm"), &policies, 1)
        .await
        .unwrap();
    let before = cmdstat(&server, "evalsha");
    // Each subject's first request passes; its second, in the same batch, is limited.
    let mut twice = requests.clone();
    twice.extend(requests.iter().copied());
    let decisions = store.check_batch(&twice).await;
    assert_eq!(cmdstat(&server, "evalsha") - before, 1);
    let allowed: Vec<bool> = decisions
        .into_iter()
        .map(|d| d.unwrap().is_allowed())
        .collect();
    assert_eq!(allowed[..20], [true; 20]);
    assert_eq!(allowed[20..], [false; 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_request_whatever_the_policies_and_none_when_cached() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), "rtt").await;
    let layer = RateLimitLayer::new(
        RedisStore::new(redis),
        Policy::new("a", Quota::per_second(nonzero!(100))),
    )
    .policy(Policy::new(
        "b",
        Quota::per_hour(nonzero!(5)).fixed_window(),
    ))
    .policy(Policy::new(
        "c",
        Quota::per_day(nonzero!(1000)).sliding_window(),
    ))
    .key(Global)
    .timeout(Duration::from_secs(5));
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let send = || {
        app.clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
    };
    assert_eq!(send().await.unwrap().status(), StatusCode::OK); // loads the script
    let before = cmdstat(&server, "evalsha");
    for _ in 0..4 {
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        cmdstat(&server, "evalsha") - before,
        5,
        "one EVALSHA per request, 3 policies"
    );
    for _ in 0..10 {
        assert_eq!(
            send().await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        cmdstat(&server, "evalsha") - before,
        5,
        "denied subject: no Redis call"
    );
    assert_eq!(cmdstat(&server, "eval"), 0);
}

async fn assert_every_key_has_a_ttl(redis: &Redis, store: &RedisStore, pttl: impl Fn(&str) -> i64) {
    let keys: Vec<String> = redis
        .scan(&store.namespace().pattern())
        .try_collect()
        .await
        .unwrap();
    // 12 subjects x 3 policies; the per-minute and per-hour counters (24) cannot have expired
    // yet, the per-second ones may have on a slow machine.
    assert!(keys.len() >= 24, "the run wrote keys: {}", keys.len());
    for key in keys {
        let ttl = pttl(&key);
        // -1 is a key without a TTL; -2 one that expired since the scan (fine).
        assert!(ttl > 0 || ttl == -2, "{key} has PTTL {ttl}");
    }
}

async fn write_many(store: &RedisStore) {
    let policies = [
        Policy::new("g", Quota::per_minute(nonzero!(3))),
        Policy::new("f", Quota::per_hour(nonzero!(3)).fixed_window()),
        Policy::new("s", Quota::per_second(nonzero!(3)).sliding_window()),
    ];
    for i in 0..12 {
        let s = Subject::new(format!("user{i}"));
        for _ in 0..5 {
            store.check(&s, &policies, 1).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_ttl_standalone() {
    let redis = connect(&redtower_testkit::shared_url(), "ttl").await;
    let store = RedisStore::new(redis.clone());
    write_many(&store).await;
    let server = redtower_testkit::shared();
    assert_every_key_has_a_ttl(&redis, &store, |k| {
        server.cmd(&["PTTL", k]).as_int().unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_ttl_cluster() {
    let cluster = redtower_testkit::shared_cluster();
    let redis = connect(&cluster.url(), "ttl").await;
    let store = RedisStore::new(redis.clone());
    write_many(&store).await;
    assert_every_key_has_a_ttl(&redis, &store, |k| {
        let slot = redtower_client::fred::util::redis_keyslot(k.as_bytes());
        cluster
            .node_for_slot(slot)
            .cmd(&["PTTL", k])
            .as_int()
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_is_transparent() {
    let server = RedisServer::start();
    let store = RedisStore::new(connect(&server.url(), "flush").await);
    let p = [Policy::new("f", Quota::per_hour(nonzero!(3)))];
    let s = Subject::new("x");
    assert!(store.check(&s, &p, 1).await.unwrap().is_allowed());
    server.cmd(&["SCRIPT", "FLUSH"]);
    let d = store.check(&s, &p, 1).await.unwrap();
    assert_eq!(d.policies()[0].remaining(), 1);
}

fn outage_app(redis: Redis, failure: FailurePolicy) -> Router {
    let layer = RateLimitLayer::new(RedisStore::new(redis), Quota::per_hour(nonzero!(2)))
        .key(Global)
        .on_store_error(failure)
        .timeout(Duration::from_millis(300))
        // A cool-down long enough that the breaker stays open through the checks below on a
        // loaded machine (a probe after it would wait out the timeout again).
        .circuit_breaker(CircuitBreaker {
            failures: 2,
            cool_down: Duration::from_secs(3),
        })
        .denied_cache(0);
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_the_layers_timeout_and_abandoned_checks_are_never_sent() {
    let server = RedisServer::start();
    // The store's own command timeout is far longer than the stall: only the layer's timeout
    // can answer these requests in time.
    let store = RedisStore::new(connect(&server.url(), "stall").await)
        .command_timeout(Duration::from_secs(30));
    let layer = RateLimitLayer::new(store, Quota::per_hour(nonzero!(1000)))
        .key(Global)
        .timeout(Duration::from_millis(200))
        // The breaker stays closed: every request below asks the store.
        .circuit_breaker(CircuitBreaker {
            failures: 1000,
            cool_down: Duration::from_secs(30),
        })
        .denied_cache(0);
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let send = |app: &Router| {
        let app = app.clone();
        async move {
            let started = Instant::now();
            let res = app
                .oneshot(Request::get("/").body(Body::empty()).unwrap())
                .await
                .unwrap();
            (res, started.elapsed())
        }
    };
    let (res, _) = send(&app).await;
    assert!(res.headers().contains_key("ratelimit"));
    let before = cmdstat(&server, "evalsha");

    server.pause();
    let paused = Instant::now();
    // The first check's batch goes on the wire and stalls; the next ones queue behind it.
    let first = tokio::spawn(send(&app));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued = futures::future::join_all((0..7).map(|_| send(&app))).await;
    for (i, (res, took)) in std::iter::once(first.await.unwrap())
        .chain(queued)
        .enumerate()
    {
        // Fail open (the default): allowed, without rate limit fields, after the timeout.
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key("ratelimit"), "request {i}");
        assert!(
            took < Duration::from_millis(200 + 700),
            "request {i} took {took:?}"
        );
    }
    // Resume well after every request gave up.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(paused.elapsed())).await;
    server.resume();

    // The stalled call runs when Redis resumes; the calls queued behind it belong to requests
    // that gave up, so they never leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cmdstat(&server, "evalsha") == before {
        assert!(Instant::now() < deadline, "the stalled call never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for its answer to reach the client and for a next batch to leave, if one did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cmdstat(&server, "evalsha") - before,
        1,
        "only the stalled call ran, none for the requests that gave up"
    );
    // The next request is checked again.
    let (res, _) = send(&app).await;
    assert!(res.headers().contains_key("ratelimit"));
    assert_eq!(cmdstat(&server, "evalsha") - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_follows_each_failure_policy_and_recovers() {
    let mut server = RedisServer::start();
    let redis = connect(&server.url(), "outage").await;
    let open = outage_app(redis.clone(), FailurePolicy::FailOpen);
    let closed = outage_app(redis.clone(), FailurePolicy::FailClosed);
    let local = outage_app(redis.clone(), FailurePolicy::LocalFallback);
    let send = |app: &Router| {
        app.clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
    };
    let res = send(&open).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("ratelimit"));

    server.kill();
    // Fail open: allowed without headers, never slower than the timeout, and once the breaker
    // is open, immediately.
    for i in 0..6 {
        let started = Instant::now();
        let res = send(&open).await.unwrap();
        let took = started.elapsed();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key("ratelimit"));
        // Bounded by the 300 ms timeout (plus scheduling slack on a busy machine)...
        assert!(
            took < Duration::from_millis(300 + 700),
            "request {i} took {took:?}"
        );
        // ...and, once the breaker is open, far below it: the store is not called.
        if i >= 2 {
            assert!(
                took < Duration::from_millis(150),
                "breaker open: request {i} took {took:?}"
            );
        }
    }
    // Fail closed: 503 + Retry-After.
    for _ in 0..3 {
        let res = send(&closed).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "3", "the breaker's cool-down");
    }
    // Local fallback: the limit holds in this instance.
    assert_eq!(send(&local).await.unwrap().status(), StatusCode::OK);
    assert_eq!(send(&local).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send(&local).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    server.restart();
    // Recovery: within a few seconds (reconnect + breaker probe) the limits come back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = send(&open).await.unwrap();
        if res.headers().contains_key("ratelimit") {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while send(&closed).await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            Instant::now() < deadline,
            "fail-closed layer did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_policys_algorithm_under_the_same_name_just_works() {
    let store = RedisStore::new(connect(&redtower_testkit::shared_url(), "algo").await);
    let s = Subject::new("x");
    let quotas = [
        Quota::per_hour(nonzero!(3)),
        Quota::per_hour(nonzero!(3)).fixed_window(),
        Quota::per_hour(nonzero!(3)),
        Quota::per_hour(nonzero!(3)).sliding_window(),
    ];
    for q in quotas {
        // The old key has another type: it counts as no state, and is replaced.
        let d = store.check(&s, &[Policy::new("p", q)], 1).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.policies()[0].remaining(), 2, "{q:?}");
    }
}

/// A corrupt or hostile counter in Redis (a huge theoretical arrival time, a window state with
/// absurd numbers) gives an error (the failure policy applies) or a decision: never a panic,
/// and never a retry time that overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_state_in_redis_never_panics() {
    let store = RedisStore::new(connect(&redtower_testkit::shared_url(), "hostile").await);
    let server = redtower_testkit::shared();
    let policies = [
        Policy::new("g", Quota::per_hour(nonzero!(5))),
        Policy::new("f", Quota::per_hour(nonzero!(5)).fixed_window()),
        Policy::new("s", Quota::per_hour(nonzero!(5)).sliding_window()),
    ];
    for (i, value) in [
        "99999999999999999999999999",
        "18446744073709551615",
        "-5",
        "9007199254740993",
        "1 18446744073709551615 18446744073709551615",
        "99999999999999999999 1 1",
        "nan",
    ]
    .into_iter()
    .enumerate()
    {
        let s = Subject::new(format!("hostile-{i}"));
        for p in &policies {
            server.cmd(&["SET", store.key(&s, p.name()).as_str(), value]);
        }
        for _ in 0..2 {
            match store.check(&s, &policies, 1).await {
                Ok(d) => {
                    let _ = (d.retry_after(), d.remaining());
                    for p in d.policies() {
                        let _ = (p.reset(), p.retry_after());
                    }
                }
                Err(e) => assert!(!e.is_outage(), "{value}: {e}"),
            }
        }
    }
}

/// Clients choose their subjects: a flood of 10,000 distinct ones leaves only keys that
/// expire (every key has a TTL no longer than its policy needs), and the Redis memory it costs
/// is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_subjects_leaves_only_expiring_keys() {
    const SUBJECTS: usize = 10_000;
    let server = redtower_testkit::RedisServer::start();
    let store = RedisStore::new(connect(&server.url(), "flood").await);
    let used = || -> u64 {
        let info = server.cmd(&["INFO", "memory"]).as_text().unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = used();
    let policies = [
        Policy::new("burst", Quota::per_minute(nonzero!(60))),
        Policy::new("hourly", Quota::per_hour(nonzero!(1_000)).fixed_window()),
    ];
    let subjects: Vec<Subject> = (0..SUBJECTS)
        .map(|i| Subject::new(format!("flood-{i}")))
        .collect();
    for chunk in subjects.chunks(500) {
        let batch: Vec<(&Subject, &[Policy], u32)> =
            chunk.iter().map(|s| (s, &policies[..], 1)).collect();
        for d in store.check_batch(&batch).await {
            assert!(d.unwrap().is_allowed());
        }
    }
    let after = used();
    let keys = server.cmd(&["DBSIZE"]).as_int().unwrap();
    eprintln!(
        "flood: {SUBJECTS} subjects x 2 policies: {keys} keys, Redis used_memory +{} bytes \
         ({} bytes a subject)",
        after.saturating_sub(before),
        after.saturating_sub(before) / SUBJECTS as u64
    );
    // One key per policy and subject (the 1 s ones may have expired already on a slow
    // machine), nothing else.
    assert!(
        (SUBJECTS as i64..=2 * SUBJECTS as i64).contains(&keys),
        "{keys} keys"
    );
    // Every key expires, no later than its policy needs: GCRA one emission interval (1 s)
    // after one request, the fixed window at the end of the hour.
    for s in subjects.iter().step_by(97) {
        for (p, most) in [("burst", 1_000), ("hourly", 3_600_000)] {
            let key = store.key(s, p);
            let pttl = server.cmd(&["PTTL", key.as_str()]).as_int().unwrap();
            assert!(pttl <= most, "{p}: PTTL {pttl}");
            // -2: already expired (the 1 s ones, on a slow machine); -1 would be no TTL.
            assert!(pttl > 0 || pttl == -2, "{p}: PTTL {pttl}");
        }
    }
}
