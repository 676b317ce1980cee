//! A Sentinel failover under load: the primary crashes while every layer of the example app
//! (rate limit, cache, sessions, pub/sub) and a job queue are in use; the sentinel promotes the
//! replica. Each layer must follow its failure policy during the switch, recover soon after the
//! promotion, and keep its counts: no double-counted rate limit, no lost or repeated job, no
//! duplicate or missing event, no lost login and no resurrected session.
//!
//! The crash is `SIGKILL` after the replica has caught up with every write the primary
//! acknowledged ([`RedisSentinel::kill_primary`]): Redis's asynchronous replication may lose
//! the last writes of a real crash, and this test is about what the clients do, not about that.
//!
//! Run with `--nocapture` to see the figures: each layer's recovery time after the promotion
//! and after the sentinel's switch, its requests by Redis and by its failure policy, and the
//! counts (rate limit, events, jobs).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Job, JobContext, JobError, Queue, RedisStore, Worker};
use redtower_testkit::{Promotion, RedisSentinel, unique_prefix};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod common;

use common::TestApp;

/// `API_RATE_LIMIT`: a quota that no test run can use up, over a period so long that nothing
/// is replenished while the test runs (one request every 315 s), so the `remaining` count
/// read at the end tells exactly how many requests Redis counted.
const LIMIT: u64 = 1_000_000;
const RATE: &str = "1000000/3650d";

/// How often each load generator starts a request (open loop: a slow request does not slow
/// the load down, so the samples cover the switch evenly): 25 requests a second per layer.
const EVERY: Duration = Duration::from_millis(40);

/// After its recovery a layer must be served by Redis at least this often. Not always: on a
/// starved machine the rate limit fails open whenever Redis's answer takes longer than its
/// 100 ms timeout (and then its breaker opens for a second), which happens in bursts right
/// after the reconnect, when every layer's backlog lands at once (measured: 99-100% on a
/// loaded machine, 48% once with two copies of this test running side by side). A layer that
/// did not come back is near 0%.
const REDIS_SHARE_AFTER: f64 = 0.4;

/// The promise under test: every layer is served by Redis again within this time of the new
/// primary's promotion, counted from the moment the sentinel names it.
///
/// The sentinel names the promoted replica only after its next `INFO` of it (Sentinel's fixed
/// one-second period during a failover: 0.85-0.95 s after the promotion in our runs), and no
/// client can find the new primary before that, so the clock starts there. From there the
/// clients' share is their reconnect backoff: at most 1 s + 100 ms jitter by default
/// (measured: 0.6-1.4 s on a loaded 2-core machine, the reconnect included).
const RECOVERY: Duration = Duration::from_secs(2);

/// Latency allowed on top of [`RECOVERY`] for a busy 2-core machine (the workspace building in
/// parallel): the time a reconnect, its script reloads and an HTTP request can take there.
const SLACK: Duration = Duration::from_secs(1);

/// How one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Served by Redis as usual.
    Redis,
    /// The layer's failure policy answered (Redis was unreachable).
    Policy,
    /// Neither: a broken promise.
    Wrong(String),
}

#[derive(Debug, Clone)]
struct Sample {
    started: Instant,
    done: Instant,
    outcome: Outcome,
}

/// Starts one request every [`EVERY`] until `stop`, each in a task of its own; resolves to
/// every request's sample.
fn drive<F, Fut>(stop: Arc<AtomicBool>, f: F) -> tokio::task::JoinHandle<Vec<Sample>>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let request = f(i);
            i += 1;
            tasks.spawn(async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(Duration::from_secs(30), request)
                    .await
                    .unwrap_or_else(|_| Outcome::Wrong("no answer within 30 s".into()));
                Sample {
                    started,
                    done: Instant::now(),
                    outcome,
                }
            });
        }
        let mut samples = Vec::new();
        while let Some(sample) = tasks.join_next().await {
            samples.push(sample.expect("a request task panicked"));
        }
        samples.sort_by_key(|s| s.started);
        samples
    })
}

/// What the samples of one layer show about the switch.
#[derive(Debug)]
struct Figures {
    requests: usize,
    by_redis: usize,
    by_policy: usize,
    wrong: Vec<String>,
    /// From the promotion until the first answer by Redis after it.
    recovery: Option<Duration>,
    /// Of the requests started before the crash, the share answered by Redis.
    redis_share_before: f64,
    /// Of the requests started after the recovery, the share answered by Redis.
    redis_share_after: f64,
    /// The slowest request started between the crash and the recovery.
    slowest_in_switch: Duration,
}

