//! Job schedulers: upsert by id, catch-up, limits, cron in a time zone, exactly one job per
//! tick (compare-and-set).

use std::{
    collections::HashMap,
    time::{Duration, UNIX_EPOCH},
};

use redtower_jobs::{CatchUp, Fire, JobId, JobState, NewJob, Schedule, Worker};

use super::{Store, Welcome, queue, w, wait_for};

const HOUR: u64 = 3_600_000;

fn ago(now_ms: u64, ms: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(now_ms - ms)
}

/// Upsert by id: the same spec again changes nothing (the next tick and run count stay), a
/// changed one starts afresh; list and remove.
pub async fn scheduler_upsert_list_remove(store: Store, q: &str) {
    let queue = queue(&store, q);
    let hourly = Schedule::every(Duration::from_millis(HOUR));
    assert!(queue.schedule("s", hourly.clone(), w("a")).await.unwrap());
    // The first tick of `every` is the upsert's own time: the upsert added its job.
    let jobs = queue.list(JobState::Ready, 0, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "the first tick's job");
    assert_eq!(jobs[0].decode::<Welcome>().unwrap(), w("a"));
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
    assert!(!queue.schedule("s", hourly.clone(), w("a")).await.unwrap());
    let list = queue.schedulers().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id.as_str(), list[0].count), ("s", 1));
    let tick = jobs[0].created_at_ms;
    assert_eq!(
        list[0].next,
        Some(UNIX_EPOCH + Duration::from_millis(tick + HOUR))
    );
    assert_eq!(list[0].schedule, hourly);

    // A changed job: replaced, its first tick again at once (the run count is that job's).
    assert!(queue.schedule("s", hourly.clone(), w("b")).await.unwrap());
    assert_eq!(queue.schedulers().await.unwrap()[0].count, 1);
    assert_eq!(queue.counts().await.unwrap().ready, 2);
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());

    assert!(queue.schedule("t", hourly, w("c")).await.unwrap());
    let ids: Vec<_> = queue
        .schedulers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s", "t"]);
    assert!(queue.remove_scheduler("s").await.unwrap());
    assert!(!queue.remove_scheduler("s").await.unwrap());
    assert_eq!(queue.schedulers().await.unwrap().len(), 1);
    assert_eq!(queue.counts().await.unwrap().ready, 3, "jobs added stay");
}

/// Concurrent upserts (a store may send them together): each gets its own answer, and a
/// scheduler upserted twice at once ends with the later spec, each upsert having changed it.
pub async fn concurrent_scheduler_upserts(store: Store, q: &str) {
    let queue = queue(&store, q);
    let hourly = Schedule::every(Duration::from_millis(HOUR));
    let upsert_all = |to: &'static str| {
        futures::future::join_all((0..40).map(|i| {
            let (queue, hourly) = (&queue, hourly.clone());
            async move { queue.schedule(&format!("s{i:02}"), hourly, w(to)).await }
        }))
    };
    let first = upsert_all("a").await;
    assert!(first.iter().all(|r| matches!(r, Ok(true))), "{first:?}");
    let again = upsert_all("a").await;
    assert!(again.iter().all(|r| matches!(r, Ok(false))), "{again:?}");
    let (b, c, same) = tokio::join!(
        queue.schedule("s00", hourly.clone(), w("b")),
        queue.schedule("s00", hourly.clone(), w("c")),
        queue.schedule("s01", hourly.clone(), w("a")),
    );
    assert_eq!((b.unwrap(), c.unwrap(), same.unwrap()), (true, true, false));
    let list = queue.schedulers().await.unwrap();
    assert_eq!(list.len(), 40);
    let to = |i: usize| serde_json::from_str::<Welcome>(&list[i].data).unwrap();
    assert_eq!((to(0), to(1)), (w("c"), w("a")));
    // Each upsert that changed a scheduler added its first tick's job.
    assert_eq!(queue.counts().await.unwrap().ready, 42);
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
}

