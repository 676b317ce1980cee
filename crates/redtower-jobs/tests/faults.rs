//! Retry safety, proved with real network faults: every state-changing jobs script run through
//! a [`FaultProxy`] that loses its reply once (the script runs in Redis, the reply never
//! arrives, the client re-sends), and the outcome checked to have happened exactly once. Plus
//! bad records in Redis, which affect their own job only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::interfaces::HashesInterface;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{
    Backoff, Enqueued, Job, JobContext, JobError, JobId, JobState, NewJob, Outcome, Queue,
    QueueStore, RedisStore, Retention, Settle, Settled, WorkRequest, Worker,
};
use redtower_testkit::{FaultProxy, unique_prefix};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Task {
    n: u32,
    fail: bool,
}

impl Job for Task {
    const NAME: &'static str = "task";
}

const LEASE: Duration = Duration::from_secs(30);

struct Rig {
    proxy: FaultProxy,
    /// Through the proxy.
    store: RedisStore,
    /// Straight to Redis, for checking.
    direct: RedisStore,
}

async fn connect(url: &str, prefix: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    redis
}

/// A store through a fault proxy, with every script loaded (so a lost reply is a script's).
async fn rig(test: &str) -> Rig {
    let server = redtower_testkit::shared();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let prefix = unique_prefix(test);
    let store = RedisStore::new(connect(&proxy.url(), &prefix).await);
    let direct = RedisStore::new(connect(&server.url(), &prefix).await);
    // Warm-up on a queue of its own: loads every script.
    store
        .enqueue("warm", vec![NewJob::new("task", "{}")])
        .await
        .unwrap();
    let job = store
        .work("warm", WorkRequest::new(vec![], 1, LEASE))
        .await
        .unwrap()
        .jobs
        .remove(0);
    store.extend("warm", vec![job.lease], LEASE).await.unwrap();
    store.counts("warm").await.unwrap();
    Rig {
        proxy,
        store,
        direct,
    }
}

fn new_job(n: u32) -> NewJob {
    NewJob::new(
        "task",
        serde_json::to_string(&Task { n, fail: false }).unwrap(),
    )
}

/// ENQUEUE: the reply of an add is lost, the client re-sends it: one job, and the re-send is
/// answered with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_enqueue_reply_adds_one_job() {
    let rig = rig("lost-enqueue").await;
    rig.proxy.lose_next_reply();
    let out = rig.store.enqueue("q", vec![new_job(1)]).await.unwrap();
    assert_eq!(rig.proxy.lost_replies(), 1);
    assert!(
        matches!(out[0], Enqueued::Existing(_)),
        "the re-sent script found the first job: {out:?}"
    );
    let c = rig.direct.counts("q").await.unwrap();
    assert_eq!(c.ready, 1, "one job: {c:?}");
    let ready = rig.direct.list("q", JobState::Ready, 0, 10).await.unwrap();
    assert_eq!(&ready[0].id, out[0].id());

    // A batch of 100, the same way.
    rig.proxy.lose_next_reply();
    let batch: Vec<NewJob> = (0..100).map(new_job).collect();
    let out = rig.store.enqueue("q", batch).await.unwrap();
    assert_eq!(rig.proxy.lost_replies(), 2);
    // A request this large spans several TCP chunks: the proxy may cut the connection before
    // Redis has all of it (then the re-send is the first run). Either way, one batch: all new
    // or all found again.
    let kinds: Vec<bool> = out
        .iter()
        .map(|e| matches!(e, Enqueued::Existing(_)))
        .collect();
    eprintln!(
        "batch of 100 after a lost reply: found again = {}",
        kinds[0]
    );
    assert!(kinds.iter().all(|k| *k == kinds[0]), "{out:?}");
    let mut ids: Vec<JobId> = out.iter().map(|e| e.id().clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    assert_eq!(rig.direct.counts("q").await.unwrap().ready, 101);

    // Through the typed API, a caller's own retry with its key: one job.
    let queue = Queue::<Task>::new(rig.store.clone(), "typed");
    rig.proxy.lose_next_reply();
    let id = queue
        .add(Task { n: 7, fail: false })
        .idempotency_key("order-7")
        .await
        .unwrap();
    let again = queue
        .add(Task { n: 7, fail: false })
        .idempotency_key("order-7")
        .await
        .unwrap();
    assert_eq!(id, again);
    assert_eq!(rig.direct.counts("typed").await.unwrap().ready, 1);
}

