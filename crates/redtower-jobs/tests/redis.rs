//! The conformance suite on Redis standalone and Redis Cluster, plus Redis-specific checks.

use std::{sync::Arc, time::Duration};

use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{QueueStore, RedisStore};
use redtower_testkit::unique_prefix;

#[path = "conformance/mod.rs"]
mod conformance;

async fn connect(url: &str, test: &str) -> Arc<dyn QueueStore> {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    Arc::new(RedisStore::new(redis))
}

mod standalone {
    use super::*;

    async fn store(test: &str) -> Arc<dyn QueueStore> {
        connect(&redtower_testkit::shared_url(), test).await
    }

    conformance_tests!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        store
    );
}

mod cluster {
    use super::*;

    async fn store(test: &str) -> Arc<dyn QueueStore> {
        connect(&redtower_testkit::shared_cluster().url(), test).await
    }

    conformance_tests!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        store
    );
}

/// Every key of a queue carries the queue's hash tag, and nothing else is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_share_the_queue_tag() {
    use futures::TryStreamExt;
    use redtower_jobs::{Queue, WorkRequest};

    let prefix = unique_prefix("keys");
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_cluster().url())
            .unwrap()
            .key_prefix(prefix.clone()),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<conformance::Welcome>::new(store.clone(), "mail:{x}");
    queue
        .add(conformance::Welcome { to: "a".into() })
        .unique("k")
        .await
        .unwrap();
    queue
        .add(conformance::Welcome { to: "b".into() })
        .delay(Duration::from_secs(60))
        .await
        .unwrap();
    let jobs = store
        .work(
            "mail:{x}",
            WorkRequest::new(vec![], 1, Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 1);
    // A job scheduler and a fired tick: its keys and the tick marker share the tag too.
    queue
        .schedule(
            "every:{y}",
            redtower_jobs::Schedule::every(Duration::from_secs(3600)),
            conformance::Welcome { to: "c".into() },
        )
        .await
        .unwrap();
    // A scheduler with a start: its first tick is fired by a pass (with its tick marker).
    let now = store.time("mail:{x}").await.unwrap();
    queue
        .schedule(
            "from:{z}",
            redtower_jobs::Schedule::every(Duration::from_secs(3600))
                .start(std::time::UNIX_EPOCH + Duration::from_millis(now)),
            conformance::Welcome { to: "d".into() },
        )
        .await
        .unwrap();
    assert_eq!(queue.run_schedulers().await.unwrap().added.len(), 1);
    let keys: Vec<String> = redis
        .scan(&redis.keyspace().pattern())
        .try_collect()
        .await
        .unwrap();
    assert!(keys.len() >= 7, "{keys:?}");
    for part in [":sspec", ":snext", ":sstate", ":tick:"] {
        assert!(keys.iter().any(|k| k.contains(part)), "{part} in {keys:?}");
    }
    let tag = redis.keyspace().namespace("q").key("mail:{x}");
    for k in &keys {
        assert!(
            k.starts_with(&format!("{}:", tag.as_str())),
            "{k} outside {tag}"
        );
    }
}

