//! A reliable Redis job queue for tokio: the BullMQ of this stack, with typed jobs.
//!
//! ```
//! use std::time::Duration;
//! use redtower_jobs::{Backoff, Job, JobContext, JobError, JobState, MemoryStore, Queue, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct WelcomeEmail { to: String }
//!
//! impl Job for WelcomeEmail {
//!     const NAME: &'static str = "welcome"; // stable: it picks the handler
//! }
//!
//! async fn send_welcome(email: WelcomeEmail, ctx: JobContext) -> Result<(), JobError> {
//!     if ctx.attempt() == 1 {
//!         return Err(JobError::retry("smtp: 421 try again later")); // retried after backoff
//!     }
//!     println!("welcome mail to {} (attempt {})", email.to, ctx.attempt());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), redtower_jobs::Error> {
//! let store = MemoryStore::new(); // or RedisStore::new(redis)
//!
//! // Producer: like BullMQ's
//! // emailQueue.add('welcome', data, { delay: 5 min, attempts: 3, backoff: exponential 2 s })
//! let emails = Queue::<WelcomeEmail>::new(store.clone(), "email");
//! let id = emails
//!     .add(WelcomeEmail { to: "ada@example.com".into() })
//!     .delay(Duration::from_secs(5 * 60))
//!     .attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_secs(2)))
//!     .await?;
//!
//! // Worker: like `new Worker('email', ...)` plus `worker.on('failed', ...)`.
//! let worker = Worker::new(store.clone(), "email")
//!     .concurrency(50)
//!     .timeout(Duration::from_secs(30))
//!     .handle::<WelcomeEmail>(send_welcome)
//!     .on_failed(|f| async move {
//!         eprintln!("job {} attempt {} failed: {:?}", f.id, f.attempt, f.error());
//!     })
//!     .start();
//!
//! // (The clock is paused in this example, so the 5 minutes pass at once.)
//! tokio::time::sleep(Duration::from_secs(5 * 60 + 3)).await;
//! let job = emails.get(&id).await?.expect("kept by retention");
//! assert_eq!(job.state, JobState::Completed);
//! assert_eq!(job.attempts_made, 2);
//!
//! worker.shutdown().await?; // stop fetching, wait, hand unfinished jobs back
//! # Ok(()) }
//! ```
//!
//! The same on Redis (standalone or Cluster): only the store changes. To choose the backend
//! at run time, pass an `Arc<dyn QueueStore>` (see [`Queue::new`]).
//!
//! ```no_run
//! # use redtower_jobs::{Job, Queue, RedisStore, Worker};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct WelcomeEmail { to: String }
//! # impl Job for WelcomeEmail { const NAME: &'static str = "welcome"; }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use redtower_client::{Redis, RedisConfig};
//!
//! let redis = Redis::new(RedisConfig::from_env()?)?; // REDIS_URL
//! let store = RedisStore::new(redis);
//! let emails = Queue::<WelcomeEmail>::new(store.clone(), "email");
//! emails.add(WelcomeEmail { to: "ada@example.com".into() }).await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! * **At least once, never lost.** A fetched job is leased (deadline + fencing token). A
//!   worker that crashes loses its lease and the job runs again after it ends; its late result
//!   is rejected. Write handlers to be idempotent (the [`JobId`] is stable across attempts).
//!   Lost leases do not use attempts; after [`Worker::max_stalls`] of them the job is dead.
//! * **Server time only.** Every state change is one Lua script that reads Redis `TIME`;
//!   producers and workers send durations, never timestamps, so their clocks do not matter.
//!   Their local [`Clock`] is only read to report skew ([`Queue::clock_skew`], a worker's
//!   start-up check); the `clock_skew` test injects offsets of minutes into it and checks that
//!   delays, backoff and timestamps still follow Redis time.
//! * **Cluster-safe.** Every key of a queue is `rt:q:{<queue>}:<structure>`: one hash tag,
//!   every key declared to the scripts.
//! * **Bounded.** Completed and dead jobs are trimmed by count and age ([`Retention`]); the
//!   event stream is capped ([`RedisStore::events_max_len`]).
//! * **Fast.** A busy worker settles finished jobs and fetches new ones in one round trip; an
//!   idle one blocks on one dedicated connection and polls as a watchdog.
//!
//! # When the store fails
//!
//! A store that has not made its first connection is not failing: calls wait for it (up to
//! the command timeout). After that:
//!
//! * **Adding** returns the error ([`Error::Redis`]); the job may or may not have been added,
//!   so retry with an [idempotency key](AddJob::idempotency_key) to get one job either way.
//! * **A worker** never stops on a store error: a failed exchange is sent again with the same
//!   request id after a backoff (100 ms, doubling, at most 5 s), so what it settled is
//!   reported once; running jobs go on, and their leases are extended again on the next
//!   tick. A job whose lease ran out meanwhile is fenced: its late result is ignored and it
//!   runs again. There is no circuit breaker: no caller is waiting to be failed fast.
//!
//! # Retries: nothing runs twice by accident
//!
//! The Redis client re-sends a command that was in flight when its connection dropped, so every
//! script that changes state is safe to run twice (each says how at its top):
//!
//! | script | changes state? | idempotent under re-send? | how |
//! |---|---|---|---|
//! | enqueue | yes | yes | every call carries a random id: its answer is kept for up to a minute and a re-send of the call is answered from it; a caller's idempotency key leaves a marker `key → id` for the [idempotency window](RedisStore::idempotency_window), so a retried add answers the first job's id |
//! | work (settle + fetch) | yes | yes | every request carries an id; its answer (settlement codes, leases handed out) is kept for its lease (10 s .. the window) and a re-send is answered from it; leases are fencing tokens, so without the record a re-send is fenced (stale), never a second settlement |
//! | extend | yes (deadlines) | yes | fenced by the lease token; a re-send sets the same deadline a moment later |
//! | admin: pause, resume | yes | yes | set / clear a flag |
//! | admin: remove, retry | yes | yes | a re-send finds the job already gone / no longer dead (answers `false`) |
//! | admin: time, counts, get, list | no | yes | read only |
//!
//! A worker re-sends a failed exchange with the same request id, so a settlement whose reply
//! was lost is reported once and its [`on_completed`](Worker::on_completed) /
//! [`on_failed`](Worker::on_failed) hooks run once; jobs a lost fetch leased are handed over by
//! the re-send (or, past the replay record, return after their lease). A caller that sets an
//! [idempotency key](AddJob::idempotency_key) may retry an add until it answers and get one
//! job. A job whose stored record does not decode (or holds a field out of range) is dead with
//! the reason; the batch it came with and the worker carry on.
//!
//! # Limits
//!
//! | what | default | setting |
//! |---|---|---|
//! | payload | 256 KiB | [`Queue::max_payload`] |
//! | priority | 0 ..= 1,048,575 | [`MAX_PRIORITY`] |
//! | dedup / idempotency key | 1024 bytes | (fixed) |
//! | idempotency keys kept | 5 min, about 120 bytes each | [`RedisStore::idempotency_window`] |
//! | add-call answers kept | 1 min, about 110 bytes + 8 per job | (at most the window) |
//! | work answers kept | the lease, 10 s .. the window; about 100 bytes + 40 per job | (follows the lease) |
//! | completed / dead jobs | 1,000 for 24 h / 10,000 for 30 days | [`Retention`] |
//! | events | about 1,000 entries | [`RedisStore::events_max_len`] |
//! | backoff delay | 1 h (exponential), never above 100 years | [`Backoff::max`] |
//! | lease, poll interval, grace, timeout | 30 s, 5 s, 10 s, none; at most a year | [`Worker`] |
//! | concurrency | 10; 1 ..= 100,000 | [`Worker::concurrency`] |
//!
//! # Redis
//!
//! Use `maxmemory-policy noeviction` (an evicted queue key loses jobs) and AOF for durability
//! across Redis restarts.
//!
//! # Examples
//!
//! In [`examples/`](https://github.com/redtower-rs/redtower/tree/main/crates/redtower-jobs/examples):
//!
//! * `email_queue.rs`: an axum producer (`POST /emails`, `GET /jobs/{id}`) and its
//!   [`Worker`] in one program, in process or over Redis (`REDIS_URL`);
//! * `crash_worker.rs`: a worker that hangs in its job, for the crash test (`tests/crash.rs`).
//!
//! # Metrics
//!
//! Through the [`metrics`] facade, labelled by `queue`: counters
//! `redtower_jobs_{enqueued,started,completed,failed,retried,dead,released,lease_lost}_total`,
//! histograms `redtower_jobs_wait_seconds` and `redtower_jobs_run_seconds`, and the gauge
//! `redtower_jobs_clock_skew_seconds` (a worker's clock minus the store's, set when it starts).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod error;
mod event;
mod handler;
mod job;
mod queue;
mod store;
mod worker;

pub use clock::{Clock, ClockSkew};
pub use error::{Error, Result};
pub use event::{EventKind, QueueEvent};
pub use handler::{Handler, JobContext, JobError, JobRequest, ServiceHandler};
pub use job::{Backoff, Job, JobId, JobInfo, JobState};
pub use queue::{AddJob, JobOptions, MAX_PRIORITY, Queue};
pub use store::{
    Counts, Enqueued, Fetched, Lease, MemoryStore, NewJob, QueueStore, RedisStore, Retention,
    Settle, Settled, Waiter, WorkReply, WorkRequest,
};
pub use worker::{Finished, Outcome, ShutdownReport, Worker, WorkerHandle};
