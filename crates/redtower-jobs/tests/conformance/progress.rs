//! Progress, results, waiting for a job, job events.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redtower_jobs::{
    Error, JobContext, JobError, JobEvent, JobEventKind, JobState, OutputKind, Retention, Settle,
    WaitError, Worker,
};
use serde::{Deserialize, Serialize};

use super::{LEASE, Store, Welcome, fetch, queue, settle, w, wait_for};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub to: String,
    pub attempt: u32,
}

const WAIT: Duration = Duration::from_secs(20);

/// Progress is stored with the job, fenced by the lease: a holder's write lands (and is kept
/// across attempts), a stale lease or a settled attempt writes nothing.
pub async fn progress_is_stored_and_fenced(store: Store, q: &str) {
    let queue = queue(&store, q);
    let id = queue.add(w("a")).attempts(2).await.unwrap();
    assert_eq!(queue.get(&id).await.unwrap().unwrap().progress, None);
    let job = fetch(&store, q, 1).await.remove(0);
    assert!(
        store
            .put_output(q, &job.lease, OutputKind::Progress, "{\"step\":1}".into())
            .await
            .unwrap()
    );
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.progress, Some(serde_json::json!({ "step": 1 })));
    assert_eq!(info.result, None);
    // A token that is not the holder's writes nothing.
    let mut forged = job.lease.clone();
    forged.token = format!("9{}", forged.token);
    assert!(
        !store
            .put_output(q, &forged, OutputKind::Progress, "2".into())
            .await
            .unwrap()
    );
    // After the attempt is settled its lease writes nothing; the value stays for the retry.
    let retry = Settle::Retry {
        delay: Duration::from_secs(3600),
        error: "again".into(),
    };
    settle(&store, q, job.lease.clone(), retry).await;
    assert!(
        !store
            .put_output(q, &job.lease, OutputKind::Progress, "3".into())
            .await
            .unwrap()
    );
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Scheduled);
    assert_eq!(info.progress, Some(serde_json::json!({ "step": 1 })));
    // A job that does not exist has no lease to write with.
    let mut gone = job.lease.clone();
    gone.id = redtower_jobs::JobId::new("999999");
    assert!(
        !store
            .put_output(q, &gone, OutputKind::Result, "1".into())
            .await
            .unwrap()
    );
}

/// A handler's return value is the job's result: `wait` returns it typed, `get` shows it,
/// and the worker's event sink sees progress, a retry and the completion, in order.
pub async fn result_wait_and_events(store: Store, q: &str) {
    let queue = queue(&store, q);
    let seen = Arc::new(Mutex::new(Vec::<JobEvent>::new()));
    let sink = seen.clone();
    let worker = Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(50))
        .events(move |e: &JobEvent| sink.lock().unwrap().push(e.clone()))
        .handle::<Welcome>(|job: Welcome, ctx: JobContext| async move {
            for step in ["packed", "label printed"] {
                assert!(ctx.progress(step).await.unwrap());
            }
            if ctx.attempt() == 1 {
                return Err(JobError::retry("courier busy").after(Duration::from_millis(10)));
            }
            ctx.progress("shipped").await.unwrap();
            Ok(Sent {
                to: job.to,
                attempt: ctx.attempt(),
            })
        })
        .start();
    let id = queue.add(w("ada")).attempts(3).await.unwrap();
    let sent: Sent = queue.wait(&id, WAIT).await.unwrap();
    assert_eq!(
        sent,
        Sent {
            to: "ada".into(),
            attempt: 2
        }
    );
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.progress, Some(serde_json::json!("shipped")));
    assert_eq!(
        info.result,
        Some(serde_json::json!({ "to": "ada", "attempt": 2 }))
    );
    // Waiting on a finished job answers at once, and any type that decodes will do.
    let raw: serde_json::Value = queue.wait(&id, Duration::ZERO).await.unwrap();
    assert_eq!(raw["to"], "ada");
    wait_for("the completion event", || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e.kind, JobEventKind::Completed { .. }))
        }
    })
    .await;
    let kinds: Vec<(u32, JobEventKind)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e.id, id);
            assert_eq!(&*e.queue, q);
            (e.attempt, e.kind.clone())
        })
        .collect();
    let progress = |v: &str| JobEventKind::Progress {
        value: serde_json::json!(v),
    };
    assert_eq!(
        kinds,
        vec![
            (1, progress("packed")),
            (1, progress("label printed")),
            (
                1,
                JobEventKind::Retried {
                    error: "courier busy".into(),
                    delay_ms: 10
                }
            ),
            (2, progress("packed")),
            (2, progress("label printed")),
            (2, progress("shipped")),
            (
                2,
                JobEventKind::Completed {
                    result: Some(serde_json::json!({ "to": "ada", "attempt": 2 }))
                }
            ),
        ]
    );
    worker.shutdown().await.unwrap();
}

