//! The conformance suite: every check written once, run on every backend.
#![allow(dead_code, unreachable_pub)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use redtower_jobs::{
    Backoff, EventKind, Job, JobContext, JobError, JobId, JobState, Outcome, Queue, QueueStore,
    Retention, Worker,
    store::{Lease, NewJob, Settle, Settled, WorkRequest},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub to: String,
}

impl Job for Welcome {
    const NAME: &'static str = "welcome";
}

pub type Store = Arc<dyn QueueStore>;

const LEASE: Duration = Duration::from_secs(30);

fn queue(store: &Store, name: &str) -> Queue<Welcome> {
    Queue::from_arc(store.clone(), name)
}

fn w(to: &str) -> Welcome {
    Welcome { to: to.into() }
}

async fn fetch(store: &Store, q: &str, n: usize) -> Vec<redtower_jobs::store::Fetched> {
    store
        .work(q, WorkRequest::new(vec![], n, LEASE))
        .await
        .unwrap()
        .jobs
}

async fn settle(store: &Store, q: &str, lease: Lease, s: Settle) -> Settled {
    store
        .work(q, WorkRequest::new(vec![(lease, s)], 0, LEASE))
        .await
        .unwrap()
        .settled[0]
}

pub async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A delayed job is scheduled at add time + delay (store clock) and never handed out early.
pub async fn delay_is_honoured(store: Store, q: &str) {
    let queue = queue(&store, q);
    let id = queue
        .add(w("a"))
        .delay(Duration::from_millis(500))
        .await
        .unwrap();
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Scheduled);
    assert_eq!(info.due_at_ms, Some(info.created_at_ms + 500));
    assert!(
        fetch(&store, q, 10).await.is_empty(),
        "fetched before its delay"
    );
    assert_eq!(queue.counts().await.unwrap().scheduled, 1);
    let mut got = Vec::new();
    while got.is_empty() {
        tokio::time::sleep(Duration::from_millis(25)).await;
        got = fetch(&store, q, 10).await;
    }
    assert_eq!(got[0].lease.id, id);
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Active);
    let started = info.started_at_ms.unwrap();
    assert!(
        started >= info.created_at_ms + 500,
        "started {started} before due"
    );
}