/// WORK: a fetch whose reply is lost hands over the same jobs when re-sent (nothing
/// stranded); a settlement whose reply is lost is reported as done by this lease (not stale)
/// and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_work_replies_settle_once_and_strand_nothing() {
    let rig = rig("lost-work").await;
    rig.direct
        .enqueue("q", (0..3).map(new_job).collect())
        .await
        .unwrap();

    rig.proxy.lose_next_reply();
    let reply = rig
        .store
        .work("q", WorkRequest::new(vec![], 2, LEASE))
        .await
        .unwrap();
    assert_eq!(rig.proxy.lost_replies(), 1);
    assert_eq!(reply.jobs.len(), 2);
    let c = rig.direct.counts("q").await.unwrap();
    assert_eq!(
        (c.ready, c.active),
        (1, 2),
        "every leased job is one the worker got: {c:?}"
    );

    let (a, b) = (reply.jobs[0].lease.clone(), reply.jobs[1].lease.clone());
    rig.proxy.lose_next_reply();
    let settled = rig
        .store
        .work(
            "q",
            WorkRequest::new(
                vec![
                    (a, Settle::Complete),
                    (
                        b.clone(),
                        Settle::Retry {
                            delay: Duration::from_secs(60),
                            error: "boom".into(),
                        },
                    ),
                ],
                0,
                LEASE,
            ),
        )
        .await
        .unwrap()
        .settled;
    assert_eq!(rig.proxy.lost_replies(), 2);
    assert_eq!(settled, vec![Settled::Completed, Settled::Retrying]);
    let c = rig.direct.counts("q").await.unwrap();
    assert_eq!((c.completed, c.scheduled, c.active), (1, 1, 0));
    let job = rig.direct.get("q", &b.id).await.unwrap().unwrap();
    assert_eq!(job.attempts_made, 1, "the failure counted once");
}

/// SCHEDULE upsert: the reply of an upsert that added the first tick's job is lost, the client
/// re-sends it: the re-send is answered from the call's marker (`true`, as the first run
/// answered), one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_upsert_reply_adds_one_first_job() {
    let rig = rig("lost-upsert").await;
    let queue = Queue::<Task>::new(rig.store.clone(), "sched");
    let every = || redtower_jobs::Schedule::every(Duration::from_secs(3600));
    // Loads the schedule script (a lost reply must be the script's, not a NOSCRIPT retry).
    Queue::<Task>::new(rig.store.clone(), "warm-sched")
        .schedule("w", every(), Task { n: 0, fail: false })
        .await
        .unwrap();
    rig.proxy.lose_next_reply();
    let changed = queue
        .schedule("s", every(), Task { n: 1, fail: false })
        .await
        .unwrap();
    assert_eq!(rig.proxy.lost_replies(), 1);
    assert!(changed, "the re-send answers as the first run did");
    assert_eq!(rig.direct.counts("sched").await.unwrap().ready, 1);
    let list = queue.schedulers().await.unwrap();
    assert_eq!((list.len(), list[0].count), (1, 1));
}