fn figures(samples: &[Sample], killed_at: Instant, promoted_at: Instant) -> Figures {
    // Redis can only answer through the new primary once the old one is dead.
    let recovered_at = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Redis && s.done > promoted_at)
        .map(|s| s.done)
        .min();
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| recovered_at.is_some_and(|r| s.started >= r))
        .collect();
    let redis_after = after.iter().filter(|s| s.outcome == Outcome::Redis).count();
    let before: Vec<&Sample> = samples.iter().filter(|s| s.started < killed_at).collect();
    let redis_before = before
        .iter()
        .filter(|s| s.outcome == Outcome::Redis)
        .count();
    let slowest_in_switch = samples
        .iter()
        .filter(|s| s.started >= killed_at && recovered_at.is_none_or(|r| s.started <= r))
        .map(|s| s.done - s.started)
        .max()
        .unwrap_or_default();
    Figures {
        requests: samples.len(),
        by_redis: samples
            .iter()
            .filter(|s| s.outcome == Outcome::Redis)
            .count(),
        by_policy: samples
            .iter()
            .filter(|s| s.outcome == Outcome::Policy)
            .count(),
        wrong: samples
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Wrong(why) => Some(why.clone()),
                _ => None,
            })
            .collect(),
        recovery: recovered_at.map(|r| r - promoted_at),
        redis_share_before: redis_before as f64 / before.len().max(1) as f64,
        redis_share_after: redis_after as f64 / after.len().max(1) as f64,
        slowest_in_switch,
    }
}

fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn login(c: &Client, app: &TestApp, user: &str) {
    for _ in 0..200 {
        let res = c
            .post(app.url("/login"))
            .json(&json!({ "user": user }))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            return;
        }
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "login {user}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} could not log in");
}

async fn me(c: &Client, app: &TestApp) -> StatusCode {
    c.get(app.url("/me")).send().await.unwrap().status()
}

/// The example app's `ship-order` stand-in: a job that records every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    n: u64,
}

impl Job for Tick {
    const NAME: &'static str = "failover-tick";
}

/// Every event an SSE client received: `(id, event name, data, when)`.
type Events = Arc<Mutex<Vec<(String, String, Value, Instant)>>>;