/// The markers that make adds and work requests safe to re-send are bounded in time: a
/// caller's idempotency key for the store's window, an add call's answer for at most a minute,
/// a work answer for its lease (at least 10 s); after its window a key adds a new job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_markers_expire() {
    use fred::interfaces::KeysInterface;
    use futures::TryStreamExt;
    use redtower_jobs::{Queue, WorkRequest};

    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(unique_prefix("idem-expire")),
    )
    .unwrap();
    let store = RedisStore::new(redis.clone()).idempotency_window(Duration::from_secs(1));
    let queue = Queue::<conformance::Welcome>::new(store.clone(), "q");
    let w = || conformance::Welcome { to: "a".into() };
    let first = queue.add(w()).idempotency_key("k").await.unwrap();
    assert_eq!(queue.add(w()).idempotency_key("k").await.unwrap(), first);
    queue.add(w()).await.unwrap();
    store
        .work("q", WorkRequest::new(vec![], 1, Duration::from_secs(30)))
        .await
        .unwrap();

    let keys: Vec<String> = redis
        .scan(&redis.keyspace().pattern())
        .try_collect()
        .await
        .unwrap();
    let count = |part: &str| keys.iter().filter(|k| k.contains(part)).count();
    // One per keyed add, one per add call, one per work request that fetched or settled.
    assert_eq!(
        (count(":idem:"), count(":add:"), count(":x:")),
        (1, 3, 1),
        "{keys:?}"
    );
    let markers: Vec<&String> = keys
        .iter()
        .filter(|k| k.contains(":idem:") || k.contains(":add:") || k.contains(":x:"))
        .collect();
    for k in markers {
        let ttl: i64 = redis.client().pttl(k.as_str()).await.unwrap();
        assert!(ttl > 0 && ttl <= 1_000, "{k}: {ttl} ms, the 1 s window");
    }

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let again = queue.add(w()).idempotency_key("k").await.unwrap();
    assert_ne!(again, first, "past its window, the key adds a new job");

    // With the default window: a random key's marker lives at most a minute, a caller's 5 min,
    // a work answer its lease.
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<conformance::Welcome>::new(store.clone(), "q2");
    queue.add(w()).await.unwrap();
    queue.add(w()).idempotency_key("kept").await.unwrap();
    store
        .work(
            "q2",
            WorkRequest::new(vec![], 1, Duration::from_secs(30)).request_id("r"),
        )
        .await
        .unwrap();
    let ns = redis.keyspace().namespace("q").key("q2");
    let ttl = |k: String| {
        let redis = redis.clone();
        async move { redis.client().pttl::<i64, _>(k).await.unwrap() }
    };
    let kept = ttl(ns.clone().push("idem").push("kept").into_string()).await;
    assert!(kept > 60_000 && kept <= 300_000, "{kept}");
    let answer = ttl(ns.clone().push("x").push("r").into_string()).await;
    assert!(answer > 10_000 && answer <= 30_000, "{answer}");
    let keys: Vec<String> = redis
        .scan(&redis.keyspace().pattern())
        .try_collect()
        .await
        .unwrap();
    let calls: Vec<&String> = keys.iter().filter(|k| k.contains("{q2}:add:")).collect();
    assert_eq!(calls.len(), 2, "{keys:?}");
    for k in calls {
        let r = ttl(k.clone()).await;
        assert!(r > 0 && r <= 60_000, "{k}: {r}");
    }
}

/// Records written before the trace context existed (no `tc`), and records whose `tc` is not a
/// valid context (garbage, oversized, not a string), load and run like any other: the context
/// is ignored, never the job. A valid one survives the Lua rewrite of a failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_bad_trace_fields_load() {
    use fred::interfaces::HashesInterface;
    use redtower_client::TraceContext;
    use redtower_jobs::{Job, Queue, Settle, Settled, WorkRequest};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Task {
        n: u32,
    }
    impl Job for Task {
        const NAME: &'static str = "task";
    }

    let prefix = unique_prefix("trace-fields");
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(prefix),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<Task>::new(store.clone(), "q");
    let jobs_key = redis
        .keyspace()
        .namespace("q")
        .key("q")
        .push("jobs")
        .into_string();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let oversized = format!("{tp};a={}", "b".repeat(600));
    let tails = [
        String::new(),                             // an old record: no field
        r#","tc":"not a traceparent""#.to_owned(), // garbage
        format!(r#","tc":"{oversized}""#),         // over the bound
        r#","tc":42"#.to_owned(),                  // not a string
        r#","tc":null"#.to_owned(),                // null, as Lua may write it
        format!(r#","tc":"{tp};rojo=1""#),         // valid
    ];
    let mut ids = Vec::new();
    for (n, tail) in tails.iter().enumerate() {
        let id = queue.add(Task { n: n as u32 }).await.unwrap();
        let raw = format!(
            r#"{{"id":"{id}","seq":{id},"created":1,"name":"task","data":"{{\"n\":{n}}}","attempt":0,"max":3,"backoff":{{"k":"fixed","ms":10}},"prio":0,"stalls":0,"uniq":null{tail}}}"#
        );
        redis
            .client()
            .hset::<(), _, _>(jobs_key.as_str(), (id.to_string(), raw))
            .await
            .unwrap();
        ids.push(id);
    }
    let lease = Duration::from_secs(30);
    let jobs = store
        .work("q", WorkRequest::new(vec![], 10, lease))
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), tails.len());
    let valid = TraceContext::new(tp, Some("rojo=1")).unwrap();
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job.invalid, None, "job {i} decodes");
        assert_eq!(job.name, "task");
        let want = (i == tails.len() - 1).then(|| valid.clone());
        assert_eq!(job.trace, want, "job {i}");
        assert!(queue.get(&ids[i]).await.unwrap().is_some());
    }
    // Fail the valid one: the script rewrites its record (cjson), and the context stays.
    let last = jobs.last().unwrap().lease.clone();
    let retry = Settle::Retry {
        delay: Duration::ZERO,
        error: "again".into(),
    };
    let reply = store
        .work("q", WorkRequest::new(vec![(last, retry)], 0, lease))
        .await
        .unwrap();
    assert_eq!(reply.settled, vec![Settled::Retrying]);
    let again = store
        .work("q", WorkRequest::new(vec![], 10, lease))
        .await
        .unwrap()
        .jobs;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].trace.as_ref(), Some(&valid));
    // The others complete as usual.
    let done: Vec<_> = jobs[..tails.len() - 1]
        .iter()
        .map(|j| (j.lease.clone(), Settle::Complete))
        .collect();
    let reply = store
        .work("q", WorkRequest::new(done, 0, lease))
        .await
        .unwrap();
    assert!(reply.settled.iter().all(|s| *s == Settled::Completed));
}

