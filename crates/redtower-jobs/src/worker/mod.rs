//! [`Worker`]: fetches jobs, runs handlers, settles results.

mod attempt;
mod run;

use std::{collections::HashMap, fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{
    Result,
    clock::Clock,
    handler::{ErasedHandler, Handler, JobError, JobRequest, ServiceHandler, erase},
    job::{Job, JobId},
    store::{QueueStore, Retention},
};

/// The longest lease, poll interval, grace period and timeout (longer ones are clamped to it):
/// a year, so that no deadline computed from them overflows.
const MAX_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

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
    schedulers: bool,
    /// Signals the flow relay (see `run::flow_loop`) that a flow child was settled.
    flow_relay: Arc<tokio::sync::Notify>,
    flow_unsealed_after: Duration,
    start_limiter: Option<Arc<dyn crate::StartLimiter>>,
    /// Where job events go ([`Worker::events`]).
    events: Option<Arc<dyn crate::progress::JobEvents>>,
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
            schedulers: true,
            flow_relay: Arc::new(tokio::sync::Notify::new()),
            flow_unsealed_after: crate::flow::UNSEALED_AFTER,
            start_limiter: None,
            events: None,
        }
    }

    /// Runs jobs of type `J` with `handler`, an `async fn(J, JobContext) -> Result<T,
    /// JobError>` (or a closure of that shape), where `T` is `()` or a `Serialize` result
    /// stored with the job (see [`Handler`]). Replaces an earlier handler for `J::NAME`.
    pub fn handle<J: Job>(mut self, handler: impl Handler<J>) -> Self {
        self.handlers
            .insert(J::NAME.to_owned(), erase::<J, _>(handler));
        self
    }

    /// Runs jobs of type `J` with a `tower::Service<JobRequest<J>>` whose response is `()` or
    /// a `Serialize` result (see [`Handler`]), so tower layers (timeouts, concurrency limits,
    /// tracing) compose with handlers.
    pub fn service<J, S>(self, service: S) -> Self
    where
        J: Job,
        S: tower_service::Service<JobRequest<J>> + Clone + Send + Sync + 'static,
        S::Response: serde::Serialize + Send + 'static,
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

    /// Whether this worker fires the ticks of its queue's job schedulers (see
    /// [`Queue::schedule`](crate::Queue::schedule)). Defaults to `true`: any number of workers
    /// may, each tick adds one job whichever fires it. A worker checks when the earliest tick
    /// it knows of is due, and at least every [`poll_interval`](Self::poll_interval) (a
    /// scheduler added elsewhere is seen within it).
    pub fn schedulers(mut self, on: bool) -> Self {
        self.schedulers = on;
        self
    }

    /// A quota asked before each job starts (see [`StartLimiter`](crate::StartLimiter)): a
    /// job it refuses is ready again after the wait it names, in its place, without using an
    /// attempt (settled as [`Settled::Delayed`](crate::Settled::Delayed)). Use it for a quota
    /// shared with other code, such as an HTTP route's rate limit; for a limit of the queue
    /// alone, [`Queue::set_limits`](crate::Queue::set_limits) is cheaper (no extra round
    /// trip). Defaults to none.
    pub fn start_limiter(mut self, limiter: impl crate::StartLimiter) -> Self {
        self.start_limiter = Some(Arc::new(limiter));
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

    /// How long a [`Flow`](crate::Flow) whose parent is on this queue may stay half added
    /// (its creator stopped between adding the parent and adding the children) before this
    /// worker adds the missing children. Defaults to 30 s; keep it well below the store's
    /// idempotency window (children are added once per window).
    pub fn flow_unsealed_after(mut self, d: Duration) -> Self {
        self.flow_unsealed_after = d;
        self
    }

    /// Reports job events to `sink`: progress as handlers report it
    /// ([`JobContext::progress`](crate::JobContext::progress)), and every settled attempt
    /// (completed with its result, retried, failed). See [`JobEvents`](crate::JobEvents) for
    /// the delivery rules and an example. Defaults to none.
    pub fn events(mut self, sink: impl crate::progress::JobEvents) -> Self {
        self.events = Some(Arc::new(sink));
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