/// One SSE client that reconnects like a browser's `EventSource` (with `Last-Event-ID`),
/// recording every event; resolves to the number of connections it made.
fn sse_reader(url: String, stop: Arc<AtomicBool>) -> (Events, tokio::task::JoinHandle<u64>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let task = tokio::spawn(async move {
        let client = Client::new();
        let mut last_id: Option<String> = None;
        let mut connections = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut req = client.get(&url);
            if let Some(id) = &last_id {
                req = req.header("last-event-id", id.as_str());
            }
            let Ok(res) = req.send().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if res.status() != StatusCode::OK {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            connections += 1;
            let mut body = res.bytes_stream();
            let mut buf = String::new();
            loop {
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stop.load(Ordering::Relaxed) { break } else { continue }
                    }
                };
                let Some(Ok(chunk)) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) = (None, "message".to_owned(), None);
                    for line in frame.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().to_owned());
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data = serde_json::from_str(v.trim_start()).ok();
                        }
                    }
                    if let Some(id) = &id {
                        last_id = Some(id.clone());
                    }
                    if let (Some(id), Some(data)) = (id, data) {
                        seen.lock().unwrap().push((id, event, data, Instant::now()));
                    }
                }
            }
        }
        connections
    });
    (events, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_keeps_every_count() {
    let mut group = tokio::task::spawn_blocking(RedisSentinel::with_replica)
        .await
        .unwrap();
    let url = group.url();
    let prefix = unique_prefix("failover");
    let app = TestApp::spawn(
        Some(&url),
        &prefix,
        &[
            ("API_RATE_LIMIT", RATE),
            ("WORKER", "off"),
            // Every cache hit then comes from Redis, not from the in-process copy.
            ("CACHE_L1", "off"),
            ("NEAR_CACHE", "off"),
        ],
    )
    .await;

    // Jobs: the crate directly, with a handler that records every run.
    let redis = Redis::new(
        RedisConfig::from_url(&url)
            .unwrap()
            .key_prefix(format!("{prefix}-jobs")),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis);
    let queue = Queue::<Tick>::new(store.clone(), "failover");
    let runs: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let recorded = runs.clone();
    let worker = Worker::new(store, "failover")
        .concurrency(4)
        .handle::<Tick>(move |tick: Tick, _ctx: JobContext| {
            let runs = recorded.clone();
            async move {
                runs.lock().unwrap().push((tick.n, Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<(), JobError>(())
            }
        })
        .start();

    // Before the crash: a cache entry, logged-in users, a revoked session, an SSE reader.
    let c = browser();
    let res = c.get(app.url("/products/featured")).send().await.unwrap();
    assert_eq!(res.headers()["x-cache"], "MISS");
    let res = c.get(app.url("/products/featured")).send().await.unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");
    let users: Vec<Client> = (0..4).map(|_| browser()).collect();
    for (i, u) in users.iter().enumerate() {
        login(u, &app, &format!("user{i}")).await;
    }
    let revoked_before = browser();
    login(&revoked_before, &app, "gone-before").await;
    let revoker = browser();
    login(&revoker, &app, "gone-before").await;
    let res = revoker
        .post(app.url("/logout-everywhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(me(&revoked_before, &app).await, StatusCode::UNAUTHORIZED);
    // Revoked during the switch: `victim` is polled all along; `phone` logs out everywhere
    // once the crash happened.
    let victim = browser();
    login(&victim, &app, "gone-during").await;
    let phone = browser();
    login(&phone, &app, "gone-during").await;
    let publisher = browser();
    login(&publisher, &app, "publisher").await;

    let stop = Arc::new(AtomicBool::new(false));
    let channel = "failover-news";
    // The reader goes on after the load, until every accepted event had time to arrive.
    let stop_reading = Arc::new(AtomicBool::new(false));
    let (events, sse_task) =
        sse_reader(app.url(&format!("/events/{channel}")), stop_reading.clone());

    // The reader is subscribed once it receives an event published now.
    let subscribed = async {
        loop {
            let res = publisher
                .post(app.url(&format!("/events/{channel}")))
                .json(&json!({ "warm-up": true }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::ACCEPTED);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !events.lock().unwrap().is_empty() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("the SSE reader receives events");

    // The load.
    let base = app.base.clone();
    let rate_limit = drive(stop.clone(), {
        let (c, base) = (Client::new(), base.clone());
        move |_| {
            let (c, base) = (c.clone(), base.clone());
            async move {
                let res = match c.get(format!("{base}/api/hello")).send().await {
                    Ok(res) => res,
                    Err(e) => return Outcome::Wrong(format!("rate limit: {e}")),
                };
                match (
                    res.status(),
                    res.headers().contains_key("x-ratelimit-remaining"),
                ) {
                    (StatusCode::OK, true) => Outcome::Redis,
                    // Fail open: through, without headers.
                    (StatusCode::OK, false) => Outcome::Policy,
                    (status, _) => Outcome::Wrong(format!("rate limit answered {status}")),
                }
            }
        }
    });
    let cache = drive(stop.clone(), {
        let (c, base) = (Client::new(), base.clone());
        move |_| {
            let (c, base) = (c.clone(), base.clone());
            async move {
                let res = match c.get(format!("{base}/products/featured")).send().await {
                    Ok(res) => res,
                    Err(e) => return Outcome::Wrong(format!("cache: {e}")),
                };
                let status = res.status();
                let header = |name: &str| {
                    res.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let (x_cache, cache_status) = (header("x-cache"), header("cache-status"));
                let products = res.json::<Value>().await.ok();
                if status != StatusCode::OK
                    || products.as_ref().and_then(Value::as_array).map(Vec::len) != Some(3)
                {
                    return Outcome::Wrong(format!("cache answered {status}: {products:?}"));
                }
                // The entry stays in Redis all along: anything but a hit read from it is the
                // failure policy (a miss through the handler, or a hit on a fill of this
                // instance's own single-flight).
                if x_cache == "HIT" && !cache_status.contains("COALESCED") {
                    Outcome::Redis
                } else {
                    Outcome::Policy
                }
            }
        }
    });
    let users = Arc::new(users);
    let sessions = drive(stop.clone(), {
        let (users, base) = (users.clone(), base.clone());
        move |i| {
            let (users, base) = (users.clone(), base.clone());
            async move {
                let c = &users[(i % users.len() as u64) as usize];
                match c.get(format!("{base}/me")).send().await.map(|r| r.status()) {
                    Ok(StatusCode::OK) => Outcome::Redis,
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => Outcome::Policy,
                    Ok(status) => Outcome::Wrong(format!("a live session answered {status}")),
                    Err(e) => Outcome::Wrong(format!("session: {e}")),
                }
            }
        }
    });
    let accepted: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let pubsub = drive(stop.clone(), {
        let (c, base, accepted) = (publisher.clone(), base.clone(), accepted.clone());
        move |n| {
            let (c, base, accepted) = (c.clone(), base.clone(), accepted.clone());
            async move {
                let res = match c
                    .post(format!("{base}/events/{channel}"))
                    .json(&json!({ "n": n }))
                    .send()
                    .await
                {
                    Ok(res) => res,
                    Err(e) => return Outcome::Wrong(format!("publish: {e}")),
                };
                match res.status() {
                    StatusCode::ACCEPTED => {
                        let body: Value = res.json().await.unwrap_or_default();
                        let id = body["id"].as_str().unwrap_or_default().to_owned();
                        accepted.lock().unwrap().push((n, id));
                        Outcome::Redis
                    }
                    StatusCode::SERVICE_UNAVAILABLE => Outcome::Policy,
                    status => Outcome::Wrong(format!("publish answered {status}")),
                }
            }
        }
    });
    let enqueued: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let enqueue_errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let queue = Arc::new(queue);
    let jobs = drive(stop.clone(), {
        let (queue, enqueued, errors) = (queue.clone(), enqueued.clone(), enqueue_errors.clone());
        move |n| {
            let (queue, enqueued, errors) = (queue.clone(), enqueued.clone(), errors.clone());
            async move {
                match queue.add(Tick { n }).await {
                    Ok(_) => {
                        enqueued.lock().unwrap().push((n, Instant::now()));
                        Outcome::Redis
                    }
                    Err(e) => {
                        *errors.lock().unwrap().entry(e.to_string()).or_default() += 1;
                        Outcome::Policy
                    }
                }
            }
        }
    });
    let victim_polls = drive(stop.clone(), {
        let (c, base) = (victim.clone(), base.clone());
        move |_| {
            let (c, base) = (c.clone(), base.clone());
            async move {
                match c.get(format!("{base}/me")).send().await.map(|r| r.status()) {
                    Ok(StatusCode::OK) => Outcome::Redis,
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => Outcome::Policy,
                    // Checked against the revocation below.
                    Ok(StatusCode::UNAUTHORIZED) => Outcome::Wrong("401".into()),
                    Ok(status) => Outcome::Wrong(format!("{status}")),
                    Err(e) => Outcome::Wrong(format!("{e}")),
                }
            }
        }
    });

    // A second of steady load, then the crash.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    let group = tokio::task::spawn_blocking(move || {
        group.kill_primary();
        group
    })
    .await
    .unwrap();
    let group = Arc::new(group);
    let promotion = tokio::task::spawn_blocking({
        let group = group.clone();
        move || group.wait_promoted(Duration::from_secs(60))
    });

    // Logged in and out during the switch: a login that succeeded stays, a revocation that
    // succeeded holds.
    let revocation = {
        let (phone, base) = (phone.clone(), base.clone());
        tokio::spawn(async move {
            let first_try = Instant::now();
            loop {
                let res = phone
                    .post(format!("{base}/logout-everywhere"))
                    .send()
                    .await
                    .unwrap();
                if res.status() == StatusCode::NO_CONTENT {
                    return (first_try, Instant::now());
                }
                assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let newcomer = browser();
    login(&newcomer, &app, "newcomer").await;
    let Promotion {
        promoted_at,
        switched_at,
        ..
    } = promotion.await.unwrap();

    // The load goes on well past the recovery bound, so a late recovery or a relapse shows.
    let load_until = switched_at + RECOVERY + SLACK;
    tokio::time::sleep_until((load_until + Duration::from_secs(1)).into()).await;
    stop.store(true, Ordering::Relaxed);
    let (revocation_started, revoked_at) = revocation.await.unwrap();

    let results = [
        ("rate limit", rate_limit.await.unwrap()),
        ("cache", cache.await.unwrap()),
        ("session", sessions.await.unwrap()),
        ("pub/sub publish", pubsub.await.unwrap()),
        ("jobs enqueue", jobs.await.unwrap()),
    ];
    let victim_polls = victim_polls.await.unwrap();

    eprintln!(
        "failover: sentinel switched {:?} after the promotion, {:?} after the crash",
        switched_at - promoted_at,
        promoted_at - killed_at
    );
    let mut failures = Vec::new();
    for (layer, samples) in &results {
        let f = figures(samples, killed_at, promoted_at);
        let after_switch = f
            .recovery
            .map(|r| (promoted_at + r).saturating_duration_since(switched_at));
        eprintln!(
            "failover: {layer}: recovered {:?} after the promotion ({after_switch:?} after the \
             sentinel switch); {} requests: {} by Redis, {} by the failure policy; by Redis: {:.0}% \
             before the crash, {:.0}% after the recovery; slowest during the switch {:?}",
            f.recovery,
            f.requests,
            f.by_redis,
            f.by_policy,
            f.redis_share_before * 100.0,
            f.redis_share_after * 100.0,
            f.slowest_in_switch,
        );
        if !f.wrong.is_empty() {
            failures.push(format!(
                "{layer}: {} requests broke the failure policy, e.g. {:?}",
                f.wrong.len(),
                &f.wrong[..f.wrong.len().min(5)]
            ));
        }
        let late = || -> Vec<String> {
            samples
                .iter()
                .filter(|s| s.outcome != Outcome::Redis && s.started > promoted_at)
                .map(|s| {
                    let started = s.started - promoted_at;
                    format!("{started:?} (+{:?})", s.done - s.started)
                })
                .collect()
        };
        // The rate limit's and the cache's circuit breakers close as soon as the client has
        // reconnected, not after their cool-down: every layer has the same bound.
        let bound = RECOVERY + SLACK;
        match after_switch {
            None => failures.push(format!(
                "{layer}: never recovered; after the promotion, not by Redis: {:?}",
                late()
            )),
            Some(r) if r > bound => failures.push(format!(
                "{layer}: recovered {r:?} after the sentinel switch; after the promotion, not \
                 by Redis: {:?}",
                late()
            )),
            Some(_) if f.redis_share_after < REDIS_SHARE_AFTER => failures.push(format!(
                "{layer}: only {:.0}% by Redis after the recovery; after the promotion, not by \
                 Redis: {:?}",
                f.redis_share_after * 100.0,
                late()
            )),
            Some(_) => {}
        }
    }

    // Sessions: the revocation made before the crash and the one made during it hold; the
    // login made during it stays.
    assert_eq!(me(&revoked_before, &app).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&revoker, &app).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&phone, &app).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&victim, &app).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&newcomer, &app).await, StatusCode::OK);
    for s in &victim_polls {
        let ok = if s.started > revoked_at {
            s.outcome == Outcome::Wrong("401".into())
        } else if s.done < revocation_started {
            matches!(s.outcome, Outcome::Redis | Outcome::Policy)
        } else {
            matches!(s.outcome, Outcome::Redis | Outcome::Policy)
                || s.outcome == Outcome::Wrong("401".into())
        };
        if !ok {
            failures.push(format!(
                "revoked session: {:?} for a request started {:?} after the revocation",
                s.outcome,
                s.started.saturating_duration_since(revoked_at)
            ));
        }
    }

    // Rate limit: Redis counted every request it decided, and never more than the requests it
    // let through (decided, or failed open): nothing counted twice.
    let res = c.get(app.url("/api/hello")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let remaining: u64 = res.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let counted = LIMIT - remaining;
    let rl = &results[0].1;
    // (+1: the probe just sent.)
    let decided = rl.iter().filter(|s| s.outcome == Outcome::Redis).count() as u64 + 1;
    let failed_open = rl.iter().filter(|s| s.outcome == Outcome::Policy).count() as u64;
    eprintln!(
        "failover: rate limit: {counted} counted in Redis, {decided} decided by Redis, {failed_open} failed open"
    );
    if counted > decided + failed_open || counted < decided {
        failures.push(format!(
            "rate limit: Redis counted {counted} requests, {decided} were decided by Redis and {failed_open} failed open"
        ));
    }

    // Pub/sub: every accepted event arrives once; ids are unique; no resync.
    let accepted = accepted.lock().unwrap().clone();
    let accepted_ns: BTreeSet<u64> = accepted.iter().map(|(n, _)| *n).collect();
    let ids: BTreeSet<&str> = accepted.iter().map(|(_, id)| id.as_str()).collect();
    if ids.len() != accepted.len() {
        failures.push(format!(
            "pub/sub: {} accepted publishes returned {} distinct ids",
            accepted.len(),
            ids.len()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: BTreeSet<u64> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, _, d, _)| d["n"].as_u64())
            .collect();
        if accepted_ns.is_subset(&got) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_reading.store(true, Ordering::Relaxed);
    // The reader stops at its next 100 ms tick.
    let connections = sse_task.await.unwrap();
    let events = events.lock().unwrap().clone();
    let mut by_n: HashMap<u64, u32> = HashMap::new();
    let mut event_ids = BTreeSet::new();
    for (id, name, data, _) in &events {
        if name != "message" {
            failures.push(format!("pub/sub: an `{name}` event (id {id}): a gap"));
        }
        if !event_ids.insert(id.clone()) {
            failures.push(format!("pub/sub: event id {id} delivered twice"));
        }
        if let Some(n) = data["n"].as_u64() {
            *by_n.entry(n).or_default() += 1;
        }
    }
    let duplicated: Vec<_> = by_n.iter().filter(|(_, c)| **c > 1).collect();
    let ids: BTreeMap<u64, &str> = accepted.iter().map(|(n, id)| (*n, id.as_str())).collect();
    let missing: Vec<&str> = accepted_ns
        .iter()
        .filter(|n| !by_n.contains_key(n))
        .map(|n| ids[n])
        .collect();
    // Live delivery: the first event the SSE client received after the sentinel's switch.
    let delivered_after = events
        .iter()
        .map(|(_, _, _, at)| *at)
        .filter(|at| *at > switched_at)
        .min()
        .map(|at| at - switched_at);
    eprintln!(
        "failover: pub/sub: {} publishes accepted, {} events received over {connections} SSE \
         connections, {} duplicated, {} missing; first delivery {delivered_after:?} after the \
         sentinel switch",
        accepted.len(),
        events.len(),
        duplicated.len(),
        missing.len()
    );
    if !duplicated.is_empty() || !missing.is_empty() {
        failures.push(format!(
            "pub/sub: duplicated (n, times) {duplicated:?}, missing ids {missing:?}"
        ));
    }
    if delivered_after.is_none_or(|d| d > RECOVERY + SLACK) {
        failures.push(format!(
            "pub/sub: the SSE client received its first event {delivered_after:?} after the \
             sentinel switch"
        ));
    }

    // Jobs: every accepted job runs exactly once, none stays leased.
    let enqueued = enqueued.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ran: BTreeSet<u64> = runs.lock().unwrap().iter().map(|(n, _)| *n).collect();
        if enqueued.iter().all(|(n, _)| ran.contains(n)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut counts = queue.counts().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (counts.active + counts.ready + counts.scheduled) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counts = queue.counts().await.unwrap();
    }
    let runs = runs.lock().unwrap().clone();
    let mut ran: HashMap<u64, u32> = HashMap::new();
    for (n, _) in &runs {
        *ran.entry(*n).or_default() += 1;
    }
    let twice: Vec<_> = ran.iter().filter(|(_, c)| **c > 1).collect();
    let lost: Vec<_> = enqueued
        .iter()
        .filter(|(n, _)| !ran.contains_key(n))
        .map(|(n, _)| n)
        .collect();
    let first_run_after = runs
        .iter()
        .filter(|(_, at)| *at > switched_at)
        .map(|(_, at)| *at - switched_at)
        .min();
    // The worker is back: a job accepted after the switch waits for it no longer than a layer
    // may take to recover (a worker left on its idle poll would take its 5 s watchdog).
    let run_at: HashMap<u64, Instant> = runs.iter().map(|(n, at)| (*n, *at)).collect();
    let slowest_pickup = enqueued
        .iter()
        .filter(|(_, at)| *at > switched_at)
        .filter_map(|(n, at)| Some(run_at.get(n)?.saturating_duration_since(*at)))
        .max();
    eprintln!(
        "failover: jobs: {} enqueued, {} runs of {} jobs, {} twice, {} lost; first run {:?} \
         after the sentinel switch, slowest pickup of a job enqueued after it {:?}; queue {:?}; \
         enqueue errors {:?}",
        enqueued.len(),
        runs.len(),
        ran.len(),
        twice.len(),
        lost.len(),
        first_run_after,
        slowest_pickup,
        counts,
        enqueue_errors.lock().unwrap()
    );
    if slowest_pickup.is_none_or(|d| d > RECOVERY + SLACK) {
        failures.push(format!(
            "jobs: a job enqueued after the switch waited {slowest_pickup:?} for the worker"
        ));
    }
    if !twice.is_empty() || !lost.is_empty() {
        failures.push(format!("jobs: ran twice {twice:?}, lost {lost:?}"));
    }
    if counts.active + counts.ready + counts.scheduled > 0 {
        failures.push(format!("jobs: stranded {counts:?}"));
    }

    worker.shutdown().await.unwrap();
    app.stop().await;
    if !failures.is_empty() {
        eprintln!(
            "sentinel log:\n{}",
            group
                .log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
