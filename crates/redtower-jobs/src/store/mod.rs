//! The storage contract ([`QueueStore`]) and its two backends.

use std::{fmt, sync::Arc, time::Duration};

use futures::stream::BoxStream;
use redtower_client::TraceContext;

use crate::{
    Result,
    event::QueueEvent,
    flow::{ChildResult, FlowDep, FlowMessage, FlowParent},
    job::{Backoff, JobId, JobInfo, JobState},
    progress::OutputKind,
    quota::QueueLimits,
    schedule::{Fire, FirstTick, StoredScheduler},
};

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A job to add, already serialized.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewJob {
    /// The job type's name.
    pub name: String,
    /// The payload as JSON text.
    pub data: String,
    /// The attempt limit (at least 1).
    pub max_attempts: u32,
    /// The retry schedule.
    pub backoff: Backoff,
    /// `0` is the most urgent; jobs of equal priority run in the order they were added.
    pub priority: u32,
    /// How long from now (store clock) before the job becomes ready.
    pub delay: Duration,
    /// A dedup key: while a job with this key is not finished, adding another returns its id.
    pub unique_key: Option<String>,
    /// The idempotency key of this add: an add that carries the key of a job added within the
    /// store's idempotency window returns that job ([`Enqueued::Existing`]) and adds nothing.
    /// `None`: no key of its own; the store still makes the call safe to re-send (a request
    /// re-sent by the client after a lost reply, as it does with in-flight commands after a
    /// reconnect, never adds twice), with a random id per call.
    pub idempotency_key: Option<String>,
    /// The W3C trace context to store with the job, so that the worker's span for it joins
    /// this trace. [`Queue`](crate::Queue) sets it to the current span's context with the
    /// `opentelemetry` feature; `None` stores nothing.
    pub trace: Option<TraceContext>,
    /// For a flow child: its parent (see [`Flow`](crate::Flow)). Its final state (completed,
    /// dead, removed) goes to its queue's outbox, for the parent's queue.
    pub flow_parent: Option<FlowParent>,
    /// The job's fair group (e.g. a tenant): workers take jobs round-robin across groups
    /// (see [`QueueLimits`](crate::QueueLimits)). `None`: the queue's ungrouped jobs, which
    /// share one turn like a group.
    pub group: Option<String>,
}

impl NewJob {
    /// A job named `name` with payload `data` (JSON text). Defaults: 3 attempts, the default
    /// backoff, priority 0, no delay, no dedup key.
    pub fn new(name: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            data: data.into(),
            max_attempts: 3,
            backoff: Backoff::default(),
            priority: 0,
            delay: Duration::ZERO,
            unique_key: None,
            idempotency_key: None,
            trace: None,
            flow_parent: None,
            group: None,
        }
    }

    /// Sets [`group`](Self::group).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets [`idempotency_key`](Self::idempotency_key).
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets [`trace`](Self::trace).
    #[must_use]
    pub fn trace(mut self, cx: TraceContext) -> Self {
        self.trace = Some(cx);
        self
    }
}

/// The result of adding one job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enqueued {
    /// A new job.
    New(JobId),
    /// A job with the same dedup key is not finished yet: this is its id.
    Duplicate(JobId),
    /// A job was added with the same idempotency key within the store's idempotency window
    /// (a re-sent or retried add): this is its id, and nothing was added.
    Existing(JobId),
}

impl Enqueued {
    /// The job id, new or existing.
    pub fn id(&self) -> &JobId {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) | Enqueued::Existing(id) => id,
        }
    }
}

/// A lease on a job: its id and the fencing token of the current holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub id: JobId,
    /// The token handed out when the job was fetched. Opaque: pass it back unchanged. A store
    /// may keep in it what it needs to settle the job cheaply (the Redis store keeps the
    /// attempt's start, and the job's attempt, name and whether it has a dedup key, so that a
    /// completion does not read the job's record).
    pub token: String,
}

