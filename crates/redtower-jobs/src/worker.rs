//! [`Worker`]: fetches jobs, runs handlers, settles results.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{Notify, watch},
    task::{self, JoinSet},
    time::Instant,
};

use crate::{
    Result,
    clock::Clock,
    handler::{ErasedHandler, Handler, JobContext, JobError, JobRequest, ServiceHandler, erase},
    job::{Job, JobId},
    store::{Fetched, Lease, QueueStore, Retention, Settle, Settled, WorkRequest, random_key},
};

/// The longest lease, poll interval, grace period and timeout (longer ones are clamped to it):
/// a year, so that no deadline computed from them overflows.
const MAX_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settlements sent in one exchange.
type Batch = Vec<(Running, Settle, Option<Outcome>)>;

/// Work exchanges a worker keeps on the wire at once.
const IN_FLIGHT: usize = 2;

/// A work exchange on the wire: the batch it settles, the jobs it asked for, and its answer.
type Exchange = Pin<
    Box<
        dyn Future<
                Output = (
                    String,
                    Vec<(Running, Settle, Option<Outcome>)>,
                    usize,
                    Result<(Vec<Settled>, Vec<Fetched>, Option<Duration>)>,
                ),
            > + Send,
    >,
>;

/// How an attempt ended, as seen by the hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Completed.
    Completed,
    /// Failed; another attempt is scheduled after `delay`.
    Retrying {
        /// The error.
        error: String,
        /// The delay before the next attempt.
        delay: Duration,
    },
    /// Failed for good (out of attempts, or a permanent failure).
    Dead {
        /// The last error.
        error: String,
    },
}

/// A settled attempt, passed to [`Worker::on_completed`] and [`Worker::on_failed`] hooks.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Finished {
    /// The queue's name.
    pub queue: Arc<str>,
    /// The job id.
    pub id: JobId,
    /// The job type's name.
    pub name: String,
    /// The payload as JSON text.
    pub data: String,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// How long the attempt ran.
    pub run_time: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Finished {
    /// The payload as `J`, if this job is a `J`.
    pub fn decode<J: Job>(&self) -> Option<J> {
        if self.name != J::NAME {
            return None;
        }
        serde_json::from_str(&self.data).ok()
    }

    /// The error of a failed attempt.
    pub fn error(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Completed => None,
            Outcome::Retrying { error, .. } | Outcome::Dead { error } => Some(error),
        }
    }

    /// Whether the job is dead after this attempt.
    pub fn is_dead(&self) -> bool {
        matches!(self.outcome, Outcome::Dead { .. })
    }
}

type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Hook = Arc<dyn Fn(Finished) -> HookFuture + Send + Sync>;

/// What [`WorkerHandle::shutdown`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that finished during the grace period.
    pub finished_in_grace: usize,
    /// Jobs still running when the grace ended, cancelled and handed back to the queue.
    pub released: usize,
}

/// Processes the jobs of one queue.
///
/// * **Fetching**: one round trip settles the attempts that finished and fetches as many jobs
///   as there are free slots, so a busy worker needs less than one round trip per job. When
///   the queue is empty, one blocking wait per worker on a dedicated connection wakes it up as
///   soon as jobs arrive or the next delayed job is due, and a poll every
///   [`poll_interval`](Self::poll_interval) guards against a wedged connection.
/// * **Leases**: each fetched job is leased for [`lease`](Self::lease) and the lease is
///   extended every third of it while the handler runs. A worker that dies loses its leases;
///   the jobs are retried by others after the lease ends, and its late results are rejected
///   (fencing tokens).
/// * **Failures**: handler errors, panics and [timeouts](Self::timeout) (which cancel the
///   handler's future) fail the attempt; the job retries after its backoff, or is dead after its
///   last attempt. A payload that does not deserialize is dead at once.
/// * **Shutdown**: [`WorkerHandle::shutdown`] stops fetching, waits for running jobs up to the
///   [grace period](Self::grace), then cancels the rest and hands them back to the queue at
///   once.
///
/// See the [crate docs](crate) for an example.
#[must_use = "a worker does nothing until started"]
pub struct Worker {
    store: Arc<dyn QueueStore>,
    queue: Arc<str>,
    handlers: HashMap<String, ErasedHandler>,
    concurrency: usize,
    timeout: Option<Duration>,
    lease: Duration,
    max_stalls: u32,
    retention: Retention,
    poll_interval: Duration,
    grace: Duration,
    on_completed: Vec<Hook>,
    on_failed: Vec<Hook>,
    clock: Clock,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("jobs", &self.handlers.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("max_stalls", &self.max_stalls)
            .field("retention", &self.retention)
            .field("poll_interval", &self.poll_interval)
            .field("grace", &self.grace)
            .field("clock", &self.clock)
            .finish()
    }
}

