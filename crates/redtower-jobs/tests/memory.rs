//! The conformance suite on the in-memory backend, under a paused tokio clock.

use std::sync::Arc;

use redtower_jobs::{MemoryStore, QueueStore};

#[path = "conformance/mod.rs"]
mod conformance;

async fn memory(_test: &str) -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

conformance_tests!(tokio::test(start_paused = true), memory);

mod worker_api {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use redtower_jobs::{
        Backoff, JobError, JobRequest, JobState, MemoryStore, Outcome, Queue, Worker,
    };

    use super::conformance::{Welcome, wait_for};

    /// A `tower::Service` works as a handler, and hooks see typed payloads and attempts: what
    /// an app needs to update an order on success or final failure.
    #[tokio::test(start_paused = true)]
    async fn tower_service_handler_and_typed_hooks() {
        let store = MemoryStore::new();
        let queue = Queue::<Welcome>::new(store.clone(), "svc");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let svc = tower::service_fn(|req: JobRequest<Welcome>| async move {
            if req.job.to == "bad" && req.ctx.attempt() < 2 {
                return Err(JobError::retry("first attempt fails"));
            }
            if req.job.to == "fatal" {
                return Err(JobError::fatal("unknown customer"));
            }
            Ok(())
        });
        let worker = Worker::new(store.clone(), "svc")
            .service::<Welcome, _>(svc)
            .on_completed(move |f| {
                let l = l1.clone();
                async move {
                    let job: Welcome = f.decode().unwrap();
                    l.lock()
                        .unwrap()
                        .push(format!("done {} attempt {}", job.to, f.attempt));
                }
            })
            .on_failed(move |f| {
                let l = l2.clone();
                async move {
                    let job: Welcome = f.decode().unwrap();
                    let what = if f.is_dead() { "dead" } else { "retry" };
                    l.lock()
                        .unwrap()
                        .push(format!("{what} {} {}", job.to, f.error().unwrap()));
                }
            })
            .start();
        let bad = queue
            .add(Welcome { to: "bad".into() })
            .backoff(Backoff::fixed(Duration::from_secs(1)))
            .await
            .unwrap();
        let fatal = queue.add(Welcome { to: "fatal".into() }).await.unwrap();
        wait_for("all settled", || async { log.lock().unwrap().len() == 3 }).await;
        worker.shutdown().await.unwrap();
        let mut log = log.lock().unwrap().clone();
        log.sort();
        assert_eq!(
            log,
            vec![
                "dead fatal unknown customer",
                "done bad attempt 2",
                "retry bad first attempt fails"
            ]
        );
        assert_eq!(
            queue.get(&bad).await.unwrap().unwrap().state,
            JobState::Completed
        );
        let f = queue.get(&fatal).await.unwrap().unwrap();
        assert_eq!((f.state, f.attempts_made), (JobState::Dead, 1));
        let _ = Outcome::Completed;
    }

    /// Jobs without a handler in this worker are dead with a clear error, not retried forever.
    #[tokio::test(start_paused = true)]
    async fn unknown_job_name_is_dead() {
        let store = MemoryStore::new();
        let queue = Queue::<Welcome>::new(store.clone(), "none");
        let id = queue.add(Welcome { to: "x".into() }).await.unwrap();
        let worker = Worker::new(store.clone(), "none").start();
        wait_for("dead", || async { queue.counts().await.unwrap().dead == 1 }).await;
        worker.shutdown().await.unwrap();
        let info = queue.get(&id).await.unwrap().unwrap();
        assert_eq!(
            info.last_error.as_deref(),
            Some("no handler for job `welcome` in this worker")
        );
    }
}

/// Dropping the handle leaves the worker running (it does not stop or spin).
#[tokio::test(start_paused = true)]
async fn dropped_handle_keeps_the_worker_running() {
    use redtower_jobs::{JobContext, Queue, Worker};
    use std::time::Duration;

    let store = MemoryStore::new();
    let queue = Queue::<conformance::Welcome>::new(store.clone(), "detached");
    drop(
        Worker::new(store.clone(), "detached")
            .handle::<conformance::Welcome>(|_j: conformance::Welcome, _c: JobContext| async {
                Ok(())
            })
            .start(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        queue
            .add(conformance::Welcome { to: i.to_string() })
            .await
            .unwrap();
    }
    conformance::wait_for("completions", || async {
        queue.counts().await.unwrap().completed == 3
    })
    .await;
}
