//! Queue limits (start rate, concurrency, per group), rate-limited attempts, fair groups and
//! the start-limiter hook.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use redtower_jobs::{
    JobContext, JobError, JobStart, JobState, NewJob, QueueLimits, Settle, Settled, StartDecision,
    StartLimiter, WorkRequest, Worker,
};

use super::{LEASE, Store, Welcome, fetch, queue, settle, w, wait_for};

async fn add_group(store: &Store, q: &str, group: Option<&str>, n: usize) -> Vec<String> {
    let jobs = (0..n)
        .map(|i| {
            let j = NewJob::new("welcome", format!(r#"{{"to":"{i}"}}"#));
            match group {
                Some(g) => j.group(g),
                None => j,
            }
        })
        .collect();
    store
        .enqueue(q, jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id().as_str().to_owned())
        .collect()
}

/// `JobError::rate_limited`'s settlement: the job waits for the delay in the schedule, its
/// attempt is not counted; with `pause_queue`, no other job of the queue starts meanwhile.
pub async fn rate_limited_attempt_is_not_counted(store: Store, q: &str) {
    let queue = queue(&store, q);
    let id = queue.add(w("a")).attempts(1).await.unwrap();
    let job = fetch(&store, q, 1).await.remove(0);
    let delay = Settle::Delay {
        delay: Duration::from_millis(300),
        pause_queue: false,
    };
    assert_eq!(settle(&store, q, job.lease, delay).await, Settled::Delayed);
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Scheduled);
    assert_eq!(
        info.attempts_made, 0,
        "a rate-limited attempt is not counted"
    );
    assert!(
        fetch(&store, q, 1).await.is_empty(),
        "fetched before the delay"
    );
    let mut again = Vec::new();
    while again.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        again = fetch(&store, q, 1).await;
    }
    assert_eq!(again[0].lease.id, id);
    assert_eq!(again[0].attempt, 1, "still the first attempt");

    // The whole queue waits: another ready job is not handed out before the delay ends.
    let other = queue.add(w("b")).await.unwrap();
    let hold = Settle::Delay {
        delay: Duration::from_millis(300),
        pause_queue: true,
    };
    let t0 = store.time(q).await.unwrap();
    assert_eq!(
        settle(&store, q, again.remove(0).lease, hold).await,
        Settled::Delayed
    );
    let reply = store
        .work(q, WorkRequest::new(vec![], 10, LEASE))
        .await
        .unwrap();
    let now = store.time(q).await.unwrap();
    if now < t0 + 300 {
        assert!(reply.jobs.is_empty(), "a job started while the queue waits");
        assert!(
            reply
                .next_due
                .is_some_and(|d| d <= Duration::from_millis(300)),
            "the reply says when the wait ends: {:?}",
            reply.next_due
        );
    }
    let mut got = HashSet::new();
    while got.len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for j in fetch(&store, q, 10).await {
            let started = store.time(q).await.unwrap();
            assert!(started >= t0 + 300, "started during the queue's wait");
            got.insert(j.lease.id);
        }
    }
    assert!(got.contains(&other) && got.contains(&id));
}

