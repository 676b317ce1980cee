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
//! | enqueue | yes | yes | every call (an `add_bulk`, or the single adds coalesced into it) carries a random id: its answer is kept for up to a minute and a re-send of the call is answered from it; a caller's idempotency key leaves a marker `key → id` for the [idempotency window](RedisStore::idempotency_window), so a retried add answers the first job's id (a flow's children carry keys derived from their parent and child key, so adding them again adds each once) |
//! | work (settle + fetch) | yes | yes | every request carries an id; its answer (settlement codes, leases handed out) is kept for its lease (10 s .. the window) and a re-send is answered from it; leases are fencing tokens, so without the record a re-send is fenced (stale), never a second settlement |
//! | extend | yes (deadlines) | yes | fenced by the lease token; a re-send sets the same deadline a moment later |
//! | admin: pause, resume | yes | yes | set / clear a flag |
//! | admin: remove, retry | yes | yes | a re-send finds the job already gone / no longer dead (answers `false`) |
//! | admin: time, counts, get, list | no | yes | read only |
//! | schedule: upsert | yes | yes | every call (one upsert, or concurrent ones coalesced) carries a random id: its answers are kept for up to a minute and a re-send of the call is answered from them, adding no job |
//! | schedule: remove | yes | yes | a re-send finds nothing to delete |
//! | schedule: fire | yes | yes | compare-and-set on the version and next tick read: a re-send finds the next tick moved on and adds nothing; each tick's job also leaves a marker (scheduler id + tick time) for the idempotency window |
//! | schedule: due, list | no | yes | read only |
//! | flow: parent | yes | yes | the parent's idempotency key ([`Flow::id`]) or, without one, a random id per call leaves a marker naming the parent: a re-send answers it and adds nothing |
//! | flow: seal | yes | yes | removes the parent from the unsealed set: a re-send finds it gone |
//! | flow: take (outbox) | yes (lease times) | yes | a re-send leases the same messages again: a message is only ever delivered again, never lost |
//! | flow: deliver | yes | yes | each child's dependency is resolved once (its field is no longer pending after the first delivery), and a parent that no longer waits is skipped: a re-send or a re-delivery changes nothing |
//! | flow: ack | yes | yes | deletes messages: a re-send finds them gone |
//! | flow: unsealed | no | yes | read only |
//! | work, admin remove (flow children) | yes | yes | a flow child's final state is written to its outbox in the same script that makes it final, under the script's own guard above |
//! | work: rate-limited settle ([`JobError::rate_limited`], a [`StartLimiter`]'s refusal) | yes | yes | fenced by the lease token like every settlement (a re-send is answered from the request's record, or is stale); the queue's hold is the latest of the deadlines set, so setting it again changes nothing |
//! | work: queue limits and fair groups | yes (rate state, group counts) | yes | the rate state and group counts move only with the jobs handed out, which a re-send answers from the request's record without fetching again |
//! | enqueue: group turns | yes | yes | part of the add, under its call marker |
//! | admin: set limits | yes | yes | stores the same values again |
//! | admin: get limits | no | yes | read only |
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
//! or all within a bound are added ([`CatchUp`]). Storing a scheduler is one round trip for
//! `every` without a start or an end: its first tick is the store's time as the upsert runs,
//! and the upsert adds that tick's job in the same atomic step ([`FirstTick::Now`]), so the
//! first job is queued when [`Queue::schedule`] returns. Other schedules read the store's
//! clock first to compute their first tick, which a pass fires. Concurrent upserts on one
//! [`RedisStore`] share script calls, and a pass fires all its due schedulers in one call.
//!
//! **How a tick is exactly once.** A pass reads the due schedulers together with the store's
//! time (Redis `TIME`: local clocks never decide), computes the ticks to fire and the next
//! one in process (cron, time zone, catch-up, limit), then fires them in one script that
//! compare-and-sets the scheduler's version and next tick against what it read, adds one job
//! per tick and stores the next tick and run count, atomically. Two processes that read the
//! same tick: the second fire fails the check and adds nothing. A process killed between
//! reading and firing changed nothing: the next pass of any process fires the tick. A fire
//! re-sent by the client fails the check too, and each tick's job leaves a marker
//! `rt:q:{<queue>}:tick:<scheduler>:<tick ms>` naming it, so no replay adds it twice. The first
//! tick of an `every` without a start or an end is the upsert's own: the script that stores a
//! new or changed spec adds its job and stores the next tick in the same step (no tick marker),
//! and a re-sent upsert call is answered from its call marker and adds nothing. The scheduler's keys (`:sspec`, `:snext`,
//! `:sstate`) share the queue's hash tag (Cluster-safe). The `schedule_chaos` test runs three
//! scheduler processes, each upserting the scheduler as it starts, killed with `SIGKILL` at
//! random (now and then all three at once) over 200 ticks of 50 ms: 200 jobs, one per tick.
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
//! # Flows
//!
//! A [`Flow`] is a parent job that runs once its children are final, like BullMQ's
//! `FlowProducer`. Children may be on other queues; each has a key, unique in the flow, and a
//! [`ChildFailure`] policy: fail the parent at once (the default), ignore the failure, or
//! continue with partial results once every child is final. A child hands a value to its
//! parent with [`JobContext::set_flow_result`]; the parent reads every child's outcome with
//! [`JobContext::children`] (or one with [`JobContext::child_result`]). While it waits, the
//! parent is in [`JobState::WaitingChildren`] (listed and counted like other states).
//!
//! ```
//! use redtower_jobs::{ChildFailure, Flow, Job, JobContext, JobError, JobOptions, MemoryStore, Queue, Worker};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Invoice { order: u64 }
//! # impl Job for Invoice { const NAME: &'static str = "invoice"; }
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Price { sku: String }
//! # impl Job for Price { const NAME: &'static str = "price"; }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), redtower_jobs::Error> {
//! let store = MemoryStore::new();
//! let invoices = Queue::<Invoice>::new(store.clone(), "invoices");
//! let prices = Queue::<Price>::new(store.clone(), "prices");
//! let ids = Flow::new(&invoices, Invoice { order: 7 })
//!     .child("tea", &prices, Price { sku: "tea".into() })
//!     // A missing price is not fatal: the invoice is made without it.
//!     .child_with("gift", &prices, Price { sku: "gift".into() }, JobOptions::new().attempts(1), ChildFailure::Continue)
//!     .add()
//!     .await?;
//!
//! let w1 = Worker::new(store.clone(), "prices")
//!     .handle::<Price>(|p: Price, ctx: JobContext| async move {
//!         if p.sku == "gift" { return Err(JobError::fatal("no price")); }
//!         ctx.set_flow_result(&450u32)?;
//!         Ok(())
//!     })
//!     .start();
//! let w2 = Worker::new(store.clone(), "invoices")
//!     .handle::<Invoice>(|_: Invoice, ctx: JobContext| async move {
//!         let tea: Option<u32> = ctx.child_result("tea");
//!         assert_eq!(tea, Some(450));
//!         assert_eq!(ctx.children().len(), 2); // "gift" is there, as failed
//!         Ok(())
//!     })
//!     .start();
//! # tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//! # assert_eq!(invoices.get(&ids.parent).await?.unwrap().state, redtower_jobs::JobState::Completed);
//! # w1.shutdown().await?; w2.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! **How queues are coordinated without cross-slot scripts.** Every queue has its own hash
//! tag, so no script touches two queues. A flow is a small saga of single-queue steps:
//!
//! 1. *Parent* (on the parent's queue `P`): one script adds the parent record in
//!    `WaitingChildren` (`rt:q:{P}:fwait`), one dependency field per child in
//!    `rt:q:{P}:fdeps` (`<parent>␀<key>` → pending with its policy, `<parent>␀#` → the count
//!    still pending) and marks the flow unsealed (`:funseal`, the child specs kept in the
//!    parent record).
//! 2. *Children* (one enqueue per child queue `C`): each child's record names its parent
//!    (queue, id, key); its idempotency key is derived from the parent and the key.
//! 3. *Seal* (on `P`): drops the specs.
//!
//! When a child becomes final (completed, dead from failures or lost leases, or removed before
//! it finished), the script that makes it final also writes a message to *its own* queue's
//! outbox (`rt:q:{C}:fout` and `:fmsg`). A relay, which every worker of `C` runs right after it
//! settles a flow child and every poll interval, takes due messages (leasing them for 5 s),
//! delivers them to `P` with one script per parent queue, then acknowledges them on `C`. The
//! delivery resolves each child once: a dependency no longer pending, or a parent no longer
//! waiting, is skipped. When the last one resolves, the outcomes move into the parent's record
//! and the parent becomes ready; a failure under [`ChildFailure::FailParent`] makes it dead at
//! once.
//!
//! **Crashes and re-sends are harmless.** A process killed after a child became final and
//! before the relay: the message waits in the outbox for any worker of `C`. Killed after the
//! delivery and before the acknowledgement: the message comes back after its lease and its
//! second delivery changes nothing. A re-sent script finds the same guards. A creator killed
//! after step 1: a worker of `P` finds the flow unsealed after
//! [`Worker::flow_unsealed_after`] (30 s) and adds the missing children from the stored specs
//! (idempotency keys make the ones already added count once), then seals it. Re-adding a flow
//! with the same [`Flow::id`] returns its ids. The `flow_chaos` test runs 300 flows of 6
//! children through three worker processes killed with `SIGKILL` at random: every parent
//! completes, none before its children, none more often than its lost leases explain.
//!
//! **BullMQ traps, and what happens here.** A failed child never strands its parent (there is
//! always a policy, and stall deaths and removals count as failures); a removed child is a
//! final state the parent hears about; a child retried after its parent was removed runs to
//! the end and its report is dropped; a `Continue` parent waits for every child (it is not
//! released by the first failure). Retrying a dead child by hand does not revive a parent that
//! failed; retry the parent.
//!
//! Limits: up to [`MAX_CHILDREN`] children per flow, results up to [`MAX_CHILD_RESULT`]; a
//! flow is one level (a parent is not itself a child of another flow).
//!
//! # Quotas: rate, concurrency, fair groups, one budget with HTTP
//!
//! * [`Queue::set_limits`] stores a queue-wide start rate and a concurrency limit (across all
//!   workers on any number of processes) and a per-group concurrency limit. The work script
//!   enforces them atomically with Redis `TIME`: a fetch takes only what fits and the reply
//!   says when the next start fits, so workers sleep exactly that long; waiting jobs use no
//!   attempt. See [`QueueLimits`].
//! * A handler returns [`JobError::rate_limited`] when an upstream says "come back later":
//!   the job waits that long without using an attempt, and with
//!   [`pause_queue`](JobError::pause_queue) the whole queue waits too.
//! * [`AddJob::group`] puts a job in a fair group (a tenant, a user): groups take turns, so a
//!   burst of one does not delay the others.
//! * A [`StartLimiter`] on a worker ([`Worker::start_limiter`]) is asked before each job
//!   starts: the facade crate `redtower` (features `jobs` and `ratelimit`) implements it over
//!   a `redtower-ratelimit` policy, so one quota covers an HTTP route and a queue's jobs.
//!
//! ```
//! use std::time::Duration;
//! use redtower_jobs::{Job, JobContext, JobError, MemoryStore, Queue, QueueLimits, Worker};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Export { user: u32 }
//! # impl Job for Export { const NAME: &'static str = "export"; }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), redtower_jobs::Error> {
//! let store = MemoryStore::new();
//! let exports = Queue::<Export>::new(store.clone(), "exports");
//! // 10 starts a second and 4 at once across all workers; one running export per user.
//! exports
//!     .set_limits(QueueLimits::new().rate(10, Duration::from_secs(1)).concurrency(4).group_concurrency(1))
//!     .await?;
//! for user in [1, 1, 1, 2] {
//!     exports.add(Export { user }).group(format!("user-{user}")).await?;
//! }
//! let worker = Worker::new(store, "exports")
//!     .handle::<Export>(|_e: Export, _c: JobContext| async { Ok::<(), JobError>(()) })
//!     .start();
//! tokio::time::sleep(Duration::from_secs(2)).await;
//! assert_eq!(exports.counts().await?.completed, 4);
//! worker.shutdown().await?;
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
//! | events | about 1,000 entries (the completions of one work exchange, or the adds of one call, share an entry: up to 100 events each) | [`RedisStore::events_max_len`] |
//! | single adds sharing one enqueue call | 200, two calls on the wire at a time | [`RedisStore::coalesce_adds`] |
//! | backoff delay | 1 h (exponential), never above 100 years | [`Backoff::max`] |
//! | lease, poll interval, grace, timeout | 30 s, 5 s, 10 s, none; at most a year | [`Worker`] |
//! | concurrency | 10; 1 ..= 100,000 | [`Worker::concurrency`] |
//! | scheduler id | 1024 bytes | (fixed) |
//! | ticks added per scheduler and pass (catch-up) | 100, the rest on the next passes | (fixed) |
//! | scheduler passes of a worker | at the earliest next tick, at least every poll interval | [`Worker::schedulers`] |
//! | tick markers kept | the idempotency window, about 100 bytes each | [`RedisStore::idempotency_window`] |
//! | children per flow | 1 ..= 1,000 | [`MAX_CHILDREN`] |
//! | child key | 1 ..= 256 bytes, no NUL | [`MAX_CHILD_KEY`] |
//! | a child's result for its parent | 64 KiB of JSON | [`MAX_CHILD_RESULT`] |
//! | a waiting parent's dependencies | one hash field per child (its result once resolved), deleted when the parent is released, fails or is removed | (follows the flow) |
//! | outbox messages | one per flow child that finished and is not yet relayed (its result included) | (relayed within a poll interval) |
//! | flow re-added by [`Flow::id`] | within the idempotency window | [`RedisStore::idempotency_window`] |
//! | half-added flow finished by a worker | after 30 s | [`Worker::flow_unsealed_after`] |
//! | queue start rate | none; 1 ..= 2^32 - 1 starts per 1 ms ..= a year | [`QueueLimits::rate`] |
//! | queue concurrency (all workers) | none; at least 1 | [`QueueLimits::concurrency`] |
//! | running jobs per group | none; at least 1 | [`QueueLimits::group_concurrency`] |
//! | group name | 256 bytes, no bytes 0 or 1 | [`MAX_GROUP_LEN`] |
//! | group state | one turn entry per group with jobs ahead of the queue's turn; while a per-group limit is set, one count per group with running jobs, one entry per running grouped job and per held job | (follows the jobs) |
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
//! * `crash_worker.rs`: a worker that hangs in its job, for the crash test (`tests/crash.rs`);
//! * `flow_instance.rs`: the worker process of the flow chaos test (`tests/flow_chaos.rs`).
//!
//! # Metrics
//!
//! Through the [`metrics`] facade, labelled by `queue`: counters
//! `redtower_jobs_{enqueued,scheduled,started,completed,failed,retried,dead,released,lease_lost}_total`,
//! `redtower_jobs_flows_added_total`,
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
//! | `redtower.jobs.flow` | one [`Flow::add`] call | `queue` and `job.name` (the parent's), `flow.children`, `otel.kind = producer`; recorded at the end: `job.id` (the parent's), `outcome` = `new` \| `existing` \| `error` |
//! | `redtower.jobs.run` | one attempt, from fetch to settlement; the handler runs in it | `queue`, `job.name`, `job.id`, `job.attempt`, `otel.kind = consumer`; recorded once settled: `outcome` = `completed` \| `retrying` \| `dead` \| `released` \| `lease_lost`, and `otel.status_code = error` for a failed attempt |
//! | `redtower.jobs.hook` | one [`on_completed`](Worker::on_completed) / [`on_failed`](Worker::on_failed) hook, a child of the attempt's span | `hook` = `completed` \| `failed` |
//!
//! An attempt's span is a root in the worker's process (it is not a child of the worker's
//! loop). With the `opentelemetry` feature, each job carries the W3C trace context of the
//! span that added it (`traceparent` and `tracestate`, in the record's `tc` field as one line
//! of at most 568 bytes, see [`TraceContext`](redtower_client::TraceContext)), and each
//! attempt's span is that span's child in OpenTelemetry: the request that enqueued a job and
//! every attempt of it, on any worker, are one trace. A flow's parent and children carry the
//! context of its `redtower.jobs.flow` span (kept with the child specs, so children a worker
//! adds to a half-added flow join it too): the request, the children's attempts and the
//! parent's are one trace. Without the feature nothing is stored.
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
mod flow;
mod handler;
mod job;
mod progress;
mod queue;
mod quota;
mod schedule;
mod store;
mod worker;

