//! [`Queue`]: the typed producer and admin handle of one queue.

use std::{
    fmt,
    future::{Future, IntoFuture},
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures::stream::BoxStream;
use tracing::Instrument;

use crate::{
    Error, Result,
    clock::{Clock, ClockSkew},
    event::QueueEvent,
    job::{Backoff, Job, JobId, JobInfo, JobState},
    schedule::{FirstTick, Schedule, SchedulerInfo, SchedulerPass, SchedulerSpec},
    store::{Counts, Enqueued, NewJob, QueueStore},
};

/// Per-add options; unset ones take the queue's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Delay before the job becomes ready. Defaults to none.
    pub delay: Option<Duration>,
    /// The attempt limit. Defaults to the queue's (3).
    pub attempts: Option<u32>,
    /// The retry schedule. Defaults to the queue's (exponential from 1 s).
    pub backoff: Option<Backoff>,
    /// `0` is the most urgent, at most [`MAX_PRIORITY`]. Defaults to `0`.
    pub priority: Option<u32>,
    /// A dedup key: while a job with this key is unfinished, adding another returns its id.
    pub unique_key: Option<String>,
    /// The idempotency key of this add: adding again with the same key within the store's
    /// idempotency window returns the first job's id and adds nothing, whatever happened to
    /// the job since. Defaults to a random key per add (which makes the client's own re-send
    /// of a request whose reply was lost harmless). At most 1024 bytes.
    pub idempotency_key: Option<String>,
    /// The job's fair group (e.g. a tenant id): workers take jobs round-robin across groups,
    /// so one group's burst does not starve the others (see
    /// [`QueueLimits::group_concurrency`](crate::QueueLimits::group_concurrency) for a cap per
    /// group). At most 256 bytes, without the bytes 0 and 1. Defaults to none.
    pub group: Option<String>,
}

/// The largest priority value (the least urgent).
pub const MAX_PRIORITY: u32 = (1 << 20) - 1;

impl JobOptions {
    /// Options with everything unset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`delay`](Self::delay).
    #[must_use]
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Sets [`attempts`](Self::attempts).
    #[must_use]
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = Some(n);
        self
    }

    /// Sets [`backoff`](Self::backoff).
    #[must_use]
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = Some(b);
        self
    }

    /// Sets [`priority`](Self::priority).
    #[must_use]
    pub fn priority(mut self, p: u32) -> Self {
        self.priority = Some(p);
        self
    }

    /// Sets [`unique_key`](Self::unique_key).
    #[must_use]
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Sets [`idempotency_key`](Self::idempotency_key).
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn QueueStore>,
    pub(crate) name: String,
    attempts: u32,
    backoff: Backoff,
    max_payload: usize,
    clock: Clock,
    /// The event reader shared by this handle's waits ([`Queue::wait`]).
    pub(crate) finished: Arc<crate::progress::FinishedWatch>,
}

/// The producer and admin handle of one queue for job type `J`. Cloning is cheap.
///
/// See the [crate docs](crate) for an example.
pub struct Queue<J> {
    pub(crate) shared: Arc<Shared>,
    _job: PhantomData<fn(J)>,
}

impl<J> Clone for Queue<J> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _job: PhantomData,
        }
    }
}

impl<J> fmt::Debug for Queue<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.shared.name)
            .field("store", &self.shared.store)
            .field("attempts", &self.shared.attempts)
            .field("backoff", &self.shared.backoff)
            .field("max_payload", &self.shared.max_payload)
            .field("clock", &self.shared.clock)
            .finish()
    }
}