/// A handler's `JobError::rate_limited` through a worker: the job runs again after the delay
/// and completes although it had one attempt.
pub async fn worker_rate_limited_handler(store: Store, q: &str) {
    let queue = queue(&store, q);
    let id = queue.add(w("a")).attempts(1).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let worker = Worker::new(store.clone(), q)
        .handle::<Welcome>(move |_j: Welcome, _ctx: JobContext| {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(JobError::rate_limited(Duration::from_millis(100)).pause_queue());
                }
                Ok(())
            }
        })
        .start();
    wait_for("the job completes", || async {
        queue.get(&id).await.unwrap().unwrap().state == JobState::Completed
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    worker.shutdown().await.unwrap();
}

/// A queue's start rate holds across fetches of any worker: a burst of `max`, then one start
/// per `per / max` by the store's clock; the reply says when the next start fits.
pub async fn queue_rate_limit(store: Store, q: &str) {
    let queue = queue(&store, q);
    queue
        .set_limits(QueueLimits::new().rate(5, Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(
        queue.limits().await.unwrap().rate,
        Some((5, Duration::from_millis(500)))
    );
    add_group(&store, q, None, 12).await;
    let t0 = store.time(q).await.unwrap();
    let first = store
        .work(q, WorkRequest::new(vec![], 20, LEASE))
        .await
        .unwrap();
    assert_eq!(first.jobs.len(), 5, "the burst");
    let hint = first.next_due.expect("the next start's time");
    assert!(
        hint <= Duration::from_millis(100),
        "one start per 100 ms: {hint:?}"
    );
    // Two "workers" keep asking: starts never run ahead of the rate (by the store's clock).
    let mut started = 5;
    while started < 12 {
        for _ in 0..2 {
            let r = store
                .work(q, WorkRequest::new(vec![], 20, LEASE))
                .await
                .unwrap();
            started += r.jobs.len();
            let now = store.time(q).await.unwrap();
            let allowed = 5 + (now - t0) / 100 + 1;
            assert!(
                started as u64 <= allowed,
                "{started} starts after {} ms",
                now - t0
            );
            if r.jobs.is_empty() {
                assert!(
                    r.next_due.is_some(),
                    "a limited reply says when to come back"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.active, counts.ready), (12, 0));
    // No limit: everything at once.
    queue.set_limits(QueueLimits::new()).await.unwrap();
    add_group(&store, q, None, 30).await;
    assert_eq!(fetch(&store, q, 50).await.len(), 30);
}

/// At most `n` jobs of the queue run at once across all workers; a settle frees a slot.
pub async fn queue_concurrency_limit(store: Store, q: &str) {
    let queue = queue(&store, q);
    queue
        .set_limits(QueueLimits::new().concurrency(3))
        .await
        .unwrap();
    add_group(&store, q, None, 10).await;
    let a = fetch(&store, q, 2).await;
    let b = fetch(&store, q, 10).await;
    assert_eq!((a.len(), b.len()), (2, 1), "two workers share three slots");
    assert!(fetch(&store, q, 10).await.is_empty());
    let done = settle(&store, q, a[0].lease.clone(), Settle::Complete).await;
    assert_eq!(done, Settled::Completed);
    assert_eq!(fetch(&store, q, 10).await.len(), 1, "the freed slot");
    assert_eq!(queue.counts().await.unwrap().active, 3);
    // A settle and a fetch in one exchange: the slot is reused at once.
    let r = store
        .work(
            q,
            WorkRequest::new(vec![(b[0].lease.clone(), Settle::Complete)], 10, LEASE),
        )
        .await
        .unwrap();
    assert_eq!(r.jobs.len(), 1);
}

/// Fair groups: 1,000 jobs of `a` added before 10 of `b` (and 10 ungrouped): every `b` and
/// ungrouped job starts within the first 3 x 10 + 3 fetches of one job, taken by two
/// alternating workers, and each group keeps its own order.
pub async fn fair_groups(store: Store, q: &str) {
    let a = add_group(&store, q, Some("tenant-a"), 1000).await;
    let b = add_group(&store, q, Some("tenant-b"), 10).await;
    let u = add_group(&store, q, None, 10).await;
    let mut order = Vec::new();
    for _ in 0..33 {
        for job in fetch(&store, q, 1).await {
            order.push(job.lease.id.as_str().to_owned());
        }
    }
    for id in b.iter().chain(&u) {
        assert!(order.contains(id), "job {id} did not start in the first 33");
    }
    let a_seen: Vec<_> = order.iter().filter(|id| a.contains(id)).collect();
    assert!(a_seen.len() >= 10, "group a takes its turns too");
    let mut sorted = a_seen.clone();
    sorted.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(a_seen, sorted, "a group's jobs keep their order");
    let b_seen: Vec<_> = order.iter().filter(|id| b.contains(id)).cloned().collect();
    assert_eq!(b_seen, b, "in order");
}

/// Per-group concurrency: at most one running job of each group across two workers; a
/// finished job lets the next of its group run; dropping the limit frees held jobs.
pub async fn group_concurrency_limit(store: Store, q: &str) {
    let queue = queue(&store, q);
    queue
        .set_limits(QueueLimits::new().group_concurrency(1))
        .await
        .unwrap();
    let a = add_group(&store, q, Some("a"), 5).await;
    let b = add_group(&store, q, Some("b"), 5).await;
    add_group(&store, q, None, 2).await;
    let w1 = fetch(&store, q, 10).await;
    let w2 = fetch(&store, q, 10).await;
    let running: Vec<String> = w1
        .iter()
        .chain(&w2)
        .map(|j| j.lease.id.as_str().to_owned())
        .collect();
    assert_eq!(running.iter().filter(|id| a.contains(id)).count(), 1);
    assert_eq!(running.iter().filter(|id| b.contains(id)).count(), 1);
    assert_eq!(running.len(), 4, "one of a, one of b and the two ungrouped");
    assert!(fetch(&store, q, 10).await.is_empty());
    let a_job = w1
        .iter()
        .chain(&w2)
        .find(|j| j.lease.id.as_str() == a[0])
        .unwrap()
        .clone();
    settle(&store, q, a_job.lease, Settle::Complete).await;
    let next = fetch(&store, q, 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].lease.id.as_str(),
        a[1],
        "the next of group a, in order"
    );
    // A lost lease frees its group's slot too; removing a running job as well.
    assert!(queue.remove(&next[0].lease.id).await.unwrap());
    let after_remove = fetch(&store, q, 10).await;
    assert_eq!(after_remove.len(), 1);
    assert_eq!(after_remove[0].lease.id.as_str(), a[2]);
    // Without the limit, held jobs are ready again.
    queue.set_limits(QueueLimits::new()).await.unwrap();
    assert_eq!(fetch(&store, q, 20).await.len(), 2 + 4);
}

/// A start limiter asked before each job: a refused job waits for the named time without
/// using an attempt, and every job still runs once.
pub async fn start_limiter_defers_jobs(store: Store, q: &str) {
    #[derive(Debug)]
    struct EveryOther(AtomicU32);
    #[async_trait::async_trait]
    impl StartLimiter for EveryOther {
        async fn check(&self, _job: JobStart<'_>) -> StartDecision {
            if self.0.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                StartDecision::Wait {
                    retry_after: Duration::from_millis(50),
                    pause_queue: false,
                }
            } else {
                StartDecision::Start
            }
        }
    }
    let queue = queue(&store, q);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(queue.add(w(&i.to_string())).attempts(1).await.unwrap());
    }
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let worker = Worker::new(store.clone(), q)
        .concurrency(1)
        .start_limiter(EveryOther(AtomicU32::new(0)))
        .handle::<Welcome>(move |_j: Welcome, _c: JobContext| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start();
    wait_for("all four complete", || async {
        queue.counts().await.unwrap().completed == 4
    })
    .await;
    assert_eq!(ran.load(Ordering::SeqCst), 4, "each job ran once");
    for id in &ids {
        assert_eq!(queue.get(id).await.unwrap().unwrap().attempts_made, 1);
    }
    worker.shutdown().await.unwrap();
}