/// How an attempt ended, as reported to the store.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Settle {
    /// Done.
    Complete,
    /// Failed; retry after `delay` unless it was the last attempt (then the job is dead).
    Retry {
        /// Delay before the next attempt.
        delay: Duration,
        /// The error.
        error: String,
    },
    /// Failed permanently: the job is dead at once.
    Fail {
        /// The error.
        error: String,
    },
    /// Not run to the end (shutdown): back to ready at once, the attempt is not counted.
    Release,
    /// Done, for a flow child: `flow_result` (JSON text, at most
    /// [`MAX_CHILD_RESULT`](crate::MAX_CHILD_RESULT) bytes) is handed to its parent with its
    /// final state. Stored only in the flow's outbox message and then in the parent's record
    /// (not with the child).
    CompleteFlowChild {
        /// The result set with [`JobContext::set_flow_result`](crate::JobContext::set_flow_result).
        flow_result: Option<String>,
    },
    /// Not run because of a rate limit (the handler's
    /// [`JobError::rate_limited`](crate::JobError::rate_limited), or a
    /// [`StartLimiter`](crate::StartLimiter)): ready again after `delay`, in its old place;
    /// the attempt is not counted.
    Delay {
        /// How long the job waits.
        delay: Duration,
        /// Whether no job of the queue starts for `delay` either (any worker).
        pause_queue: bool,
    },
}

/// What happened to one settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// The token no longer holds the lease (it expired and the job moved on): ignored.
    Stale,
    /// Completed.
    Completed,
    /// Scheduled for another attempt.
    Retrying,
    /// Dead (out of attempts, or failed permanently).
    Dead,
    /// Back in ready.
    Released,
    /// Delayed by a rate limit, without using an attempt.
    Delayed,
}

/// Retention of finished jobs: each kept while both limits hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// At most this many completed jobs. Defaults to 1,000. `0` deletes at once.
    pub completed_count: u64,
    /// Completed jobs older than this are deleted. Defaults to 24 hours.
    pub completed_age: Duration,
    /// At most this many dead jobs. Defaults to 10,000.
    pub dead_count: u64,
    /// Dead jobs older than this are deleted. Defaults to 30 days.
    pub dead_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed_count: 1_000,
            completed_age: Duration::from_secs(24 * 3600),
            dead_count: 10_000,
            dead_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// One round trip of a worker: settle finished attempts, then fetch up to `fetch` jobs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkRequest {
    /// Attempts to settle, each fenced by its lease token.
    pub settle: Vec<(Lease, Settle)>,
    /// How many jobs to fetch (0: settle only).
    pub fetch: usize,
    /// The lease length of fetched jobs.
    pub lease: Duration,
    /// Leases lost more often than this make a job dead.
    pub max_stalls: u32,
    /// Retention of finished jobs.
    pub retention: Retention,
    /// The request's id. A request sent again with the same id (its reply was lost) within
    /// the store's replay window gets the first one's answer: the same settlement codes, and
    /// the jobs it fetched whose lease it still holds; nothing is settled or fetched twice.
    /// `None`: the store draws a random id before sending (which covers the client re-sending
    /// in-flight commands after a reconnect); a worker sets its own, to re-send a request
    /// that failed.
    pub request_id: Option<String>,
}

impl WorkRequest {
    /// A request with the given settlements and fetch count and default policy.
    pub fn new(settle: Vec<(Lease, Settle)>, fetch: usize, lease: Duration) -> Self {
        Self {
            settle,
            fetch,
            lease,
            max_stalls: 5,
            retention: Retention::default(),
            request_id: None,
        }
    }

    /// Sets [`request_id`](Self::request_id).
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the stall limit.
    #[must_use]
    pub fn max_stalls(mut self, n: u32) -> Self {
        self.max_stalls = n;
        self
    }

    /// Sets the retention.
    #[must_use]
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention = r;
        self
    }
}

/// A job handed to a worker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Fetched {
    /// The lease (id + fencing token).
    pub lease: Lease,
    /// The job's type name.
    pub name: String,
    /// The payload as JSON text.
    pub data: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The retry schedule.
    pub backoff: Backoff,
    /// How long since the job was added (store clock), retries and delays included.
    pub waited: Duration,
    /// Why the job cannot run, when its stored record does not decode (`data` then holds the
    /// raw record). A worker fails such a job for good with this reason; other jobs of the
    /// same fetch are not affected.
    pub invalid: Option<String>,
    /// The W3C trace context stored with the job, if any: the worker's span for the attempt
    /// is its child (with the `opentelemetry` feature).
    pub trace: Option<TraceContext>,
    /// Whether the job is a flow child (its completion is reported with
    /// [`Settle::CompleteFlowChild`], and the worker relays its final state).
    pub flow_child: bool,
    /// For a flow parent: its children's outcomes (the ignored failures left out).
    pub children: Vec<ChildResult>,
}

impl Fetched {
    /// A fetched job whose record does not decode: it fails at once, for good.
    pub(crate) fn invalid(lease: Lease, raw: String, reason: String) -> Self {
        Self {
            lease,
            name: String::new(),
            data: raw,
            attempt: 1,
            max_attempts: 1,
            backoff: Backoff::fixed(Duration::ZERO),
            waited: Duration::ZERO,
            invalid: Some(reason),
            trace: None,
            flow_child: false,
            children: Vec::new(),
        }
    }
}