impl<J: Job> Queue<J> {
    /// The queue `name` in `store`. Jobs of several types may share one queue name (one
    /// [`Worker`](crate::Worker) then handles them all).
    ///
    /// `store` is any [`QueueStore`]: a concrete one, or an `Arc<dyn QueueStore>` when the
    /// backend is chosen at run time:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use redtower_jobs::{Job, MemoryStore, Queue, QueueStore, RedisStore};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Job for Ping { const NAME: &'static str = "ping"; }
    ///
    /// # let redis: Option<redtower_client::Redis> = None;
    /// let store: Arc<dyn QueueStore> = match redis {
    ///     Some(redis) => Arc::new(RedisStore::new(redis)),
    ///     None => Arc::new(MemoryStore::new()),
    /// };
    /// let pings = Queue::<Ping>::new(store, "pings");
    /// # let _ = pings;
    /// ```
    pub fn new(store: impl QueueStore, name: impl Into<String>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                name: name.into(),
                attempts: 3,
                backoff: Backoff::default(),
                max_payload: 256 * 1024,
                clock: Clock::system(),
                finished: Arc::default(),
            }),
            _job: PhantomData,
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            f(s);
        } else {
            let old = &self.shared;
            let mut s = Shared {
                store: old.store.clone(),
                name: old.name.clone(),
                attempts: old.attempts,
                backoff: old.backoff,
                max_payload: old.max_payload,
                clock: old.clock.clone(),
                finished: old.finished.clone(),
            };
            f(&mut s);
            self.shared = Arc::new(s);
        }
        self
    }

    /// The default attempt limit of jobs added through this handle. Defaults to 3.
    #[must_use]
    pub fn default_attempts(self, n: u32) -> Self {
        self.edit(|s| s.attempts = n.max(1))
    }

    /// The default retry schedule. Defaults to [`Backoff::default`] (exponential from 1 s).
    #[must_use]
    pub fn default_backoff(self, b: Backoff) -> Self {
        self.edit(|s| s.backoff = b)
    }

    /// The largest serialized payload accepted by [`add`](Self::add), in bytes. Defaults to
    /// 256 KiB.
    #[must_use]
    pub fn max_payload(self, bytes: usize) -> Self {
        self.edit(|s| s.max_payload = bytes)
    }

    /// This producer's local wall clock. Defaults to [`Clock::system`].
    ///
    /// Adding a job never reads it: the delay is sent as a duration and the store stamps the
    /// job with its own time, so a producer whose clock is minutes off still gets exact delays.
    /// It is only read by [`clock_skew`](Self::clock_skew). See [`Clock`].
    #[must_use]
    pub fn clock(self, clock: Clock) -> Self {
        self.edit(|s| s.clock = clock)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn QueueStore> {
        &self.shared.store
    }

    /// Adds a job; set options on the returned builder, then `.await` it for the [`JobId`].
    /// Safe to retry with an [idempotency key](AddJob::idempotency_key) (see
    /// [`add_with`](Self::add_with)).
    ///
    /// ```
    /// # use redtower_jobs::{Job, Queue, MemoryStore, Backoff};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Job for Ping { const NAME: &'static str = "ping"; }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), redtower_jobs::Error> {
    /// let queue = Queue::<Ping>::new(MemoryStore::new(), "pings");
    /// let id = queue
    ///     .add(Ping)
    ///     .delay(Duration::from_secs(60))
    ///     .attempts(5)
    ///     .backoff(Backoff::fixed(Duration::from_secs(10)))
    ///     .priority(1)
    ///     .unique("ping-1")
    ///     .await?;
    /// // Same dedup key while the first is unfinished: same id.
    /// assert_eq!(queue.add(Ping).unique("ping-1").await?, id);
    /// # Ok(()) }
    /// ```
    pub fn add(&self, job: J) -> AddJob<'_, J> {
        AddJob {
            queue: self,
            job,
            options: JobOptions::default(),
        }
    }

    /// Adds a job with explicit options.
    ///
    /// # Retries
    ///
    /// Adding is safe to re-send: each add carries an idempotency key (random unless
    /// [`JobOptions::idempotency_key`] sets one), and the store adds nothing for a key it saw
    /// within its idempotency window, answering with the first job's id. So the client's own
    /// re-send of a request whose reply was lost never adds a second job; and a caller that
    /// sets the key may retry an add that failed or timed out, as often as it likes within
    /// the window, and gets one job.
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`], [`Error::Serialize`], [`Error::InvalidOption`], or a store
    /// error (the job may or may not have been added after a timeout: retry with the same
    /// idempotency key to find out without adding it twice).
    pub async fn add_with(&self, job: J, options: JobOptions) -> Result<JobId> {
        let span = enqueue_span(&self.shared.name, J::NAME, 1);
        let result = async {
            let new = self.prepare(&job, options)?;
            let mut out = self
                .shared
                .store
                .enqueue(&self.shared.name, vec![new])
                .await?;
            out.pop()
                .ok_or_else(|| Error::Protocol("empty enqueue reply".into()))
        }
        .instrument(span.clone())
        .await;
        let first = match result {
            Ok(first) => first,
            Err(e) => {
                span.record("outcome", "error");
                return Err(e);
            }
        };
        let id = first.id().clone();
        span.record("job.id", id.as_str());
        span.record("outcome", enqueued_outcome(&first));
        if matches!(first, Enqueued::New(_)) {
            metrics::counter!("redtower_jobs_enqueued_total", "queue" => self.shared.name.clone())
                .increment(1);
        }
        Ok(id)
    }

    /// Adds many jobs in one atomic step (one round trip for Redis). Returns one id per job, in
    /// order. The whole batch is checked before anything is sent.
    ///
    /// # Errors
    ///
    /// As [`add_with`](Self::add_with).
    pub async fn add_bulk(
        &self,
        jobs: impl IntoIterator<Item = (J, JobOptions)>,
    ) -> Result<Vec<JobId>> {
        let jobs: Vec<_> = jobs.into_iter().collect();
        let span = enqueue_span(&self.shared.name, J::NAME, jobs.len());
        let result = async {
            let batch = jobs
                .into_iter()
                .map(|(j, o)| self.prepare(&j, o))
                .collect::<Result<Vec<_>>>()?;
            self.shared.store.enqueue(&self.shared.name, batch).await
        }
        .instrument(span.clone())
        .await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                span.record("outcome", "error");
                return Err(e);
            }
        };
        let n = out.iter().filter(|e| matches!(e, Enqueued::New(_))).count();
        span.record("outcome", if n > 0 { "new" } else { "existing" });
        metrics::counter!("redtower_jobs_enqueued_total", "queue" => self.shared.name.clone())
            .increment(n as u64);
        Ok(out.into_iter().map(|e| e.id().clone()).collect())
    }

    /// The stored form of `job` with options `o`, checked (payload size, attempts, keys).
    pub(crate) fn prepare_job(&self, job: &J, o: JobOptions) -> Result<NewJob> {
        self.prepare(job, o)
    }

    fn prepare(&self, job: &J, o: JobOptions) -> Result<NewJob> {
        let data = serde_json::to_string(job).map_err(Error::Serialize)?;
        if data.len() > self.shared.max_payload {
            return Err(Error::PayloadTooLarge {
                size: data.len(),
                limit: self.shared.max_payload,
            });
        }
        let max_attempts = o.attempts.unwrap_or(self.shared.attempts);
        if max_attempts == 0 {
            return Err(Error::InvalidOption("attempts must be at least 1"));
        }
        let priority = o.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(Error::InvalidOption("priority is above MAX_PRIORITY"));
        }
        if o.unique_key.as_ref().is_some_and(|k| k.len() > 1024) {
            return Err(Error::InvalidOption("unique key is over 1024 bytes"));
        }
        if o.idempotency_key.as_ref().is_some_and(|k| k.len() > 1024) {
            return Err(Error::InvalidOption("idempotency key is over 1024 bytes"));
        }
        if let Some(g) = &o.group {
            crate::quota::check_group(g)?;
        }
        Ok(NewJob {
            name: J::NAME.to_owned(),
            data,
            max_attempts,
            backoff: o.backoff.unwrap_or(self.shared.backoff),
            priority,
            delay: o.delay.unwrap_or_default(),
            unique_key: o.unique_key,
            idempotency_key: o.idempotency_key,
            // The enqueue span's context (this runs inside it): the worker's span for the job
            // becomes its child.
            #[cfg(feature = "opentelemetry")]
            trace: redtower_client::TraceContext::current(),
            #[cfg(not(feature = "opentelemetry"))]
            trace: None,
            flow_parent: None,
            group: o.group,
        })
    }
}

impl<J: Job> Queue<J> {
    /// Creates or updates the job scheduler `id` of this queue: on every tick of `schedule`,
    /// `job` is added (exactly once per tick, whatever the number of processes running
    /// schedulers; see [`Schedule`] and the crate docs, "Job schedulers"). Upsert by id: calling
    /// it again with the same schedule and job (every process does at start-up) changes
    /// nothing, and the scheduler keeps its next tick and run count; a changed schedule or job
    /// replaces it and starts afresh (run count 0, first tick computed from now; for `every`
    /// without a start or an end, that tick's job is added at once, see below). Returns
    /// whether anything changed.
    ///
    /// [`Schedule::every`] without a start or an end ticks first as the upsert runs: the
    /// upsert adds that job itself, atomically (as BullMQ's `upsertJobScheduler` does), so it
    /// is queued when this returns. Later ticks are fired by [`Worker`](crate::Worker)s of the
    /// queue (any of them; see [`Worker::schedulers`](crate::Worker::schedulers)) or by
    /// [`run_schedulers`](Self::run_schedulers).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_jobs::{Job, MemoryStore, Queue, Schedule};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Sweep;
    /// # impl Job for Sweep { const NAME: &'static str = "sweep"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), redtower_jobs::Error> {
    /// let sweeps = Queue::<Sweep>::new(MemoryStore::new(), "maintenance");
    /// sweeps.schedule("abandoned-orders", Schedule::every(Duration::from_secs(60)), Sweep).await?;
    /// assert_eq!(sweeps.counts().await?.ready, 1); // the first tick's job
    /// # Ok(()) }
    /// ```
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_jobs::{Job, JobContext, JobError, MemoryStore, Queue, Schedule, Worker};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Sweep;
    /// # impl Job for Sweep { const NAME: &'static str = "sweep"; }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), redtower_jobs::Error> {
    /// let store = MemoryStore::new();
    /// let sweeps = Queue::<Sweep>::new(store.clone(), "maintenance");
    /// // Every minute; BullMQ's upsertJobScheduler('sweep', { every: 60000 }, ...).
    /// sweeps.schedule("abandoned-orders", Schedule::every(Duration::from_secs(60)), Sweep).await?;
    /// // Or on a cron expression in a time zone:
    /// let nightly = Schedule::cron("0 30 3 * * *")?.time_zone(redtower_jobs::chrono_tz::Europe::Paris);
    /// sweeps.schedule("nightly", nightly, Sweep).await?;
    ///
    /// let worker = Worker::new(store.clone(), "maintenance")
    ///     .handle::<Sweep>(|_: Sweep, _: JobContext| async { Ok::<(), JobError>(()) })
    ///     .start();
    /// tokio::time::sleep(Duration::from_secs(150)).await; // paused clock: instant
    /// assert_eq!(sweeps.counts().await?.completed, 3); // ticks at 0, 60 and 120 s
    /// let list = sweeps.schedulers().await?;
    /// assert_eq!(list.len(), 2);
    /// assert_eq!(list[0].id, "abandoned-orders");
    /// assert_eq!(list[0].count, 3);
    /// worker.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`add_with`](Self::add_with) (the job is checked the same way), and store errors.
    pub async fn schedule(&self, id: &str, schedule: Schedule, job: J) -> Result<bool> {
        self.schedule_with(id, schedule, job, JobOptions::default())
            .await
    }

    /// [`schedule`](Self::schedule) with options for every job it adds (attempts, backoff,
    /// priority; a delay, dedup or idempotency key is refused: each tick a pass fires has its
    /// own marker, derived from the scheduler and the tick, and the first tick of an `every`
    /// is added by the upsert itself).
    ///
    /// # Errors
    ///
    /// As [`schedule`](Self::schedule); [`Error::InvalidOption`] for a delay, dedup key or
    /// idempotency key, or a scheduler id over 1024 bytes.
    pub async fn schedule_with(
        &self,
        id: &str,
        schedule: Schedule,
        job: J,
        options: JobOptions,
    ) -> Result<bool> {
        if options.delay.is_some()
            || options.unique_key.is_some()
            || options.idempotency_key.is_some()
        {
            return Err(Error::InvalidOption(
                "a scheduled job takes no delay, dedup key or idempotency key",
            ));
        }
        if id.len() > 1024 {
            return Err(Error::InvalidOption("scheduler id is over 1024 bytes"));
        }
        let job = self.prepare(&job, options)?;
        let spec = SchedulerSpec {
            schedule,
            name: job.name,
            data: job.data,
            max_attempts: job.max_attempts,
            backoff: job.backoff,
            priority: job.priority,
        };
        let text = serde_json::to_string(&spec).map_err(Error::Serialize)?;
        // The first tick, from the store's clock: `every` without a start or an end ticks first
        // when the upsert runs, which adds that tick's job; other schedules read the clock
        // first (through the queue, so on its node).
        let first = match spec.schedule.first_tick_now(|| spec.job()) {
            Some(first) => first,
            None => {
                let now = self.shared.store.time(&self.shared.name).await?;
                spec.schedule
                    .first_tick(now)?
                    .map_or(FirstTick::Never, FirstTick::At)
            }
        };
        let adds_job = matches!(first, FirstTick::Now { .. });
        let changed = self
            .shared
            .store
            .upsert_scheduler(&self.shared.name, id, text, first)
            .await?;
        if changed && adds_job {
            metrics::counter!("redtower_jobs_scheduled_total", "queue" => self.shared.name.to_string())
                .increment(1);
        }
        Ok(changed)
    }
}