/// Failed attempts back off exactly as configured, and the last one makes the job dead with
/// its error.
pub async fn attempts_and_backoff_schedule(store: Store, q: &str) {
    let queue = queue(&store, q);
    let backoff = Backoff::exponential(Duration::from_millis(200));
    let id = queue
        .add(w("b"))
        .attempts(3)
        .backoff(backoff)
        .await
        .unwrap();
    for attempt in 1..=3u32 {
        let mut jobs = Vec::new();
        while jobs.is_empty() {
            jobs = fetch(&store, q, 1).await;
            if jobs.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let job = jobs.remove(0);
        assert_eq!(job.attempt, attempt);
        assert_eq!(job.max_attempts, 3);
        let delay = job.backoff.delay(attempt);
        let s = settle(
            &store,
            q,
            job.lease,
            Settle::Retry {
                delay,
                error: format!("boom {attempt}"),
            },
        )
        .await;
        let info = queue.get(&id).await.unwrap().unwrap();
        if attempt < 3 {
            assert_eq!(s, Settled::Retrying);
            assert_eq!(info.state, JobState::Scheduled);
            let gap = info.due_at_ms.unwrap() - info.started_at_ms.unwrap();
            let want = 200 * 2u64.pow(attempt - 1);
            assert!(
                gap >= want && gap < want + 1_000,
                "attempt {attempt}: due {gap} ms after start, want {want}"
            );
            assert_eq!(
                info.last_error.as_deref(),
                Some(format!("boom {attempt}").as_str())
            );
        } else {
            assert_eq!(s, Settled::Dead);
            assert_eq!(info.state, JobState::Dead);
            assert_eq!(info.attempts_made, 3);
            assert_eq!(info.last_error.as_deref(), Some("boom 3"));
        }
    }
    let c = queue.counts().await.unwrap();
    assert_eq!((c.scheduled, c.ready, c.active, c.dead), (0, 0, 0, 1));
}

/// The same schedule through a real worker: attempts start no earlier than their backoff, hooks
/// see each failure, the job ends dead.
pub async fn worker_retries_then_dead(store: Store, q: &str) {
    let queue = queue(&store, q);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let s2 = starts.clone();
    let f2 = failed.clone();
    let worker = Worker::from_arc(store.clone(), q)
        .poll_interval(Duration::from_millis(200))
        .handle::<Welcome>(move |_job: Welcome, ctx: JobContext| {
            let starts = s2.clone();
            async move {
                starts
                    .lock()
                    .unwrap()
                    .push((ctx.attempt(), tokio::time::Instant::now()));
                Err::<(), _>(JobError::retry(format!("smtp down {}", ctx.attempt())))
            }
        })
        .on_failed(move |f| {
            let failed = f2.clone();
            async move { failed.lock().unwrap().push((f.attempt, f.outcome.clone())) }
        })
        .start();
    let id = queue
        .add(w("c"))
        .attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(150)))
        .await
        .unwrap();
    wait_for("dead", || async { queue.counts().await.unwrap().dead == 1 }).await;
    wait_for("hooks", || async { failed.lock().unwrap().len() == 3 }).await;
    worker.shutdown().await.unwrap();
    let starts = starts.lock().unwrap().clone();
    assert_eq!(
        starts.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(starts[1].1 - starts[0].1 >= Duration::from_millis(150));
    assert!(starts[2].1 - starts[1].1 >= Duration::from_millis(300));
    let mut failed = failed.lock().unwrap().clone();
    failed.sort_by_key(|f| f.0);
    assert_eq!(
        failed,
        vec![
            (
                1,
                Outcome::Retrying {
                    error: "smtp down 1".into(),
                    delay: Duration::from_millis(150)
                }
            ),
            (
                2,
                Outcome::Retrying {
                    error: "smtp down 2".into(),
                    delay: Duration::from_millis(300)
                }
            ),
            (
                3,
                Outcome::Dead {
                    error: "smtp down 3".into()
                }
            ),
        ]
    );
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Dead);
    assert_eq!(info.last_error.as_deref(), Some("smtp down 3"));
}

/// Lower priority values run first; equal priorities run in insertion order.
pub async fn priorities(store: Store, q: &str) {
    let queue = queue(&store, q);
    let a = queue.add(w("p5")).priority(5).await.unwrap();
    let b = queue.add(w("p0-first")).await.unwrap();
    let c = queue.add(w("p3")).priority(3).await.unwrap();
    let d = queue.add(w("p0-second")).priority(0).await.unwrap();
    let order: Vec<JobId> = fetch(&store, q, 10)
        .await
        .into_iter()
        .map(|j| j.lease.id)
        .collect();
    assert_eq!(order, vec![b, d, c, a]);
}

/// A dedup key returns the unfinished job's id; once it finished, a new job is added.
pub async fn dedup(store: Store, q: &str) {
    let queue = queue(&store, q);
    let first = queue.add(w("x")).unique("user-1").await.unwrap();
    let again = queue.add(w("y")).unique("user-1").await.unwrap();
    assert_eq!(first, again);
    let other = queue.add(w("z")).unique("user-2").await.unwrap();
    assert_ne!(first, other);
    assert_eq!(queue.counts().await.unwrap().ready, 2);
    let bulk = queue
        .add_bulk([
            (w("b1"), redtower_jobs::JobOptions::new().unique("user-1")),
            (w("b2"), redtower_jobs::JobOptions::new().unique("user-3")),
            (w("b3"), redtower_jobs::JobOptions::new().unique("user-3")),
        ])
        .await
        .unwrap();
    assert_eq!(bulk[0], first);
    assert_eq!(bulk[1], bulk[2]);
    assert_eq!(queue.counts().await.unwrap().ready, 3);
    for job in fetch(&store, q, 10).await {
        assert_eq!(
            settle(&store, q, job.lease, Settle::Complete).await,
            Settled::Completed
        );
    }
    let fresh = queue.add(w("x2")).unique("user-1").await.unwrap();
    assert_ne!(fresh, first);
}