/// The answer to a [`WorkRequest`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct WorkReply {
    /// One outcome per settlement, in order.
    pub settled: Vec<Settled>,
    /// The fetched jobs.
    pub jobs: Vec<Fetched>,
    /// How long until the next scheduled job is due or the next lease ends, if any.
    pub next_due: Option<Duration>,
}

/// Job counts per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Delayed or backing off.
    pub scheduled: u64,
    /// Ready.
    pub ready: u64,
    /// Held by workers.
    pub active: u64,
    /// Completed (retained).
    pub completed: u64,
    /// Dead (retained).
    pub dead: u64,
    /// Whether the queue is paused.
    pub paused: bool,
    /// Flow parents waiting for their children.
    pub waiting_children: u64,
}

impl Counts {
    /// The count for one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Scheduled => self.scheduled,
            JobState::Ready => self.ready,
            JobState::Active => self.active,
            JobState::Completed => self.completed,
            JobState::Dead => self.dead,
            JobState::WaitingChildren => self.waiting_children,
        }
    }
}

/// Waits for a "jobs may be ready" signal. Each worker holds one (for Redis: a dedicated
/// connection blocked on the queue's wake list).
#[async_trait::async_trait]
pub trait Waiter: Send + fmt::Debug {
    /// Returns when signalled, or after `timeout`.
    ///
    /// # Errors
    ///
    /// Store errors (the caller backs off and polls).
    async fn wait(&mut self, timeout: Duration) -> Result<()>;
}

