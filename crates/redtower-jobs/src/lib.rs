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
//! | schedule: upsert, remove | yes | yes | a re-send finds the spec it stored / nothing to delete |
//! | schedule: fire | yes | yes | compare-and-set on the version and next tick read: a re-send finds the next tick moved on and adds nothing; each tick's job also leaves a marker (scheduler id + tick time) for the idempotency window |
//! | schedule: due, list | no | yes | read only |
//! | output (progress, result) | yes (one field of the job) | yes | fenced by the lease token: a holder's re-send writes the same value again (a handler's calls are sequential, so it never lands after a later one); a lease that no longer holds the job writes nothing |
//!
//! A worker re-sends a failed exchange with the same request id, so a settlement whose reply
//! was lost is reported once and its [`on_completed`](Worker::on_completed) /
//! [`on_failed`](Worker::on_failed) hooks run once; jobs a lost fetch leased are handed over by
//! the re-send (or, past the replay record, return after their lease). A caller that sets an
//! [idempotency key](AddJob::idempotency_key) may retry an add until it answers and get one
//! job. A job whose stored record does not decode (or holds a field out of range) is dead with
//! the reason; the batch it came with and the worker carry on.
//!
//! # Job schedulers
//!
//! [`Queue::schedule`] stores a scheduler (upsert by id): on every tick of a [`Schedule`]
//! ([`every`](Schedule::every) interval, or a [`cron`](Schedule::cron) expression in a time
//! zone; optional start, end and run limit) one job is added, exactly once per tick across any
//! number of processes. Every [`Worker`] fires its queue's due ticks (or call
//! [`Queue::run_schedulers`]); ticks missed while no process ran are dropped, or the last one
//! or all within a bound are added ([`CatchUp`]).
//!
//! **How a tick is exactly once.** A pass reads the due schedulers together with the store's
//! time (Redis `TIME`: local clocks never decide), computes the ticks to fire and the next
//! one in process (cron, time zone, catch-up, limit), then fires them in one script that
//! compare-and-sets the scheduler's version and next tick against what it read, adds one job
//! per tick and stores the next tick and run count, atomically. Two processes that read the
//! same tick: the second fire fails the check and adds nothing. A process killed between
//! reading and firing changed nothing: the next pass of any process fires the tick. A fire
//! re-sent by the client fails the check too, and each tick's job leaves a marker
//! `rt:q:{<queue>}:tick:<scheduler>:<tick ms>` naming it, so no replay adds it twice. The
//! scheduler's keys (`:sspec`, `:snext`, `:sstate`) share the queue's hash tag (Cluster-safe).
//! The `schedule_chaos` test runs three scheduler processes killed with `SIGKILL` at random
//! (now and then all three at once) over 200 ticks of 50 ms: 200 jobs, one per tick.
//!
//! ```
//! use std::time::Duration;
//! use redtower_jobs::{CatchUp, Job, MemoryStore, Queue, Schedule};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Report;
//! # impl Job for Report { const NAME: &'static str = "report"; }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), redtower_jobs::Error> {
//! let reports = Queue::<Report>::new(MemoryStore::new(), "reports");
//! let weekdays = Schedule::cron("0 0 8 * * MON-FRI")?
//!     .time_zone(redtower_jobs::chrono_tz::America::New_York)
//!     .catch_up(CatchUp::Last); // after an outage, one report, not a burst
//! reports.schedule("morning-report", weekdays, Report).await?;
//! // Every process may upsert the same scheduler at start-up: nothing changes.
//! # let weekdays = Schedule::cron("0 0 8 * * MON-FRI")?
//! #     .time_zone(redtower_jobs::chrono_tz::America::New_York)
//! #     .catch_up(CatchUp::Last);
//! assert!(!reports.schedule("morning-report", weekdays, Report).await?);
//! let list = reports.schedulers().await?;
//! assert_eq!(list[0].id, "morning-report");
//! assert!(list[0].next.is_some());
//! reports.remove_scheduler("morning-report").await?;
//! # Ok(()) }
//! ```
//!
//! # Progress, results and job events
//!
//! A handler reports progress with [`JobContext::progress`] (a number or a small JSON value)
//! and may return a value (`Result<T: Serialize, JobError>`; `()` stores nothing): both are
//! stored with the job, fenced by the attempt's lease, shown by [`Queue::get`]
//! ([`JobInfo::progress`], [`JobInfo::result`]) and trimmed with it by [`Retention`].
//! [`Queue::wait`] returns the result (typed), the failure of a dead job, or a timeout.
//! [`Worker::events`] sends each job's events (progress, completed, retried, failed) to a
//! [`JobEvents`] sink of yours; the `redtower` facade has one that publishes them per job
//! over `redtower-pubsub`, resumable by browsers over SSE.
//!
//! ```
//! use std::time::Duration;
//! use redtower_jobs::{Job, JobContext, JobError, JobEvent, MemoryStore, Queue, Worker};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Export { rows: u32 }
//! # impl Job for Export { const NAME: &'static str = "export"; }
//!
//! async fn export(job: Export, ctx: JobContext) -> Result<String, JobError> {
//!     for done in [25, 50, 75, 100] {
//!         ctx.progress(done).await?; // percent
//!     }
//!     Ok(format!("s3://exports/{}-rows.csv", job.rows))
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let exports = Queue::<Export>::new(store.clone(), "exports");
//! let worker = Worker::new(store, "exports")
//!     .handle::<Export>(export)
//!     .events(|e: &JobEvent| println!("{}", serde_json::to_string(e).unwrap()))
//!     .start();
//! let id = exports.add(Export { rows: 10 }).await?;
//! let url: String = exports.wait(&id, Duration::from_secs(60)).await?;
//! assert_eq!(url, "s3://exports/10-rows.csv");
//! worker.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! On Redis the values live in the queue's jobs hash next to the record (`p:<id>`,
//! `r:<id>`), so they share its hash tag and go with it (trimming, removal). A wait listens to
//! the queue's event stream (one reader per [`Queue`] handle, shared by its waits) and
//! re-reads its job when an event names it, or every second as a net: a wait longer than the
//! retention of finished jobs ends in [`WaitError::Gone`], never a failure.
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
//! | scheduler id | 1024 bytes | (fixed) |
//! | ticks added per scheduler and pass (catch-up) | 100, the rest on the next passes | (fixed) |
//! | scheduler passes of a worker | at the earliest next tick, at least every poll interval | [`Worker::schedulers`] |
//! | tick markers kept | the idempotency window, about 100 bytes each | [`RedisStore::idempotency_window`] |
//! | progress value | 4 KiB of JSON ([`Error::ValueTooLarge`] beyond), the last one kept per job | [`MAX_PROGRESS_BYTES`] |
//! | result | 64 KiB of JSON (the attempt fails for good beyond), kept with the job | [`MAX_RESULT_BYTES`] |
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
//! `redtower_jobs_{enqueued,scheduled,started,completed,failed,retried,dead,released,lease_lost}_total`,
//! histograms `redtower_jobs_wait_seconds` and `redtower_jobs_run_seconds`, and the gauge
//! `redtower_jobs_clock_skew_seconds` (a worker's clock minus the store's, set when it starts).
//!
//! # Tracing
//!
//! Spans, under the target `redtower::jobs`, at INFO, with low-cardinality fields only (the
//! job id is on the job's own spans):
//!
//! | span | when | fields |
//! |---|---|---|
//! | `redtower.jobs.enqueue` | one [`Queue::add`] / [`add_bulk`](Queue::add_bulk) call | `queue`, `job.name`, `job.count`, `otel.kind = producer`; recorded at the end: `job.id` (single adds), `outcome` = `new` \| `duplicate` \| `existing` \| `error` |
//! | `redtower.jobs.run` | one attempt, from fetch to settlement; the handler runs in it | `queue`, `job.name`, `job.id`, `job.attempt`, `otel.kind = consumer`; recorded once settled: `outcome` = `completed` \| `retrying` \| `dead` \| `released` \| `lease_lost`, and `otel.status_code = error` for a failed attempt |
//! | `redtower.jobs.hook` | one [`on_completed`](Worker::on_completed) / [`on_failed`](Worker::on_failed) hook, a child of the attempt's span | `hook` = `completed` \| `failed` |
//!
//! An attempt's span is a root in the worker's process (it is not a child of the worker's
//! loop). With the `opentelemetry` feature, each job carries the W3C trace context of the
//! span that added it (`traceparent` and `tracestate`, in the record's `tc` field as one line
//! of at most 568 bytes, see [`TraceContext`](redtower_client::TraceContext)), and each
//! attempt's span is that span's child in OpenTelemetry: the request that enqueued a job and
//! every attempt of it, on any worker, are one trace. Without the feature nothing is stored.
//! Records written without the field (older ones, producers without the feature) load as
//! before, and a stored context that is not valid is ignored: it never fails the job.
//!
//! # Features
//!
//! * `opentelemetry`: store and restore W3C trace context (above), through
//!   `redtower-client/opentelemetry` (opentelemetry 0.33, tracing-opentelemetry 0.34). The app
//!   installs the OpenTelemetry layer and exporter.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod error;
mod event;
mod handler;
mod job;
mod progress;
mod queue;
mod schedule;
mod store;
mod worker;

/// Time zones for [`Schedule::time_zone`] (the `chrono-tz` crate).
pub use chrono_tz;
pub use clock::{Clock, ClockSkew};
pub use error::{Error, Result};
pub use event::{EventKind, QueueEvent};
pub use handler::{Handler, JobContext, JobError, JobRequest, ServiceHandler};
pub use job::{Backoff, Job, JobId, JobInfo, JobState};
pub use progress::{
    JobEvent, JobEventKind, JobEvents, MAX_PROGRESS_BYTES, MAX_RESULT_BYTES, OutputKind, WaitError,
};
pub use queue::{AddJob, JobOptions, MAX_PRIORITY, Queue};
pub use schedule::{
    CatchUp, Fire, Schedule, SchedulerInfo, SchedulerPass, SchedulerSpec, StoredScheduler,
};
pub use store::{
    Counts, Enqueued, Fetched, Lease, MemoryStore, NewJob, QueueStore, RedisStore, Retention,
    Settle, Settled, Waiter, WorkReply, WorkRequest,
};
pub use worker::{Finished, Outcome, ShutdownReport, Worker, WorkerHandle};