/// `wait` reports a dead job's error, a timeout while the job has not finished, and a job
/// that does not exist; `()` handlers store no result and are waited for as `()`.
pub async fn wait_failure_timeout_gone(store: Store, q: &str) {
    let queue = queue(&store, q);
    let seen = Arc::new(Mutex::new(Vec::<JobEvent>::new()));
    let sink = seen.clone();
    let worker = Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(50))
        .events(move |e: &JobEvent| sink.lock().unwrap().push(e.clone()))
        .handle::<Welcome>(|job: Welcome, _ctx: JobContext| async move {
            if job.to == "nobody" {
                return Err(JobError::fatal("no such user"));
            }
            Ok(())
        })
        .start();
    let bad = queue.add(w("nobody")).await.unwrap();
    match queue.wait::<()>(&bad, WAIT).await {
        Err(WaitError::Failed { error, attempts }) => {
            assert_eq!(error, "no such user");
            assert_eq!(attempts, 1);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let fine = queue.add(w("ada")).await.unwrap();
    queue.wait::<()>(&fine, WAIT).await.unwrap();
    assert_eq!(queue.get(&fine).await.unwrap().unwrap().result, None);
    // Not due for an hour: the wait times out and the job is untouched.
    let later = queue
        .add(w("later"))
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    match queue.wait::<()>(&later, Duration::from_millis(300)).await {
        Err(WaitError::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        queue.get(&later).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    let missing = redtower_jobs::JobId::new("987654321");
    assert!(matches!(
        queue.wait::<()>(&missing, WAIT).await,
        Err(WaitError::Gone)
    ));
    wait_for("the failure event", || {
        let seen = seen.clone();
        let bad = bad.clone();
        async move {
            seen.lock().unwrap().iter().any(|e| {
                e.id == bad
                    && e.kind
                        == JobEventKind::Failed {
                            error: "no such user".into(),
                        }
            })
        }
    })
    .await;
    worker.shutdown().await.unwrap();
}

/// Progress above its limit is refused with a typed error (nothing stored); a result above
/// its limit makes the job dead with the reason.
pub async fn outputs_are_bounded(store: Store, q: &str) {
    let queue = queue(&store, q);
    let refused = Arc::new(Mutex::new(None::<String>));
    let r = refused.clone();
    let worker = Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(50))
        .handle::<Welcome>(move |job: Welcome, ctx: JobContext| {
            let r = r.clone();
            async move {
                let big = "x".repeat(redtower_jobs::MAX_PROGRESS_BYTES);
                match ctx.progress(&big).await {
                    Err(e @ Error::ValueTooLarge { .. }) => {
                        *r.lock().unwrap() = Some(e.to_string());
                    }
                    other => panic!("expected ValueTooLarge, got {other:?}"),
                }
                let small = "x".repeat(redtower_jobs::MAX_PROGRESS_BYTES - 2);
                assert!(ctx.progress(&small).await.unwrap(), "at the limit is fine");
                if job.to == "huge" {
                    return Ok("y".repeat(redtower_jobs::MAX_RESULT_BYTES));
                }
                Ok("y".repeat(redtower_jobs::MAX_RESULT_BYTES - 2))
            }
        })
        .start();
    let huge = queue.add(w("huge")).await.unwrap();
    match queue.wait::<String>(&huge, WAIT).await {
        Err(WaitError::Failed { error, .. }) => {
            assert!(error.contains("over the limit"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let info = queue.get(&huge).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Dead);
    assert_eq!(info.result, None);
    assert!(
        refused
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .contains("progress")
    );
    let fits = queue.add(w("fits")).await.unwrap();
    let result: String = queue.wait(&fits, WAIT).await.unwrap();
    assert_eq!(result.len(), redtower_jobs::MAX_RESULT_BYTES - 2);
    worker.shutdown().await.unwrap();
}

/// Results go with their job: trimmed by retention, deleted by removal; a wait on a trimmed
/// job ends in `Gone`, never a failure.
pub async fn outputs_follow_retention(store: Store, q: &str) {
    let queue = queue(&store, q);
    let worker = Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(50))
        .retention(Retention {
            completed_count: 1,
            ..Retention::default()
        })
        .handle::<Welcome>(|job: Welcome, ctx: JobContext| async move {
            ctx.progress(1).await?;
            Ok(job.to)
        })
        .start();
    let first = queue.add(w("first")).await.unwrap();
    assert_eq!(queue.wait::<String>(&first, WAIT).await.unwrap(), "first");
    let second = queue.add(w("second")).await.unwrap();
    assert_eq!(queue.wait::<String>(&second, WAIT).await.unwrap(), "second");
    assert!(queue.get(&first).await.unwrap().is_none(), "trimmed");
    assert!(matches!(
        queue.wait::<String>(&first, WAIT).await,
        Err(WaitError::Gone)
    ));
    assert!(queue.remove(&second).await.unwrap());
    assert!(queue.get(&second).await.unwrap().is_none());
    worker.shutdown().await.unwrap();
    // Leases of the removed job write nothing.
    let id = queue.add(w("third")).await.unwrap();
    let job = fetch(&store, q, 1).await.remove(0);
    assert!(queue.remove(&id).await.unwrap());
    assert!(
        !store
            .put_output(q, &job.lease, OutputKind::Result, "1".into())
            .await
            .unwrap()
    );
    let _ = LEASE;
}