/// Progress and results live in the queue's jobs hash next to their record (`p:<id>`,
/// `r:<id>`) and go with it: trimmed by retention, deleted by removal; nothing else is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_deleted_with_their_job() {
    use fred::interfaces::HashesInterface;
    use redtower_jobs::{JobContext, JobError, Queue, Retention, Worker};

    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(unique_prefix("outputs-trim")),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<conformance::Welcome>::new(store.clone(), "out");
    let worker = Worker::new(store, "out")
        .poll_interval(Duration::from_millis(50))
        .retention(Retention {
            completed_count: 2,
            ..Retention::default()
        })
        .handle::<conformance::Welcome>(|job: conformance::Welcome, ctx: JobContext| async move {
            ctx.progress(100).await?;
            Ok::<_, JobError>(job.to)
        })
        .start();
    let mut ids = Vec::new();
    for to in ["a", "b", "c", "d"] {
        let id = queue
            .add(conformance::Welcome { to: to.into() })
            .await
            .unwrap();
        let got: String = queue.wait(&id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(got, to);
        ids.push(id);
    }
    worker.shutdown().await.unwrap();
    assert!(queue.remove(&ids[3]).await.unwrap());
    let key = redis.keyspace().namespace("q").key("out").push("jobs");
    let mut fields: Vec<String> = redis.client().hkeys(key.as_str()).await.unwrap();
    fields.sort();
    // Only "c" is left ("a" and "b" trimmed, two kept, "d" removed): its record, progress
    // and result.
    let c = ids[2].as_str();
    let mut want = vec![c.to_owned(), format!("p:{c}"), format!("r:{c}")];
    want.sort();
    assert_eq!(fields, want);
}

/// `Queue::schedule` with `Schedule::every` and no start or end is one round trip: the script
/// takes its own time as the first tick (`FirstTick::Now`) and adds its job, so the clock is
/// not read before and no pass is needed for the first job; a cron schedule reads the clock
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_scheduler_is_one_round_trip() {
    use redtower_jobs::{Job, Queue, Schedule};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Tick;
    impl Job for Tick {
        const NAME: &'static str = "tick";
    }

    let server = redtower_testkit::RedisServer::start();
    let store = connect(&server.url(), "sched-rt").await;
    let queue = Queue::<Tick>::new(store, "sched-rt");
    // Warm the connection and load the scripts (the clock is read through the admin script).
    queue
        .schedule("warm", Schedule::every(Duration::from_secs(60)), Tick)
        .await
        .unwrap();
    let hourly = || Schedule::cron("0 0 * * * *").unwrap();
    queue.schedule("warm-cron", hourly(), Tick).await.unwrap();
    let mut monitor = server.monitor();
    assert!(
        queue
            .schedule("every", Schedule::every(Duration::from_secs(60)), Tick)
            .await
            .unwrap()
    );
    let every = monitor.take();
    assert_eq!(every.len(), 1, "one script: {every:?}");
    assert!(every[0].starts_with("\"EVALSHA\""), "{every:?}");

    assert!(queue.schedule("cron", hourly(), Tick).await.unwrap());
    let cron = monitor.take();
    assert_eq!(cron.len(), 2, "the clock, then the script: {cron:?}");
    assert!(cron[0].ends_with("\"time\""), "{cron:?}");

    // The first ticks of `every` (and of the warm-up) were added by the upserts.
    assert_eq!(queue.counts().await.unwrap().ready, 2);
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
}