impl Worker {
    /// A worker for queue `name` in `store`, with no handlers yet.
    ///
    /// `store` is any [`QueueStore`], an `Arc<dyn QueueStore>` chosen at run time included
    /// (see [`Queue::new`](crate::Queue::new)).
    pub fn new(store: impl QueueStore, queue: impl Into<String>) -> Self {
        Self {
            store: Arc::new(store),
            queue: Arc::from(queue.into()),
            handlers: HashMap::new(),
            concurrency: 10,
            timeout: None,
            lease: Duration::from_secs(30),
            max_stalls: 5,
            retention: Retention::default(),
            poll_interval: Duration::from_secs(5),
            grace: Duration::from_secs(10),
            on_completed: Vec::new(),
            on_failed: Vec::new(),
            clock: Clock::system(),
        }
    }

    /// Runs jobs of type `J` with `handler`, an `async fn(J, JobContext) -> Result<(),
    /// JobError>` (or a closure of that shape). Replaces an earlier handler for `J::NAME`.
    pub fn handle<J: Job>(mut self, handler: impl Handler<J>) -> Self {
        self.handlers
            .insert(J::NAME.to_owned(), erase::<J, _>(handler));
        self
    }

    /// Runs jobs of type `J` with a `tower::Service<JobRequest<J>, Response = ()>`, so tower
    /// layers (timeouts, concurrency limits, tracing) compose with handlers.
    pub fn service<J, S>(self, service: S) -> Self
    where
        J: Job,
        S: tower_service::Service<JobRequest<J>, Response = ()> + Clone + Send + Sync + 'static,
        S::Error: Into<JobError>,
        S::Future: Send + 'static,
    {
        self.handle::<J>(ServiceHandler::new(service))
    }