/// The span of one add call (see the crate docs, "Tracing").
fn enqueue_span(queue: &str, name: &str, jobs: usize) -> tracing::Span {
    tracing::info_span!(
        target: "redtower::jobs",
        "redtower.jobs.enqueue",
        otel.kind = "producer",
        queue,
        job.name = name,
        job.count = jobs,
        job.id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

fn enqueued_outcome(e: &Enqueued) -> &'static str {
    match e {
        Enqueued::New(_) => "new",
        Enqueued::Duplicate(_) => "duplicate",
        Enqueued::Existing(_) => "existing",
    }
}

impl<J> Queue<J> {
    /// How far this producer's [`clock`](Self::clock) is from the store's clock (one round
    /// trip). For monitoring: scheduling never depends on it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use redtower_jobs::{Clock, Job, MemoryStore, Queue};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Job for Ping { const NAME: &'static str = "ping"; }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), redtower_jobs::Error> {
    /// let queue = Queue::<Ping>::new(MemoryStore::new(), "pings")
    ///     .clock(Clock::system().ahead(Duration::from_secs(300)));
    /// let skew = queue.clock_skew().await?;
    /// assert!(skew.is_ahead() && skew.magnitude() >= Duration::from_secs(299));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn clock_skew(&self) -> Result<ClockSkew> {
        let s = &self.shared;
        s.clock.skew(s.store.time(&s.name)).await
    }

    /// Job counts per state, and whether the queue is paused.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn counts(&self) -> Result<Counts> {
        self.shared.store.counts(&self.shared.name).await
    }

    /// One job, in any state.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn get(&self, id: &JobId) -> Result<Option<JobInfo>> {
        self.shared.store.get(&self.shared.name, id).await
    }

    /// Jobs in `state` (ready and scheduled in run order, active by lease end, completed and
    /// dead newest first), paginated.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn list(&self, state: JobState, offset: usize, limit: usize) -> Result<Vec<JobInfo>> {
        self.shared
            .store
            .list(&self.shared.name, state, offset, limit)
            .await
    }

    /// Moves a dead job back to ready with fresh attempts. `false` if it is not dead.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn retry_dead(&self, id: &JobId) -> Result<bool> {
        self.shared.store.retry_dead(&self.shared.name, id).await
    }

    /// Deletes a job in any state; a worker still running it is fenced out. `false` if absent.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn remove(&self, id: &JobId) -> Result<bool> {
        self.shared.store.remove(&self.shared.name, id).await
    }

    /// Stores the queue's limits (start rate, concurrency, per-group concurrency), enforced by
    /// the store for every worker of the queue, on any process; replaces the limits set
    /// before. See [`QueueLimits`](crate::QueueLimits) for an example and the rules.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a zero limit or a period out of range; store errors.
    pub async fn set_limits(&self, limits: crate::QueueLimits) -> Result<()> {
        limits.validate()?;
        self.shared
            .store
            .set_limits(&self.shared.name, limits)
            .await
    }

    /// The queue's stored limits.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn limits(&self) -> Result<crate::QueueLimits> {
        self.shared.store.limits(&self.shared.name).await
    }

    /// Stops every worker of this queue from fetching (running jobs finish).
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn pause(&self) -> Result<()> {
        self.shared.store.set_paused(&self.shared.name, true).await
    }

    /// Lets workers fetch again.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn resume(&self) -> Result<()> {
        self.shared.store.set_paused(&self.shared.name, false).await
    }

    /// The queue's job schedulers, by id.
    ///
    /// # Errors
    ///
    /// Store errors; [`Error::Protocol`] for a stored spec this version cannot read.
    pub async fn schedulers(&self) -> Result<Vec<SchedulerInfo>> {
        self.shared
            .store
            .schedulers(&self.shared.name)
            .await?
            .into_iter()
            .map(SchedulerInfo::from_stored)
            .collect()
    }

    /// Deletes the job scheduler `id` (jobs it added stay). `false` if it does not exist.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn remove_scheduler(&self, id: &str) -> Result<bool> {
        self.shared
            .store
            .remove_scheduler(&self.shared.name, id)
            .await
    }

    /// Runs one pass over the queue's due schedulers: each due tick adds its job, exactly
    /// once whichever process runs the pass. Workers do this on their own; call it to fire
    /// ticks from a process that runs no worker of the queue.
    ///
    /// # Errors
    ///
    /// Store errors (a pass whose fires went in several store calls may have applied some of
    /// them; the next pass goes on from there).
    pub async fn run_schedulers(&self) -> Result<SchedulerPass> {
        crate::schedule::run_pass(self.shared.store.as_ref(), &self.shared.name).await
    }

    /// The queue's events from now on, for any process (Redis: a capped stream read with
    /// `XREAD BLOCK` on a dedicated connection). Advisory: under heavy load old entries may be
    /// trimmed before they are read.
    ///
    /// # Errors
    ///
    /// Store errors while finding the stream's current end.
    pub async fn events(&self) -> Result<BoxStream<'static, Result<QueueEvent>>> {
        self.shared.store.events(&self.shared.name).await
    }
}