/// The storage contract of a job queue, at the level of its semantics. Every method is one
/// atomic step in the store (for Redis, one Lua script using Redis `TIME`).
///
/// Implemented by [`RedisStore`] and [`MemoryStore`]; they pass the same conformance suite.
#[async_trait::async_trait]
pub trait QueueStore: fmt::Debug + Send + Sync + 'static {
    /// Adds jobs to `queue`, atomically as a batch.
    async fn enqueue(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Settles finished attempts (fenced by token), promotes due scheduled jobs, reclaims
    /// expired leases, then fetches up to `fetch` ready jobs under new leases (none while the
    /// queue is paused).
    async fn work(&self, queue: &str, request: WorkRequest) -> Result<WorkReply>;

    /// Extends the leases still held by these tokens; returns the ids whose lease is lost.
    async fn extend(&self, queue: &str, leases: Vec<Lease>, lease: Duration) -> Result<Vec<JobId>>;

    /// A waiter for `queue`'s wake-up signal.
    async fn waiter(&self, queue: &str) -> Result<Box<dyn Waiter>>;

    /// Counts per state.
    async fn counts(&self, queue: &str) -> Result<Counts>;

    /// One job.
    async fn get(&self, queue: &str, id: &JobId) -> Result<Option<JobInfo>>;

    /// Jobs in `state`: ready and scheduled in the order they will run, active by lease end,
    /// completed and dead newest first.
    async fn list(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<JobInfo>>;

    /// Moves a dead job back to ready with a fresh set of attempts. `false` if it is not dead.
    async fn retry_dead(&self, queue: &str, id: &JobId) -> Result<bool>;

    /// Deletes a job in any state (an active job's worker is then fenced out). `false` if it
    /// does not exist.
    async fn remove(&self, queue: &str, id: &JobId) -> Result<bool>;

    /// Pauses (no job is fetched) or resumes the queue.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// The store's clock, in ms since the Unix epoch: the clock every timestamp and schedule of
    /// `queue` is taken from (for Redis: `TIME` on the node that holds the queue). Only used
    /// to report how far a local [`Clock`](crate::Clock) is from it.
    async fn time(&self, queue: &str) -> Result<u64>;

    /// The queue's event stream, from the moment this returns (advisory: bounded, may skip
    /// under load).
    async fn events(&self, queue: &str) -> Result<BoxStream<'static, Result<QueueEvent>>>;

    /// Creates or replaces the scheduler `id` of `queue` with `spec` (opaque JSON). A spec
    /// equal to the stored one changes nothing (`false`: its next tick and run count stay); a
    /// new or changed one is stored with version + 1, a run count of 0 and `first` as its next
    /// tick ([`FirstTick::Never`]: finished at once). [`FirstTick::Now`] fires the first tick
    /// in the same atomic step: its job is added at the store's time, the run count is 1 and
    /// the next tick is `then` later (none: finished).
    async fn upsert_scheduler(
        &self,
        queue: &str,
        id: &str,
        spec: String,
        first: FirstTick,
    ) -> Result<bool>;

    /// Deletes the scheduler `id` (jobs it added stay). `false` if it does not exist.
    async fn remove_scheduler(&self, queue: &str, id: &str) -> Result<bool>;

    /// Every scheduler of `queue`, by id.
    async fn schedulers(&self, queue: &str) -> Result<Vec<StoredScheduler>>;

    /// The store's time (ms), up to `limit` schedulers whose next tick is at or before it
    /// (earliest first), and the earliest next tick after it, if any.
    async fn due_schedulers(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<(u64, Vec<StoredScheduler>, Option<u64>)>;

    /// Applies each of `fires` (one scheduler pass, in one call) atomically if its scheduler's
    /// version and next tick are still those it names: one job per tick (each under an
    /// idempotency marker derived from the scheduler and the tick), then the new next tick and
    /// run count. Returns, per fire in order, the jobs' ids, or `None` when its
    /// compare-and-set failed (another process fired, the spec changed, or a tick is later
    /// than the store's time) and nothing of it was changed.
    async fn fire_schedulers(
        &self,
        queue: &str,
        fires: Vec<Fire>,
    ) -> Result<Vec<Option<Vec<JobId>>>>;

    /// Flows: adds `job` to `queue` as a parent waiting for `deps` (its children, not added
    /// yet), unsealed, keeping `spec` (opaque) until [`seal_parent`](Self::seal_parent). An
    /// idempotency key of `job` seen within the window answers the first parent
    /// ([`Enqueued::Existing`]) and adds nothing.
    async fn add_parent(
        &self,
        queue: &str,
        job: NewJob,
        deps: Vec<FlowDep>,
        spec: String,
    ) -> Result<Enqueued>;

    /// Flows: marks parent `id`'s children as all added (drops its spec). No-op if sealed.
    async fn seal_parent(&self, queue: &str, id: &JobId) -> Result<()>;

    /// Flows: up to `limit` parents of `queue` unsealed for longer than `older_than`, with
    /// their specs.
    async fn unsealed_parents(
        &self,
        queue: &str,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<(JobId, String)>>;

    /// Flows: up to `limit` messages of `queue`'s outbox that are due, each leased for
    /// `lease` (not handed out again before it ends unless acknowledged).
    async fn take_outbox(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<FlowMessage>>;

    /// Flows: resolves children of `child_queue` in their parents on `parent_queue`, each
    /// once (a message for a child already resolved, or whose parent no longer waits, changes
    /// nothing). A parent whose last child resolves becomes ready; one whose child failed
    /// under [`ChildFailure::FailParent`](crate::ChildFailure::FailParent) dead (kept under
    /// `retention`). Per message: 0 no change, 1 recorded, 2 parent ready, 3 parent dead.
    async fn deliver(
        &self,
        parent_queue: &str,
        child_queue: &str,
        messages: Vec<FlowMessage>,
        retention: Retention,
    ) -> Result<Vec<u8>>;

    /// Flows: deletes delivered messages from `queue`'s outbox.
    async fn ack_outbox(&self, queue: &str, ids: Vec<String>) -> Result<()>;

    /// Stores the queue-wide limits of `queue`, enforced by [`work`](Self::work) for every
    /// worker of the queue (see [`QueueLimits`](crate::QueueLimits)).
    async fn set_limits(&self, queue: &str, limits: QueueLimits) -> Result<()>;

    /// The stored limits of `queue` (none set: [`QueueLimits::default`]).
    async fn limits(&self, queue: &str) -> Result<QueueLimits>;

    /// Stores the job's progress or result (`value`, JSON text within the limits the caller
    /// checked) if `lease` still holds the job: `false` (nothing written) when it does not.
    /// The value is kept with the job and deleted with it (removal, retention).
    ///
    /// The default refuses: a store of your own keeps no outputs until it implements this.
    async fn put_output(
        &self,
        queue: &str,
        lease: &Lease,
        kind: OutputKind,
        value: String,
    ) -> Result<bool> {
        let _ = (queue, lease, kind, value);
        Err(crate::Error::Protocol(
            "this store does not keep job progress or results".into(),
        ))
    }
}

/// A shared store is a store: an `Arc<dyn QueueStore>` chosen at run time (or an `Arc` of a
/// concrete store) passes to [`Queue::new`](crate::Queue::new) and
/// [`Worker::new`](crate::Worker::new) as it is.
#[async_trait::async_trait]
impl<T: QueueStore + ?Sized> QueueStore for Arc<T> {
    async fn enqueue(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        (**self).enqueue(queue, jobs).await
    }

    async fn work(&self, queue: &str, request: WorkRequest) -> Result<WorkReply> {
        (**self).work(queue, request).await
    }

    async fn extend(&self, queue: &str, leases: Vec<Lease>, lease: Duration) -> Result<Vec<JobId>> {
        (**self).extend(queue, leases, lease).await
    }

    async fn waiter(&self, queue: &str) -> Result<Box<dyn Waiter>> {
        (**self).waiter(queue).await
    }

    async fn counts(&self, queue: &str) -> Result<Counts> {
        (**self).counts(queue).await
    }

    async fn get(&self, queue: &str, id: &JobId) -> Result<Option<JobInfo>> {
        (**self).get(queue, id).await
    }

    async fn list(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<JobInfo>> {
        (**self).list(queue, state, offset, limit).await
    }

    async fn retry_dead(&self, queue: &str, id: &JobId) -> Result<bool> {
        (**self).retry_dead(queue, id).await
    }

    async fn remove(&self, queue: &str, id: &JobId) -> Result<bool> {
        (**self).remove(queue, id).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        (**self).set_paused(queue, paused).await
    }

    async fn time(&self, queue: &str) -> Result<u64> {
        (**self).time(queue).await
    }

    async fn events(&self, queue: &str) -> Result<BoxStream<'static, Result<QueueEvent>>> {
        (**self).events(queue).await
    }

    async fn upsert_scheduler(
        &self,
        queue: &str,
        id: &str,
        spec: String,
        first: FirstTick,
    ) -> Result<bool> {
        (**self).upsert_scheduler(queue, id, spec, first).await
    }

    async fn remove_scheduler(&self, queue: &str, id: &str) -> Result<bool> {
        (**self).remove_scheduler(queue, id).await
    }

    async fn schedulers(&self, queue: &str) -> Result<Vec<StoredScheduler>> {
        (**self).schedulers(queue).await
    }

    async fn due_schedulers(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<(u64, Vec<StoredScheduler>, Option<u64>)> {
        (**self).due_schedulers(queue, limit).await
    }

    async fn fire_schedulers(
        &self,
        queue: &str,
        fires: Vec<Fire>,
    ) -> Result<Vec<Option<Vec<JobId>>>> {
        (**self).fire_schedulers(queue, fires).await
    }

    async fn add_parent(
        &self,
        queue: &str,
        job: NewJob,
        deps: Vec<FlowDep>,
        spec: String,
    ) -> Result<Enqueued> {
        (**self).add_parent(queue, job, deps, spec).await
    }

    async fn seal_parent(&self, queue: &str, id: &JobId) -> Result<()> {
        (**self).seal_parent(queue, id).await
    }

    async fn unsealed_parents(
        &self,
        queue: &str,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<(JobId, String)>> {
        (**self).unsealed_parents(queue, older_than, limit).await
    }

    async fn take_outbox(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<FlowMessage>> {
        (**self).take_outbox(queue, limit, lease).await
    }

    async fn deliver(
        &self,
        parent_queue: &str,
        child_queue: &str,
        messages: Vec<FlowMessage>,
        retention: Retention,
    ) -> Result<Vec<u8>> {
        (**self)
            .deliver(parent_queue, child_queue, messages, retention)
            .await
    }

    async fn ack_outbox(&self, queue: &str, ids: Vec<String>) -> Result<()> {
        (**self).ack_outbox(queue, ids).await
    }

    async fn set_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        (**self).set_limits(queue, limits).await
    }

    async fn limits(&self, queue: &str) -> Result<QueueLimits> {
        (**self).limits(queue).await
    }

    async fn put_output(
        &self,
        queue: &str,
        lease: &Lease,
        kind: OutputKind,
        value: String,
    ) -> Result<bool> {
        (**self).put_output(queue, lease, kind, value).await
    }
}

/// How long the marker of one add call (its random id) is kept: only the client's own re-send
/// (within its command timeout and attempts) can repeat it.
pub(crate) fn random_key_window(window: Duration) -> Duration {
    window.min(Duration::from_secs(60))
}

/// How long the answer to a work request is kept for a re-send: its lease (the jobs it handed
/// out are the caller's that long), at least 10 s, at most the idempotency window.
pub(crate) fn replay_window(lease: Duration, window: Duration) -> Duration {
    lease.max(Duration::from_secs(10)).min(window)
}

/// A random 128-bit key in hex: the idempotency key of an add, or the id of a work request.
pub(crate) fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}