    /// How many jobs run at once. Defaults to 10; at least 1, at most 100,000.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, 100_000);
        self
    }

    /// A per-attempt time limit: the handler's future is dropped (cancelled) when it passes,
    /// and the attempt fails with a retryable error. Defaults to none; at most a year.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit.min(MAX_SETTING));
        self
    }

    /// The lease of a fetched job, extended every third of it while the handler runs. A crashed
    /// worker's jobs run again after at most this long. Defaults to 30 s; at least 100 ms, at
    /// most a year.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.clamp(Duration::from_millis(100), MAX_SETTING);
        self
    }

    /// How many lost leases (crashed or stalled workers) a job survives before it is dead.
    /// Lost leases do not use attempts. Defaults to 5.
    pub fn max_stalls(mut self, n: u32) -> Self {
        self.max_stalls = n;
        self
    }

    /// Retention of completed and dead jobs. Defaults to [`Retention::default`].
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention = r;
        self
    }

    /// The longest an idle worker waits before polling the queue anyway (the watchdog of the
    /// blocking wait). Defaults to 5 s; at most a year.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.clamp(Duration::from_millis(10), MAX_SETTING);
        self
    }

    /// How long [`WorkerHandle::shutdown`] waits for running jobs before cancelling and
    /// handing them back. Defaults to 10 s; at most a year.
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d.min(MAX_SETTING);
        self
    }

    /// This worker's local wall clock. Defaults to [`Clock::system`].
    ///
    /// Fetching, settling, retry backoff and lease deadlines never read it: the worker sends
    /// durations and the store applies them to its own clock (Redis `TIME`), so a worker whose
    /// clock is minutes off still runs delayed jobs and retries on time. It is read once at
    /// [`start`](Self::start), to compare with the store's clock: the difference is set on the
    /// gauge `redtower_jobs_clock_skew_seconds` and logged (`warn` from one second on). See
    /// [`Clock`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Called (in a task of its own) after each completed job, like BullMQ's
    /// `worker.on('completed')`.
    pub fn on_completed<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Finished) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_completed.push(Arc::new(move |f| Box::pin(hook(f))));
        self
    }

    /// Called (in a task of its own) after each failed attempt, retrying or dead (see
    /// [`Finished::is_dead`]), like BullMQ's `worker.on('failed')`.
    pub fn on_failed<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Finished) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_failed.push(Arc::new(move |f| Box::pin(hook(f))));
        self
    }

    /// Starts the worker in a task.
    pub fn start(self) -> WorkerHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = self.grace;
        let join = tokio::spawn(self.run(stop_rx));
        WorkerHandle {
            stop: stop_tx,
            join,
            grace,
        }
    }

    /// Runs until `signal` resolves, then shuts down gracefully.
    ///
    /// # Errors
    ///
    /// When the final hand-back of unfinished jobs failed (they then return after their lease).
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<ShutdownReport> {
        let handle = self.start();
        signal.await;
        handle.shutdown().await
    }

    async fn run(self, mut stop: watch::Receiver<bool>) -> Result<ShutdownReport> {
        let me = Arc::new(self);
        // Reporting only, in its own task so that a slow store never delays the first fetch.
        let skew_check = AbortOnDrop(tokio::spawn(report_skew(me.clone())));
        let mut running: HashMap<task::Id, Running> = HashMap::new();
        let mut tasks: JoinSet<Result<(), JobError>> = JoinSet::new();
        let mut pending: Vec<(Running, Settle, Option<Outcome>)> = Vec::new();
        // Exchanges on the wire (at most `IN_FLIGHT`), each with the batch it settles and the
        // number of jobs it asked for (slots reserved until it answers).
        let mut inflight: FuturesUnordered<Exchange> = FuturesUnordered::new();
        let mut reserved = 0usize;
        let want = Arc::new(Notify::new());
        let wake = Arc::new(Notify::new());
        let hint_ms = Arc::new(AtomicU64::new(me.poll_interval.as_millis() as u64));
        // Aborted when this task ends, even when it is itself aborted.
        let waiter = AbortOnDrop(tokio::spawn(wait_loop(
            me.clone(),
            want.clone(),
            wake.clone(),
            hint_ms.clone(),
        )));
        let mut extend = tokio::time::interval(me.lease / 3);
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Exchanges that failed (their reply may have been lost after they ran), each sent again
        // with the same request id, batch and fetch count (its slots stay reserved), so that
        // the store answers from its replay record: settlements are reported once, and the
        // jobs it leased are handed over instead of stranded.
        let mut retries: VecDeque<(String, Batch, usize)> = VecDeque::new();
        let mut need_fetch = true;
        let mut waiting = false;
        let mut next_due: Option<Duration> = None;
        let mut errors = 0u32;
        let mut backoff_until: Option<Instant> = None;

        loop {
            if *stop.borrow() {
                break;
            }
            while let Some(res) = tasks.try_join_next_with_id() {
                me.collect(res, &mut running, &mut pending);
            }
            // While the previous exchange is on the wire, the next one (settling what finished
            // meanwhile, fetching for the free slots) is sent too: Redis runs one while the
            // worker handles the other's jobs.
            let free = me
                .concurrency
                .saturating_sub(tasks.len().saturating_add(reserved));
            let backing_off = backoff_until.is_some_and(|t| Instant::now() < t);
            if !backing_off && inflight.len() < IN_FLIGHT {
                if let Some((rid, batch, asked)) = retries.pop_front() {
                    inflight.push(me.clone().send(rid, batch, asked));
                    continue;
                }
            }
            if !backing_off
                && inflight.len() < IN_FLIGHT
                && (!pending.is_empty() || (need_fetch && free > 0))
            {
                let batch = std::mem::take(&mut pending);
                reserved += free;
                inflight.push(me.clone().send(random_key(), batch, free));
                // A settle-only exchange fetches nothing: a wake-up that asked for a fetch
                // still stands.
                if free > 0 {
                    need_fetch = false;
                }
                continue;
            }
            let free = me
                .concurrency
                .saturating_sub(tasks.len().saturating_add(reserved));
            let idle = next_due
                .map_or(me.poll_interval, |d| d.min(me.poll_interval))
                .max(Duration::from_millis(1));
            if free > 0 && !waiting && inflight.is_empty() && !backing_off {
                hint_ms.store(idle.as_millis() as u64, Ordering::Relaxed);
                want.notify_one();
                waiting = true;
            }
            let pause = backoff_until.map_or(idle + Duration::from_millis(20), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                biased;
                () = stopped(&mut stop) => {}
                Some((rid, batch, asked, result)) = inflight.next(), if !inflight.is_empty() => {
                    match result {
                        Ok((settled, jobs, due)) => {
                            reserved -= asked;
                            errors = 0;
                            backoff_until = None;
                            me.after_settle(batch, settled);
                            need_fetch = need_fetch || (asked > 0 && jobs.len() == asked);
                            next_due = due;
                            for job in jobs {
                                me.spawn(job, &mut tasks, &mut running);
                            }
                        }
                        Err(e) => {
                            errors = errors.saturating_add(1);
                            tracing::warn!(target: "redtower::jobs", queue = %me.queue, error = %e, "work round trip failed; backing off");
                            retries.push_back((rid, batch, asked));
                            need_fetch = true;
                            let pause = Duration::from_millis(50u64 << errors.min(7))
                                .min(Duration::from_secs(5));
                            backoff_until = Some(Instant::now() + pause);
                        }
                    }
                }
                Some(res) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    me.collect(res, &mut running, &mut pending);
                }
                _ = wake.notified() => {
                    waiting = false;
                    need_fetch = true;
                }
                _ = extend.tick(), if !running.is_empty() => {
                    me.extend(&mut running, &mut tasks).await;
                }
                _ = tokio::time::sleep(pause) => {
                    if backoff_until.take().is_none() {
                        need_fetch = true;
                    }
                }
            }
        }

        drop(waiter);
        drop(skew_check);
        // What is on the wire is answered before shutting down: settlements land, and fetched
        // jobs run (within the grace period) or are handed back.
        // A failed exchange is sent once more as it was (answered from the replay record if it
        // ran), fetching nothing new; if that fails too, its batch is settled in shutdown.
        const LAST_TRY: usize = usize::MAX;
        loop {
            while let Some((rid, batch, fetch, result)) = inflight.next().await {
                match result {
                    Ok((settled, jobs, _)) => {
                        me.after_settle(batch, settled);
                        for job in jobs {
                            me.spawn(job, &mut tasks, &mut running);
                        }
                    }
                    Err(_) if fetch != LAST_TRY => retries.push_back((rid, batch, LAST_TRY)),
                    Err(_) => pending.extend(batch),
                }
            }
            let Some((rid, batch, _)) = retries.pop_front() else {
                break;
            };
            let w = me.clone();
            inflight.push(Box::pin(async move {
                let result = w.exchange(&batch, 0, &rid).await;
                (rid, batch, LAST_TRY, result)
            }));
        }
        me.shutdown(running, tasks, pending).await
    }

    async fn shutdown(
        &self,
        mut running: HashMap<task::Id, Running>,
        mut tasks: JoinSet<Result<(), JobError>>,
        mut pending: Vec<(Running, Settle, Option<Outcome>)>,
    ) -> Result<ShutdownReport> {
        let mut report = ShutdownReport::default();
        let deadline = Instant::now() + self.grace;
        let mut extend = tokio::time::interval(self.lease / 3);
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !tasks.is_empty() {
            tokio::select! {
                Some(res) = tasks.join_next_with_id() => {
                    self.collect(res, &mut running, &mut pending);
                    report.finished_in_grace += 1;
                    while let Some(res) = tasks.try_join_next_with_id() {
                        self.collect(res, &mut running, &mut pending);
                        report.finished_in_grace += 1;
                    }
                    let batch = std::mem::take(&mut pending);
                    match self.exchange(&batch, 0, &random_key()).await {
                        Ok((settled, _, _)) => self.after_settle(batch, settled),
                        Err(_) => pending = batch,
                    }
                }
                _ = extend.tick() => self.extend(&mut running, &mut tasks).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        tasks.shutdown().await;
        for (_, r) in running.drain() {
            report.released += 1;
            pending.push((r, Settle::Release, None));
        }
        let mut last = Ok(());
        // One id for the hand-back, re-sent as it is when it fails.
        let rid = random_key();
        for attempt in 0..3u32 {
            if pending.is_empty() {
                break;
            }
            let batch = std::mem::take(&mut pending);
            match self.exchange(&batch, 0, &rid).await {
                Ok((settled, _, _)) => {
                    self.after_settle(batch, settled);
                    last = Ok(());
                }
                Err(e) => {
                    tracing::warn!(target: "redtower::jobs", queue = %self.queue, error = %e, "handing jobs back failed");
                    pending = batch;
                    last = Err(e);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        tracing::info!(target: "redtower::jobs", queue = %self.queue, released = report.released, "worker stopped");
        last.map(|()| report)
    }

    /// An exchange on the wire, answered with what it was sent with.
    fn send(self: Arc<Self>, rid: String, batch: Batch, fetch: usize) -> Exchange {
        Box::pin(async move {
            let result = self.exchange(&batch, fetch, &rid).await;
            (rid, batch, fetch, result)
        })
    }

    async fn exchange(
        &self,
        batch: &[(Running, Settle, Option<Outcome>)],
        fetch: usize,
        request_id: &str,
    ) -> Result<(Vec<Settled>, Vec<Fetched>, Option<Duration>)> {
        let settle = batch
            .iter()
            .map(|(r, s, _)| (r.job.lease.clone(), s.clone()))
            .collect();
        let req = WorkRequest::new(settle, fetch, self.lease)
            .max_stalls(self.max_stalls)
            .retention(self.retention)
            .request_id(request_id);
        let reply = self.store.work(&self.queue, req).await?;
        Ok((reply.settled, reply.jobs, reply.next_due))
    }

    fn spawn(
        &self,
        job: Fetched,
        tasks: &mut JoinSet<Result<(), JobError>>,
        running: &mut HashMap<task::Id, Running>,
    ) {
        let q = self.queue.to_string();
        metrics::counter!("redtower_jobs_started_total", "queue" => q.clone()).increment(1);
        metrics::histogram!("redtower_jobs_wait_seconds", "queue" => q)
            .record(job.waited.as_secs_f64());
        let ctx = JobContext::new(
            self.queue.clone(),
            job.lease.id.clone(),
            job.name.clone(),
            job.attempt,
            job.max_attempts,
        );
        let fut: crate::handler::BoxFuture = match (&job.invalid, self.handlers.get(&job.name)) {
            (Some(reason), _) => {
                let msg = format!("bad job record: {reason}");
                Box::pin(async move { Err(JobError::fatal(msg)) })
            }
            (None, Some(h)) => h(&job.data, ctx),
            (None, None) => {
                let msg = format!("no handler for job `{}` in this worker", job.name);
                Box::pin(async move { Err(JobError::fatal(msg)) })
            }
        };
        let timeout = self.timeout;
        let fut = async move {
            let run = AssertUnwindSafe(fut).catch_unwind();
            let res = match timeout {
                Some(t) => match tokio::time::timeout(t, run).await {
                    Ok(r) => r,
                    Err(_) => return Err(JobError::retry(format!("timed out after {t:?}"))),
                },
                None => run.await,
            };
            res.unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(JobError::retry(format!("handler panicked: {msg}")))
            })
        };
        let abort = tasks.spawn(fut);
        running.insert(
            abort.id(),
            Running {
                job,
                started: Instant::now(),
                abort,
            },
        );
    }

    fn collect(
        &self,
        res: std::result::Result<(task::Id, Result<(), JobError>), task::JoinError>,
        running: &mut HashMap<task::Id, Running>,
        pending: &mut Vec<(Running, Settle, Option<Outcome>)>,
    ) {
        let (id, result) = match res {
            Ok((id, r)) => (id, r),
            Err(e) => {
                let id = e.id();
                if e.is_cancelled() {
                    // Lease lost (already removed) or shutdown (handled by the caller).
                    running.remove(&id);
                    return;
                }
                (id, Err(JobError::retry("handler panicked")))
            }
        };
        let Some(r) = running.remove(&id) else {
            return;
        };
        let (settle, outcome) = match result {
            Ok(()) => (Settle::Complete, Outcome::Completed),
            Err(e) if e.is_retryable() => {
                let delay = e
                    .retry_delay()
                    .unwrap_or_else(|| r.job.backoff.delay_with_jitter(r.job.attempt));
                let error = e.message().to_owned();
                let outcome = if r.job.attempt >= r.job.max_attempts {
                    Outcome::Dead {
                        error: error.clone(),
                    }
                } else {
                    Outcome::Retrying {
                        error: error.clone(),
                        delay,
                    }
                };
                (Settle::Retry { delay, error }, outcome)
            }
            Err(e) => {
                let error = e.message().to_owned();
                (
                    Settle::Fail {
                        error: error.clone(),
                    },
                    Outcome::Dead { error },
                )
            }
        };
        pending.push((r, settle, Some(outcome)));
    }

    fn after_settle(&self, batch: Vec<(Running, Settle, Option<Outcome>)>, settled: Vec<Settled>) {
        let q = self.queue.to_string();
        for ((r, _, outcome), s) in batch.into_iter().zip(settled) {
            let run_time = r.started.elapsed();
            let name = match s {
                Settled::Completed => "redtower_jobs_completed_total",
                Settled::Retrying => "redtower_jobs_retried_total",
                Settled::Dead => "redtower_jobs_dead_total",
                Settled::Released => "redtower_jobs_released_total",
                _ => "redtower_jobs_lease_lost_total",
            };
            metrics::counter!(name, "queue" => q.clone()).increment(1);
            if matches!(s, Settled::Retrying | Settled::Dead) {
                metrics::counter!("redtower_jobs_failed_total", "queue" => q.clone()).increment(1);
            }
            let Some(mut outcome) = outcome else {
                continue;
            };
            metrics::histogram!("redtower_jobs_run_seconds", "queue" => q.clone())
                .record(run_time.as_secs_f64());
            let hooks = match s {
                Settled::Completed => &self.on_completed,
                Settled::Retrying | Settled::Dead => &self.on_failed,
                _ => {
                    tracing::debug!(target: "redtower::jobs", queue = %self.queue, id = %r.job.lease.id, "late result rejected: lease lost");
                    continue;
                }
            };
            // The store decides dead versus retry (a lease may have changed the count).
            if s == Settled::Dead {
                if let Outcome::Retrying { error, .. } = outcome {
                    outcome = Outcome::Dead { error };
                }
            }
            tracing::debug!(target: "redtower::jobs", queue = %self.queue, id = %r.job.lease.id, outcome = ?s, "job settled");
            if hooks.is_empty() {
                continue;
            }
            let finished = Finished {
                queue: self.queue.clone(),
                id: r.job.lease.id.clone(),
                name: r.job.name.clone(),
                data: r.job.data.clone(),
                attempt: r.job.attempt,
                max_attempts: r.job.max_attempts,
                run_time,
                outcome,
            };
            for hook in hooks {
                tokio::spawn(hook(finished.clone()));
            }
        }
    }

    async fn extend(
        &self,
        running: &mut HashMap<task::Id, Running>,
        tasks: &mut JoinSet<Result<(), JobError>>,
    ) {
        let leases: Vec<Lease> = running.values().map(|r| r.job.lease.clone()).collect();
        match self.store.extend(&self.queue, leases, self.lease).await {
            Ok(lost) if !lost.is_empty() => {
                let q = self.queue.to_string();
                running.retain(|_, r| {
                    if lost.contains(&r.job.lease.id) {
                        tracing::warn!(target: "redtower::jobs", queue = %q, id = %r.job.lease.id, "lease lost; cancelling the job");
                        metrics::counter!("redtower_jobs_lease_lost_total", "queue" => q.clone()).increment(1);
                        r.abort.abort();
                        false
                    } else {
                        true
                    }
                });
                let _ = tasks;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "redtower::jobs", queue = %self.queue, error = %e, "lease extension failed");
            }
        }
    }
}

/// Resolves once shutdown is requested; never, if the handle was dropped (the worker then
/// runs until the runtime ends).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Running {
    job: Fetched,
    started: Instant,
    abort: task::AbortHandle,
}