/// The builder returned by [`Queue::add`]; `.await` it to add the job.
#[must_use = "a job is only added when the builder is awaited"]
pub struct AddJob<'a, J> {
    queue: &'a Queue<J>,
    job: J,
    options: JobOptions,
}

impl<J> fmt::Debug for AddJob<'_, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddJob")
            .field("queue", &self.queue.shared.name)
            .field("options", &self.options)
            .finish()
    }
}

impl<J: Job> AddJob<'_, J> {
    /// Delay before the job becomes ready, measured by the store's clock. Defaults to none.
    pub fn delay(mut self, d: Duration) -> Self {
        self.options.delay = Some(d);
        self
    }

    /// The attempt limit (at least 1). Defaults to the queue's (3).
    pub fn attempts(mut self, n: u32) -> Self {
        self.options.attempts = Some(n);
        self
    }

    /// The retry schedule. Defaults to the queue's.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.options.backoff = Some(b);
        self
    }

    /// `0` (the default) is the most urgent, up to [`MAX_PRIORITY`].
    pub fn priority(mut self, p: u32) -> Self {
        self.options.priority = Some(p);
        self
    }

    /// A dedup key: while a job with this key is not finished, adding returns that job's id.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.options.unique_key = Some(key.into());
        self
    }

    /// The idempotency key of this add, for retrying it safely: adding again with the same key
    /// within the store's idempotency window (5 minutes by default, see
    /// [`RedisStore::idempotency_window`](crate::RedisStore::idempotency_window)) returns the
    /// first job's id and adds nothing. Defaults to a random key per add. At most 1024 bytes.
    ///
    /// ```
    /// # use redtower_jobs::{Job, Queue, MemoryStore};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ship { order: u64 }
    /// # impl Job for Ship { const NAME: &'static str = "ship"; }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), redtower_jobs::Error> {
    /// let queue = Queue::<Ship>::new(MemoryStore::new(), "shipping");
    /// // The request that placed order 42 timed out: the caller adds again with the same key.
    /// let first = queue.add(Ship { order: 42 }).idempotency_key("order-42").await?;
    /// let again = queue.add(Ship { order: 42 }).idempotency_key("order-42").await?;
    /// assert_eq!(first, again);
    /// assert_eq!(queue.counts().await?.ready, 1); // one job
    /// # Ok(()) }
    /// ```
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.options.idempotency_key = Some(key.into());
        self
    }

    /// The job's fair group (e.g. a tenant or user id): workers take jobs round-robin across
    /// groups, so a burst of one group does not delay the others (see
    /// [`QueueLimits`](crate::QueueLimits) for the fairness rule and a cap per group). At most
    /// 256 bytes, without the bytes 0 and 1.
    ///
    /// ```
    /// # use redtower_jobs::{Job, Queue, MemoryStore, QueueStore, WorkRequest};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Export { n: u32 }
    /// # impl Job for Export { const NAME: &'static str = "export"; }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), redtower_jobs::Error> {
    /// let store = MemoryStore::new();
    /// let exports = Queue::<Export>::new(store.clone(), "exports");
    /// for n in 0..100 {
    ///     exports.add(Export { n }).group("tenant-a").await?; // a burst
    /// }
    /// exports.add(Export { n: 0 }).group("tenant-b").await?;
    /// // Tenant b's job is among the first two to start, not behind a's hundred.
    /// let reply = store.work("exports", WorkRequest::new(vec![], 2, Duration::from_secs(30))).await?;
    /// assert!(reply.jobs.iter().any(|j| j.data == r#"{"n":0}"# && j.lease.id.as_str() == "101"));
    /// # Ok(()) }
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.options.group = Some(group.into());
        self
    }

    /// Replaces all options.
    pub fn options(mut self, o: JobOptions) -> Self {
        self.options = o;
        self
    }
}

impl<'a, J: Job> IntoFuture for AddJob<'a, J> {
    type Output = Result<JobId>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<JobId>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.queue.add_with(self.job, self.options).await })
    }
}