/// The `async-trait` crate, for implementing [`StartLimiter`] (and the store traits).
pub use async_trait;
/// Time zones for [`Schedule::time_zone`] (the `chrono-tz` crate).
pub use chrono_tz;
pub use clock::{Clock, ClockSkew};
pub use error::{Error, Result};
pub use event::{EventKind, QueueEvent};
pub use flow::{
    ChildFailure, ChildOutcome, ChildResult, ChildStatus, Flow, FlowDep, FlowIds, FlowMessage,
    FlowParent, MAX_CHILD_KEY, MAX_CHILD_RESULT, MAX_CHILDREN, RelayReport,
};
pub use handler::{Handler, JobContext, JobError, JobRequest, ServiceHandler};
pub use job::{Backoff, Job, JobId, JobInfo, JobState};
pub use progress::{
    JobEvent, JobEventKind, JobEvents, MAX_PROGRESS_BYTES, MAX_RESULT_BYTES, OutputKind, WaitError,
};
pub use queue::{AddJob, JobOptions, MAX_PRIORITY, Queue};
pub use quota::{JobStart, MAX_GROUP_LEN, QueueLimits, StartDecision, StartLimiter};
pub use schedule::{
    CatchUp, Fire, FirstTick, Schedule, SchedulerInfo, SchedulerPass, SchedulerSpec,
    StoredScheduler,
};
pub use store::{
    Counts, Enqueued, Fetched, Lease, MemoryStore, NewJob, QueueStore, RedisStore, Retention,
    Settle, Settled, Waiter, WorkReply, WorkRequest,
};
pub use worker::{Finished, Outcome, ShutdownReport, Worker, WorkerHandle};