/// Compares the worker's clock with the store's and reports the difference.
async fn report_skew(w: Arc<Worker>) {
    match w.clock.skew(w.store.time(&w.queue)).await {
        Ok(skew) => {
            metrics::gauge!("redtower_jobs_clock_skew_seconds", "queue" => w.queue.to_string())
                .set(skew.as_millis() as f64 / 1000.0);
            if skew.magnitude() >= Duration::from_secs(1) {
                tracing::warn!(target: "redtower::jobs", queue = %w.queue, %skew, "this worker's clock disagrees with the store's; harmless for scheduling (the store's clock is used), but timestamps in local logs will not match the store's");
            } else {
                tracing::debug!(target: "redtower::jobs", queue = %w.queue, %skew, "clock skew");
            }
        }
        Err(e) => {
            tracing::debug!(target: "redtower::jobs", queue = %w.queue, error = %e, "cannot read the store's clock");
        }
    }
}

async fn wait_loop(w: Arc<Worker>, want: Arc<Notify>, wake: Arc<Notify>, hint_ms: Arc<AtomicU64>) {
    let mut waiter = None;
    loop {
        want.notified().await;
        if waiter.is_none() {
            match w.store.waiter(&w.queue).await {
                Ok(x) => waiter = Some(x),
                Err(e) => {
                    tracing::warn!(target: "redtower::jobs", error = %e, "cannot open the blocking connection");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    wake.notify_one();
                    continue;
                }
            }
        }
        let timeout = Duration::from_millis(hint_ms.load(Ordering::Relaxed).max(1));
        if let Some(x) = waiter.as_mut() {
            if let Err(e) = x.wait(timeout).await {
                tracing::debug!(target: "redtower::jobs", error = %e, "blocking wait failed");
                waiter = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        wake.notify_one();
    }
}

/// A running [`Worker`]. Dropping it leaves the worker running; call
/// [`shutdown`](Self::shutdown) to stop it.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<Result<ShutdownReport>>,
    grace: Duration,
}

impl WorkerHandle {
    /// Stops fetching, waits up to the grace period for running jobs, then cancels the rest
    /// and hands them back to the queue at once (their attempt is not counted).
    ///
    /// # Errors
    ///
    /// When the hand-back failed (the jobs then return after their lease).
    pub async fn shutdown(self) -> Result<ShutdownReport> {
        let _ = self.stop.send(true);
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(crate::Error::Protocol(format!("worker task failed: {e}"))),
        }
    }

    /// The grace period this worker was built with.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Stops the worker at once without handing jobs back (like a crash: its jobs return after
    /// their lease). For tests and emergencies.
    pub fn abort(self) {
        self.join.abort();
    }
}