/// Completed and dead jobs are trimmed by count and by age.
pub async fn retention(store: Store, q: &str) {
    let queue = queue(&store, q);
    let keep2 = Retention {
        completed_count: 2,
        completed_age: Duration::from_secs(3600),
        dead_count: 1,
        dead_age: Duration::from_millis(300),
    };
    let ids = queue
        .add_bulk((0..5).map(|i| (w(&i.to_string()), Default::default())))
        .await
        .unwrap();
    let jobs = store
        .work(q, WorkRequest::new(vec![], 5, LEASE))
        .await
        .unwrap()
        .jobs;
    let settle_all = jobs
        .into_iter()
        .map(|j| (j.lease, Settle::Complete))
        .collect();
    store
        .work(q, WorkRequest::new(settle_all, 0, LEASE).retention(keep2))
        .await
        .unwrap();
    let c = queue.counts().await.unwrap();
    assert_eq!(c.completed, 2);
    assert!(
        queue.get(&ids[0]).await.unwrap().is_none(),
        "oldest completed job kept"
    );
    assert_eq!(
        queue.get(&ids[4]).await.unwrap().unwrap().state,
        JobState::Completed
    );
    let done: Vec<JobId> = queue
        .list(JobState::Completed, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(done.len(), 2);
    assert!(done.contains(&ids[4]) && done.contains(&ids[3]));

    // Dead: by count, then by age.
    let dead_ids = queue
        .add_bulk((0..2).map(|i| (w(&format!("d{i}")), Default::default())))
        .await
        .unwrap();
    for job in store
        .work(q, WorkRequest::new(vec![], 1, LEASE))
        .await
        .unwrap()
        .jobs
    {
        store
            .work(
                q,
                WorkRequest::new(
                    vec![(job.lease, Settle::Fail { error: "x".into() })],
                    0,
                    LEASE,
                )
                .retention(keep2),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for job in store
        .work(q, WorkRequest::new(vec![], 1, LEASE))
        .await
        .unwrap()
        .jobs
    {
        store
            .work(
                q,
                WorkRequest::new(
                    vec![(job.lease, Settle::Fail { error: "y".into() })],
                    0,
                    LEASE,
                )
                .retention(keep2),
            )
            .await
            .unwrap();
    }
    assert_eq!(queue.counts().await.unwrap().dead, 1);
    assert!(queue.get(&dead_ids[0]).await.unwrap().is_none());
    assert_eq!(
        queue
            .get(&dead_ids[1])
            .await
            .unwrap()
            .unwrap()
            .last_error
            .as_deref(),
        Some("y")
    );

    // Count 0: deleted at once.
    let none = Retention {
        completed_count: 0,
        ..Retention::default()
    };
    let id = queue.add(w("gone")).await.unwrap();
    let job = fetch(&store, q, 1).await.remove(0);
    store
        .work(
            q,
            WorkRequest::new(vec![(job.lease, Settle::Complete)], 0, LEASE).retention(none),
        )
        .await
        .unwrap();
    assert!(queue.get(&id).await.unwrap().is_none());
}

/// A paused queue hands out nothing; resume restores it. Workers pick up after resume.
pub async fn pause_resume(store: Store, q: &str) {
    let queue = queue(&store, q);
    queue.pause().await.unwrap();
    let id = queue.add(w("p")).await.unwrap();
    assert!(queue.counts().await.unwrap().paused);
    assert!(fetch(&store, q, 5).await.is_empty());
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = done.clone();
    let worker = Worker::from_arc(store.clone(), q)
        .poll_interval(Duration::from_millis(100))
        .handle::<Welcome>(|_j: Welcome, _c: JobContext| async { Ok(()) })
        .on_completed(move |f| {
            let d = d2.clone();
            async move { d.lock().unwrap().push(f.id) }
        })
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(done.lock().unwrap().is_empty(), "ran while paused");
    assert_eq!(queue.counts().await.unwrap().ready, 1);
    queue.resume().await.unwrap();
    assert!(!queue.counts().await.unwrap().paused);
    wait_for("completion after resume", || async {
        done.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(done.lock().unwrap()[0], id);
    worker.shutdown().await.unwrap();
}

/// Admin: counts, get, list by state, retry dead, remove.
pub async fn admin(store: Store, q: &str) {
    let queue = queue(&store, q);
    let ready = queue.add(w("r")).await.unwrap();
    let sched = queue
        .add(w("s"))
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    let active = queue.add(w("a")).priority(1).await.unwrap();
    let dead = queue.add(w("d")).priority(2).await.unwrap();
    // Fetch: ready (prio 0) first; take 3 and put `ready` back.
    let jobs = fetch(&store, q, 3).await;
    assert_eq!(
        jobs.iter().map(|j| j.lease.id.clone()).collect::<Vec<_>>(),
        vec![ready.clone(), active.clone(), dead.clone()]
    );
    assert_eq!(
        settle(&store, q, jobs[0].lease.clone(), Settle::Release).await,
        Settled::Released
    );
    assert_eq!(
        settle(
            &store,
            q,
            jobs[2].lease.clone(),
            Settle::Fail {
                error: "bad address".into()
            }
        )
        .await,
        Settled::Dead
    );
    let c = queue.counts().await.unwrap();
    assert_eq!(
        (c.scheduled, c.ready, c.active, c.completed, c.dead),
        (1, 1, 1, 0, 1)
    );
    for (id, st) in [
        (&ready, JobState::Ready),
        (&sched, JobState::Scheduled),
        (&active, JobState::Active),
        (&dead, JobState::Dead),
    ] {
        let info = queue.get(id).await.unwrap().unwrap();
        assert_eq!(info.state, st, "job {id}");
        assert_eq!(info.decode::<Welcome>().unwrap().to.len(), 1);
    }
    // A released job does not use an attempt.
    assert_eq!(queue.get(&ready).await.unwrap().unwrap().attempts_made, 0);
    assert_eq!(
        queue.list(JobState::Dead, 0, 10).await.unwrap()[0]
            .last_error
            .as_deref(),
        Some("bad address")
    );
    assert_eq!(
        queue.list(JobState::Scheduled, 0, 10).await.unwrap()[0].id,
        sched
    );
    assert_eq!(
        queue.list(JobState::Active, 0, 10).await.unwrap()[0].id,
        active
    );
    assert!(queue.get(&JobId::new("999999")).await.unwrap().is_none());
    // Retry dead.
    assert!(!queue.retry_dead(&ready).await.unwrap());
    assert!(queue.retry_dead(&dead).await.unwrap());
    let info = queue.get(&dead).await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts_made), (JobState::Ready, 0));
    // Remove (the active job's worker is fenced out).
    assert!(queue.remove(&active).await.unwrap());
    assert!(!queue.remove(&active).await.unwrap());
    assert_eq!(
        settle(&store, q, jobs[1].lease.clone(), Settle::Complete).await,
        Settled::Stale
    );
    assert!(queue.remove(&sched).await.unwrap());
    let c = queue.counts().await.unwrap();
    assert_eq!(
        (c.scheduled, c.ready, c.active, c.completed, c.dead),
        (0, 2, 0, 0, 0)
    );
}

/// An expired lease returns the job (attempt not used, stall counted); the old token is fenced.
pub async fn lease_expiry_and_fencing(store: Store, q: &str) {
    let queue = queue(&store, q);
    let id = queue.add(w("l")).await.unwrap();
    let short = Duration::from_millis(200);
    let first = store
        .work(q, WorkRequest::new(vec![], 1, short))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(first.attempt, 1);
    // Extension keeps it while held.
    assert!(
        store
            .extend(q, vec![first.lease.clone()], short)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = store
        .work(q, WorkRequest::new(vec![], 1, LEASE))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(second.lease.id, id);
    assert_ne!(second.lease.token, first.lease.token);
    assert_eq!(second.attempt, 1, "a lost lease must not use an attempt");
    assert_eq!(queue.get(&id).await.unwrap().unwrap().stalls, 1);
    assert_eq!(
        store
            .extend(q, vec![first.lease.clone()], LEASE)
            .await
            .unwrap(),
        vec![id.clone()]
    );
    assert_eq!(
        settle(&store, q, first.lease, Settle::Complete).await,
        Settled::Stale
    );
    assert_eq!(
        settle(&store, q, second.lease.clone(), Settle::Complete).await,
        Settled::Completed
    );
    assert_eq!(
        settle(&store, q, second.lease, Settle::Complete).await,
        Settled::Stale
    );
    let c = queue.counts().await.unwrap();
    assert_eq!((c.active, c.completed), (0, 1));
}

/// A payload that does not deserialize is dead at once with a clear error.
pub async fn bad_payload_is_dead(store: Store, q: &str) {
    let queue = queue(&store, q);
    let mut job = NewJob::new(Welcome::NAME, "{\"not\":\"a welcome\"}");
    job.max_attempts = 5;
    let id = store.enqueue(q, vec![job]).await.unwrap()[0].id().clone();
    let worker = Worker::from_arc(store.clone(), q)
        .poll_interval(Duration::from_millis(100))
        .handle::<Welcome>(|_j: Welcome, _c: JobContext| async { Ok(()) })
        .start();
    wait_for("dead", || async { queue.counts().await.unwrap().dead == 1 }).await;
    worker.shutdown().await.unwrap();
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.attempts_made, 1);
    let err = info.last_error.unwrap();
    assert!(
        err.contains("does not deserialize as job `welcome`"),
        "{err}"
    );
}

/// The events stream reports additions and outcomes.
pub async fn events(store: Store, q: &str) {
    let queue = queue(&store, q);
    let mut events = queue.events().await.unwrap();
    let id = queue.add(w("e")).await.unwrap();
    let job = fetch(&store, q, 1).await.remove(0);
    settle(
        &store,
        q,
        job.lease,
        Settle::Fail {
            error: "nope".into(),
        },
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.id == id {
            seen.push((ev.kind, ev.error));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventKind::Added, None),
            (EventKind::Dead, Some("nope".into()))
        ]
    );
}

/// An oversize payload is rejected at add, before anything is stored.
pub async fn oversize_payload_rejected(store: Store, q: &str) {
    let queue = queue(&store, q).max_payload(1024);
    let err = queue.add(w(&"x".repeat(2000))).await.unwrap_err();
    assert!(
        matches!(
            err,
            redtower_jobs::Error::PayloadTooLarge { limit: 1024, .. }
        ),
        "{err}"
    );
    assert_eq!(queue.counts().await.unwrap().ready, 0);
    assert!(queue.add(w("small")).await.is_ok());
}

/// Graceful shutdown: unfinished jobs are handed back at once, not after their lease.
pub async fn shutdown_hands_jobs_back(store: Store, q: &str) {
    let queue = queue(&store, q);
    let worker = Worker::from_arc(store.clone(), q)
        .grace(Duration::from_millis(100))
        .lease(Duration::from_secs(60))
        .poll_interval(Duration::from_millis(100))
        .handle::<Welcome>(|_j: Welcome, _c: JobContext| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
        .start();
    let id = queue.add(w("slow")).await.unwrap();
    wait_for("active", || async {
        queue.counts().await.unwrap().active == 1
    })
    .await;
    let report = worker.shutdown().await.unwrap();
    assert_eq!(report.released, 1);
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts_made), (JobState::Ready, 0));
    let again = fetch(&store, q, 1).await;
    assert_eq!(again[0].lease.id, id);
    assert_eq!(again[0].attempt, 1, "a released attempt is not counted");
}

/// Per-job timeout cancels the handler's future; panics become failures.
pub async fn timeout_and_panic(store: Store, q: &str) {
    let queue = queue(&store, q);
    let dropped = Arc::new(Mutex::new(0));
    struct OnDrop(Arc<Mutex<u32>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            *self.0.lock().unwrap() += 1;
        }
    }
    let d2 = dropped.clone();
    let worker = Worker::from_arc(store.clone(), q)
        .timeout(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .handle::<Welcome>(move |j: Welcome, _c: JobContext| {
            let guard = OnDrop(d2.clone());
            async move {
                let _guard = guard;
                if j.to == "panic" {
                    panic!("kaboom");
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
        })
        .start();
    let slow = queue.add(w("slow")).attempts(1).await.unwrap();
    let boom = queue.add(w("panic")).attempts(1).await.unwrap();
    wait_for("both dead", || async {
        queue.counts().await.unwrap().dead == 2
    })
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(
        *dropped.lock().unwrap(),
        2,
        "handler futures must be dropped"
    );
    let e = queue.get(&slow).await.unwrap().unwrap().last_error.unwrap();
    assert!(e.contains("timed out after 200ms"), "{e}");
    let e = queue.get(&boom).await.unwrap().unwrap().last_error.unwrap();
    assert!(e.contains("handler panicked: kaboom"), "{e}");
}

/// An idle worker (poll interval 5 s) is woken by the store's signal: new jobs run at once and
/// delayed jobs run when due, not early and not at the next poll.
pub async fn idle_worker_wakes_for_new_and_delayed_jobs(store: Store, q: &str) {
    let queue = queue(&store, q);
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = done.clone();
    let worker = Worker::from_arc(store.clone(), q)
        .handle::<Welcome>(|_j: Welcome, _c: JobContext| async { Ok(()) })
        .on_completed(move |f| {
            let d = d2.clone();
            async move {
                d.lock().unwrap().push((
                    f.decode::<Welcome>().unwrap().to,
                    tokio::time::Instant::now(),
                ))
            }
        })
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await; // idle, blocked on the signal
    let t = tokio::time::Instant::now();
    queue.add(w("now")).await.unwrap();
    wait_for("immediate job", || async {
        done.lock().unwrap().len() == 1
    })
    .await;
    let took = done.lock().unwrap()[0].1 - t;
    assert!(
        took < Duration::from_secs(2),
        "new job waited {took:?} (poll is 5 s)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = tokio::time::Instant::now();
    queue
        .add(w("later"))
        .delay(Duration::from_millis(400))
        .await
        .unwrap();
    wait_for("delayed job", || async { done.lock().unwrap().len() == 2 }).await;
    let took = done.lock().unwrap()[1].1 - t;
    assert!(
        took >= Duration::from_millis(400),
        "delayed job ran early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2_500),
        "delayed job ran late: {took:?}"
    );
    worker.shutdown().await.unwrap();
}

/// Instantiates every conformance check as a test for one backend.
#[macro_export]
macro_rules! conformance_tests {
    ($attr:meta, $make:path) => {
        $crate::conformance_tests!(@each $attr, $make, [
            delay_is_honoured, attempts_and_backoff_schedule, worker_retries_then_dead,
            priorities, dedup, retention, pause_resume, admin, lease_expiry_and_fencing,
            bad_payload_is_dead, events, oversize_payload_rejected, shutdown_hands_jobs_back,
            timeout_and_panic, idle_worker_wakes_for_new_and_delayed_jobs
        ]);
    };
    (@each $attr:meta, $make:path, [$($check:ident),*]) => {
        $(
            #[$attr]
            async fn $check() {
                let store = $make(stringify!($check)).await;
                $crate::conformance::$check(store, stringify!($check)).await;
            }
        )*
    };
}