/// Ticks missed while nothing ran: none (default), the last, or all within a bound.
pub async fn scheduler_catch_up(store: Store, q: &str) {
    let queue = queue(&store, q);
    let now = store.time(q).await.unwrap();
    let start = ago(now, 3 * HOUR + HOUR / 2);
    let every = Schedule::every(Duration::from_millis(HOUR)).start(start);
    let s0 = now - 3 * HOUR - HOUR / 2;
    queue.schedule("none", every.clone(), w("n")).await.unwrap();
    queue
        .schedule("last", every.clone().catch_up(CatchUp::Last), w("l"))
        .await
        .unwrap();
    let all = CatchUp::All {
        within: Duration::from_millis(24 * HOUR),
    };
    queue
        .schedule("all", every.clone().catch_up(all), w("a"))
        .await
        .unwrap();
    let pass = queue.run_schedulers().await.unwrap();
    let mut by: HashMap<&str, Vec<u64>> = HashMap::new();
    for (s, tick, _) in &pass.added {
        by.entry(s.as_str()).or_default().push(*tick);
    }
    assert_eq!(by.get("none"), None, "missed ticks add nothing");
    assert_eq!(by["last"], vec![s0 + 3 * HOUR]);
    assert_eq!(by["all"], vec![s0, s0 + HOUR, s0 + 2 * HOUR, s0 + 3 * HOUR]);
    for s in queue.schedulers().await.unwrap() {
        assert_eq!(
            s.next,
            Some(UNIX_EPOCH + Duration::from_millis(s0 + 4 * HOUR)),
            "{}: resumes at the next tick",
            s.id
        );
    }
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
    assert_eq!(queue.counts().await.unwrap().ready, 5);
}

/// A run limit and an end finish the scheduler; it stays listed without a next tick.
pub async fn scheduler_limit_and_end(store: Store, q: &str) {
    let queue = queue(&store, q);
    let now = store.time(q).await.unwrap();
    let all = CatchUp::All {
        within: Duration::from_millis(24 * HOUR),
    };
    let every = Schedule::every(Duration::from_millis(HOUR))
        .start(ago(now, 5 * HOUR + 1))
        .catch_up(all);
    queue
        .schedule("limited", every.clone().limit(2), w("l"))
        .await
        .unwrap();
    queue
        .schedule("ended", every.end(ago(now, 3 * HOUR)), w("e"))
        .await
        .unwrap();
    let pass = queue.run_schedulers().await.unwrap();
    let count = |id: &str| pass.added.iter().filter(|(s, _, _)| s == id).count();
    assert_eq!(count("limited"), 2);
    assert_eq!(count("ended"), 3, "ticks at -5 h, -4 h and -3 h");
    for s in queue.schedulers().await.unwrap() {
        assert_eq!(s.next, None, "{} is finished", s.id);
    }
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
    // An end already past: stored finished, never fires.
    queue
        .schedule(
            "past",
            Schedule::every(Duration::from_secs(1)).end(ago(now, HOUR)),
            w("p"),
        )
        .await
        .unwrap();
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
    // `every` from now with a limit of 1: the upsert adds the only job and finishes it; with a
    // limit of 0 it is stored finished and adds none.
    let ready = queue.counts().await.unwrap().ready;
    let hourly = Schedule::every(Duration::from_millis(HOUR));
    queue
        .schedule("once", hourly.clone().limit(1), w("o"))
        .await
        .unwrap();
    queue
        .schedule("never", hourly.limit(0), w("n"))
        .await
        .unwrap();
    assert_eq!(queue.counts().await.unwrap().ready, ready + 1);
    for s in queue.schedulers().await.unwrap() {
        assert_eq!(s.next, None, "{} is finished", s.id);
        match s.id.as_str() {
            "once" => assert_eq!(s.count, 1),
            "never" => assert_eq!(s.count, 0),
            _ => {}
        }
    }
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
}

/// A pass whose due schedulers catch up many ticks (30 x 51, more than one store call of a
/// pass carries) adds every tick's job once and moves every scheduler on.
pub async fn a_pass_with_many_ticks(store: Store, q: &str) {
    const MIN: u64 = 60_000;
    let queue = queue(&store, q);
    let now = store.time(q).await.unwrap();
    let every = Schedule::every(Duration::from_millis(MIN))
        .start(ago(now, 50 * MIN + 1))
        .catch_up(CatchUp::All {
            within: Duration::from_millis(HOUR),
        });
    for i in 0..30 {
        queue
            .schedule(&format!("s{i:02}"), every.clone(), w("a"))
            .await
            .unwrap();
    }
    let pass = queue.run_schedulers().await.unwrap();
    assert_eq!(pass.added.len(), 30 * 51);
    assert_eq!(queue.counts().await.unwrap().ready, 30 * 51);
    for s in queue.schedulers().await.unwrap() {
        assert_eq!(s.count, 51, "{}", s.id);
        assert!(
            s.next.unwrap() > UNIX_EPOCH + Duration::from_millis(now),
            "{}",
            s.id
        );
    }
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
}