/// EXTEND and the admin operations: a lost reply and a re-send leave the state of one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_extend_and_admin_replies() {
    let rig = rig("lost-admin").await;
    rig.direct
        .enqueue("q", (0..3).map(new_job).collect())
        .await
        .unwrap();
    let jobs = rig
        .store
        .work("q", WorkRequest::new(vec![], 2, LEASE))
        .await
        .unwrap()
        .jobs;

    rig.proxy.lose_next_reply();
    let lost = rig
        .store
        .extend("q", vec![jobs[0].lease.clone()], LEASE)
        .await
        .unwrap();
    assert_eq!(rig.proxy.lost_replies(), 1);
    assert!(lost.is_empty(), "the lease is still held");

    // Dead, then retried through a lost reply: back in ready once.
    let settled = rig
        .direct
        .work(
            "q",
            WorkRequest::new(
                vec![(
                    jobs[0].lease.clone(),
                    Settle::Fail {
                        error: "bad".into(),
                    },
                )],
                0,
                LEASE,
            ),
        )
        .await
        .unwrap()
        .settled;
    assert_eq!(settled, vec![Settled::Dead]);
    rig.proxy.lose_next_reply();
    rig.store.retry_dead("q", &jobs[0].lease.id).await.unwrap();
    assert_eq!(rig.proxy.lost_replies(), 2);
    let c = rig.direct.counts("q").await.unwrap();
    assert_eq!((c.dead, c.ready, c.active), (0, 2, 1), "{c:?}");

    rig.proxy.lose_next_reply();
    rig.store.remove("q", &jobs[1].lease.id).await.unwrap();
    assert_eq!(rig.proxy.lost_replies(), 3);
    assert!(
        rig.direct
            .get("q", &jobs[1].lease.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(rig.direct.counts("q").await.unwrap().active, 0);

    rig.proxy.lose_next_reply();
    rig.store.set_paused("q", true).await.unwrap();
    assert!(rig.direct.counts("q").await.unwrap().paused);
    rig.proxy.lose_next_reply();
    rig.store.set_paused("q", false).await.unwrap();
    assert!(!rig.direct.counts("q").await.unwrap().paused);
    assert_eq!(rig.proxy.lost_replies(), 5);
}

/// A worker whose exchanges lose replies (one in five) runs every job once and calls its
/// completion and failure hooks once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_hooks_run_once_when_replies_are_lost() {
    let rig = rig("lost-hooks").await;
    let jobs: Vec<NewJob> = (0..200u32)
        .map(|n| {
            NewJob::new(
                "task",
                serde_json::to_string(&Task {
                    n,
                    fail: n % 2 == 1,
                })
                .unwrap(),
            )
        })
        .collect();
    rig.direct.enqueue("q", jobs).await.unwrap();

    let runs = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
    let hooks = Arc::new(Mutex::new(HashMap::<u32, Vec<bool>>::new()));
    let (r, h1, h2) = (runs.clone(), hooks.clone(), hooks.clone());
    let record = |hooks: &Arc<Mutex<HashMap<u32, Vec<bool>>>>, f: &redtower_jobs::Finished| {
        let task = f.decode::<Task>().unwrap();
        hooks
            .lock()
            .unwrap()
            .entry(task.n)
            .or_default()
            .push(f.outcome == Outcome::Completed);
    };
    rig.proxy.lose_replies(1, 5);
    // Small batches: many exchanges, so that replies are lost on some of them.
    let worker = Worker::new(rig.store.clone(), "q")
        .concurrency(5)
        .retention(Retention {
            completed_count: 10_000,
            dead_count: 10_000,
            ..Retention::default()
        })
        .handle::<Task>(move |t: Task, _ctx: JobContext| {
            let r = r.clone();
            async move {
                *r.lock().unwrap().entry(t.n).or_default() += 1;
                if t.fail {
                    Err(JobError::fatal("refused"))
                } else {
                    Ok(())
                }
            }
        })
        .on_completed(move |f| {
            let h = h1.clone();
            async move { record(&h, &f) }
        })
        .on_failed(move |f| {
            let h = h2.clone();
            async move { record(&h, &f) }
        })
        .start();

    for _ in 0..3000 {
        if hooks.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 200 {
            break;
        }
        // Enough faults to prove the point; the rest runs on a clean network (each lost reply
        // costs a reconnect).
        if rig.proxy.lost_replies() >= 12 {
            rig.proxy.lose_replies(0, 0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.proxy.lose_replies(0, 0);
    worker.shutdown().await.unwrap();
    let lost = rig.proxy.lost_replies();
    eprintln!("worker through lost replies: 200 jobs, {lost} replies lost");
    assert!(lost > 0, "the proxy lost replies");

    let runs = runs.lock().unwrap().clone();
    let hooks = hooks.lock().unwrap().clone();
    for n in 0..200u32 {
        assert_eq!(runs.get(&n), Some(&1), "job {n} ran once");
        let want = vec![n % 2 == 0];
        assert_eq!(hooks.get(&n), Some(&want), "job {n}: one hook call");
    }
    let c = rig.direct.counts("q").await.unwrap();
    assert_eq!((c.completed, c.dead, c.ready, c.active), (100, 100, 0, 0));
}

/// Bad records in Redis (not JSON, a field out of range, a negative backoff, an absurd jitter)
/// affect their own job only: it is dead with the reason; the other jobs of the batch run and
/// the worker keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_affect_their_job_only() {
    let prefix = unique_prefix("bad-records");
    let redis = connect(&redtower_testkit::shared_url(), &prefix).await;
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<Task>::new(store.clone(), "q");
    let jobs_key = redis
        .keyspace()
        .namespace("q")
        .key("q")
        .push("jobs")
        .into_string();

    let mut ids = Vec::new();
    for n in 0..8u32 {
        let retry = Backoff::fixed(Duration::from_millis(10));
        ids.push(
            queue
                .add(Task { n, fail: n == 6 })
                .backoff(retry)
                .await
                .unwrap(),
        );
    }
    // A job promoted from the schedule with a bad record.
    let late = queue
        .add(Task { n: 8, fail: false })
        .delay(Duration::from_millis(200))
        .await
        .unwrap();
    let corrupt = |id: &JobId, raw: String| {
        let redis = redis.clone();
        let key = jobs_key.clone();
        let id = id.to_string();
        async move {
            redis
                .client()
                .hset::<(), _, _>(key, (id, raw))
                .await
                .unwrap();
        }
    };
    let good = |id: &JobId, n: u32, extra: &str| {
        format!(
            r#"{{"id":"{id}","seq":{id},"created":1,"name":"task","data":"{{\"n\":{n},\"fail\":{}}}","attempt":0,"max":3,"backoff":{{"k":"fixed","ms":10{extra}}},"prio":0,"stalls":0,"uniq":null}}"#,
            n == 6
        )
    };
    corrupt(&ids[1], "{not json".into()).await;
    corrupt(
        &ids[2],
        good(&ids[2], 2, "").replace(r#""attempt":0"#, r#""attempt":-1"#),
    )
    .await;
    corrupt(
        &ids[3],
        good(&ids[3], 3, "").replace(r#""ms":10"#, r#""ms":-5"#),
    )
    .await;
    corrupt(
        &ids[4],
        good(&ids[4], 4, "").replace(r#""prio":0"#, r#""prio":"x""#),
    )
    .await;
    // A jitter far out of range on a job that fails and retries: clamped, no panic.
    corrupt(&ids[6], good(&ids[6], 6, r#","j":5e300"#)).await;
    corrupt(&late, "[]".into()).await;

    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let worker = Worker::new(store.clone(), "q")
        .concurrency(10)
        .poll_interval(Duration::from_millis(50))
        .handle::<Task>(move |t: Task, ctx: JobContext| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(t.n);
                if t.fail && ctx.attempt() < 2 {
                    return Err(JobError::retry("once"));
                }
                Ok(())
            }
        })
        .start();
    let mut done = false;
    for _ in 0..1000 {
        let c = queue.counts().await.unwrap();
        if c.completed == 4 && c.dead == 5 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = queue.counts().await.unwrap();
    assert!(done, "good jobs completed, bad ones dead: {c:?}");
    // The worker keeps going.
    let after = queue.add(Task { n: 9, fail: false }).await.unwrap();
    for _ in 0..500 {
        if queue.get(&after).await.unwrap().unwrap().state == JobState::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        queue.get(&after).await.unwrap().unwrap().state,
        JobState::Completed
    );
    worker.shutdown().await.unwrap();

    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, vec![0, 5, 6, 6, 7, 9]);
    for id in [&ids[1], &ids[2], &ids[3], &ids[4], &late] {
        let job = queue.get(id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Dead, "{id}: {job:?}");
        let reason = job.last_error.unwrap_or_default();
        assert!(reason.contains("bad job record"), "{id}: {reason}");
    }
    let dead = queue.list(JobState::Dead, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 5);
}