/// A cron expression in a time zone fires on its wall-clock ticks (here every hour in Berlin:
/// whole UTC hours, as Berlin is a whole-hour offset).
pub async fn scheduler_cron_in_time_zone(store: Store, q: &str) {
    let queue = queue(&store, q);
    let now = store.time(q).await.unwrap();
    let start = now - 5 * HOUR / 2;
    let cron = Schedule::cron("0 0 * * * *")
        .unwrap()
        .time_zone(redtower_jobs::chrono_tz::Europe::Berlin)
        .start(UNIX_EPOCH + Duration::from_millis(start))
        .catch_up(CatchUp::All {
            within: Duration::from_millis(24 * HOUR),
        });
    queue.schedule("hourly", cron, w("h")).await.unwrap();
    let ticks: Vec<u64> = queue
        .run_schedulers()
        .await
        .unwrap()
        .added
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    let expected: Vec<u64> = (start.div_ceil(HOUR)..=now / HOUR)
        .map(|h| h * HOUR)
        .collect();
    assert_eq!(ticks, expected);
    let next = queue.schedulers().await.unwrap()[0].next.unwrap();
    assert_eq!(
        next,
        UNIX_EPOCH + Duration::from_millis((now / HOUR + 1) * HOUR)
    );
}

/// Firing is a compare-and-set on the version and next tick read: of two processes that read
/// the same due tick, one adds the job; a re-sent fire adds nothing; a process that read the
/// tick and died before firing changed nothing, and a later fire of what it read applies. In
/// one call each fire stands alone, and a tick fired again answers its first job.
pub async fn scheduler_fire_is_exactly_once(store: Store, q: &str) {
    let queue = queue(&store, q);
    // From a start (a moment ago): the first tick is due, for a pass to fire.
    let start = store.time(q).await.unwrap() - 10;
    let every = |ms: u64, start: u64| {
        Schedule::every(Duration::from_millis(ms)).start(UNIX_EPOCH + Duration::from_millis(start))
    };
    queue
        .schedule("s", every(HOUR, start), w("a"))
        .await
        .unwrap();
    // Two instances read the due scheduler; one of them dies before firing.
    let (_, a, _) = store.due_schedulers(q, 10).await.unwrap();
    let (now, b, _) = store.due_schedulers(q, 10).await.unwrap();
    assert_eq!(a, b);
    let s = &b[0];
    let tick = s.next.unwrap();
    assert!(tick <= now);
    let fire = Fire::new(
        s,
        vec![tick],
        Some(tick + HOUR),
        NewJob::new("welcome", r#"{"to":"a"}"#),
    );
    let first = fire_one(&store, q, fire.clone()).await;
    assert_eq!(first.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        fire_one(&store, q, fire.clone()).await,
        None,
        "a second fire of the same tick (another instance, or a re-send) adds nothing"
    );
    // A stale version (the spec changed meanwhile) is refused too.
    queue
        .schedule("s", every(2 * HOUR, start + 1), w("a"))
        .await
        .unwrap();
    assert_eq!(fire_one(&store, q, fire.clone()).await, None);
    // A tick later than the store's clock is refused (a node whose clock is behind).
    let (_, due, _) = store.due_schedulers(q, 10).await.unwrap();
    let s = &due[0];
    let future = Fire::new(
        s,
        vec![now + 10 * HOUR],
        None,
        NewJob::new("welcome", r#"{"to":"a"}"#),
    );
    assert_eq!(fire_one(&store, q, future.clone()).await, None);
    // In one call, each fire stands alone: the refused ones change nothing, the current one
    // adds its job.
    let (now, due, _) = store.due_schedulers(q, 10).await.unwrap();
    let tick = due[0].next.unwrap();
    assert!(tick <= now);
    let current = Fire::new(
        &due[0],
        vec![tick],
        Some(tick + 2 * HOUR),
        NewJob::new("welcome", r#"{"to":"a"}"#),
    );
    let fired = store
        .fire_schedulers(q, vec![fire, current.clone(), future])
        .await
        .unwrap();
    assert_eq!(fired.len(), 3);
    assert_eq!((&fired[0], &fired[2]), (&None, &None));
    assert_eq!(fired[1].as_ref().map(Vec::len), Some(1));
    assert_eq!(queue.counts().await.unwrap().ready, 2);
    // The instance that died left nothing behind, and the fire moved the next tick on: a pass
    // now adds nothing.
    assert!(queue.run_schedulers().await.unwrap().added.is_empty());
    assert_eq!(fire_one(&store, q, current).await, None);
    assert_eq!(queue.counts().await.unwrap().ready, 2);
    // A changed spec that repeats the first fired tick (the same start): the tick's job is
    // the one it added first, not a second one.
    queue
        .schedule("s", every(HOUR, start), w("b"))
        .await
        .unwrap();
    let (_, due, _) = store.due_schedulers(q, 10).await.unwrap();
    assert_eq!(due[0].next, Some(start));
    let again = Fire::new(
        &due[0],
        vec![start],
        Some(start + HOUR),
        NewJob::new("welcome", r#"{"to":"b"}"#),
    );
    assert_eq!(fire_one(&store, q, again).await, first);
    assert_eq!(queue.counts().await.unwrap().ready, 2);
}

/// One fire, in a call of its own.
async fn fire_one(store: &Store, q: &str, fire: Fire) -> Option<Vec<JobId>> {
    let mut fired = store.fire_schedulers(q, vec![fire]).await.unwrap();
    assert_eq!(fired.len(), 1);
    fired.pop().unwrap()
}

/// Workers fire their queue's schedulers on their own.
pub async fn workers_fire_schedulers(store: Store, q: &str) {
    let queue = queue(&store, q);
    // From a start (now): the first tick is due for a pass, not added by the upsert.
    let start = UNIX_EPOCH + Duration::from_millis(store.time(q).await.unwrap());
    queue
        .schedule(
            "s",
            Schedule::every(Duration::from_millis(HOUR)).start(start),
            w("a"),
        )
        .await
        .unwrap();
    assert_eq!(queue.counts().await.unwrap().ready, 0);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            Worker::new(store.clone(), q)
                .poll_interval(Duration::from_millis(50))
                .handle::<Welcome>(|_: Welcome, _| async { Ok::<(), redtower_jobs::JobError>(()) })
                .start()
        })
        .collect();
    wait_for("the tick's job completed", || async {
        queue.counts().await.unwrap().completed == 1
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let c = queue.counts().await.unwrap();
    assert_eq!(
        (c.ready, c.active, c.completed),
        (0, 0, 1),
        "one job for the tick"
    );
    assert_eq!(queue.schedulers().await.unwrap()[0].count, 1);
}

/// A worker fires every due scheduler when more are due than one pass takes (100): the next
/// pass follows at once instead of waiting for the next tick or the poll interval.
pub async fn many_due_schedulers_fire_together(store: Store, q: &str) {
    let queue = queue(&store, q);
    // From a start (now): every first tick is due for a pass, not added by the upsert.
    let start = UNIX_EPOCH + Duration::from_millis(store.time(q).await.unwrap());
    let all: Vec<u32> = (0..250).collect();
    for chunk in all.chunks(50) {
        futures::future::join_all(chunk.iter().map(|i| {
            let queue = &queue;
            async move {
                queue
                    .schedule(
                        &format!("s{i}"),
                        Schedule::every(Duration::from_millis(HOUR)).start(start),
                        w("a"),
                    )
                    .await
                    .unwrap()
            }
        }))
        .await;
    }
    assert_eq!(queue.counts().await.unwrap().ready, 0);
    let worker = Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(HOUR))
        .concurrency(50)
        .handle::<Welcome>(|_: Welcome, _| async { Ok::<(), redtower_jobs::JobError>(()) })
        .start();
    wait_for("every scheduler's first tick completed", || async {
        queue.counts().await.unwrap().completed == 250
    })
    .await;
    worker.shutdown().await.unwrap();
    assert!(
        queue
            .schedulers()
            .await
            .unwrap()
            .iter()
            .all(|s| s.count == 1)
    );
}
