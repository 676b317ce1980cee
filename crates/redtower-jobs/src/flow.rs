//! Flows: a parent job that runs once its children (on any queues) are final.
//!
//! See the crate docs, "Flows", for the design; this module has the API ([`Flow`]), the types
//! the stores exchange ([`FlowParent`], [`FlowDep`], [`FlowMessage`]) and the relay that
//! forwards children's final states to their parents' queues.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use redtower_client::TraceContext;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing::Instrument;

use crate::{
    Error, Result,
    job::{Backoff, Job, JobId},
    queue::{JobOptions, Queue},
    store::{Enqueued, NewJob, QueueStore, Retention},
};

/// The most children one flow may have.
pub const MAX_CHILDREN: usize = 1_000;

/// The largest result a flow child may hand its parent ([`JobContext::set_flow_result`]), in
/// bytes of JSON.
///
/// [`JobContext::set_flow_result`]: crate::JobContext::set_flow_result
pub const MAX_CHILD_RESULT: usize = 64 * 1024;

/// The longest child key (bytes).
pub const MAX_CHILD_KEY: usize = 256;

/// How long a taken but not acknowledged outbox message waits before it is delivered again
/// (the relay that took it crashed; a second delivery changes nothing).
pub(crate) const OUTBOX_LEASE: Duration = Duration::from_secs(5);

/// Outbox messages taken per relay round trip.
const RELAY_BATCH: usize = 200;

/// How long a flow may stay unsealed (its creator between adding the parent and adding the
/// children) before any worker of the parent's queue finishes adding its children.
pub(crate) const UNSEALED_AFTER: Duration = Duration::from_secs(30);

/// What a child's failure does to its parent. A child that is dead (out of attempts, failed
/// for good, lost its lease too often) or was removed before it finished has failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChildFailure {
    /// The parent is dead at once, with an error naming the child. Children still running go
    /// on; what they report later is ignored. The default (a parent never waits for ever on
    /// a child that will not complete).
    #[default]
    FailParent,
    /// The failure is dropped: the parent runs once its other children are final, and does
    /// not see this child in [`JobContext::children`](crate::JobContext::children).
    Ignore,
    /// The parent runs once every child is final (not earlier) and sees this child as
    /// [`ChildOutcome::Failed`]: it continues with partial results.
    Continue,
}

impl ChildFailure {
    fn code(self) -> &'static str {
        match self {
            ChildFailure::FailParent => "f",
            ChildFailure::Ignore => "i",
            ChildFailure::Continue => "c",
        }
    }
}

/// A child's link to its parent, stored in the child's record (field `fp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlowParent {
    /// The parent's queue.
    #[serde(rename = "q")]
    pub queue: String,
    /// The parent's id.
    #[serde(rename = "p")]
    pub id: JobId,
    /// The child's key in the flow.
    #[serde(rename = "k")]
    pub key: String,
}

impl FlowParent {
    /// The link of child `key` to parent `id` of `queue`.
    pub fn new(queue: impl Into<String>, id: JobId, key: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            id,
            key: key.into(),
        }
    }
}

/// One child a parent waits for: its key and failure policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowDep {
    /// The child's key in the flow (unique within it).
    pub key: String,
    /// What its failure does to the parent.
    pub on_failure: ChildFailure,
}

impl FlowDep {
    /// A dependency on child `key`.
    pub fn new(key: impl Into<String>, on_failure: ChildFailure) -> Self {
        Self {
            key: key.into(),
            on_failure,
        }
    }

    pub(crate) fn policy_code(&self) -> &'static str {
        self.on_failure.code()
    }
}

/// How a flow child ended, as its outbox message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChildStatus {
    /// Completed.
    Completed,
    /// Dead.
    Dead,
    /// Removed before it finished.
    Removed,
}

impl ChildStatus {
    pub(crate) fn code(self) -> &'static str {
        match self {
            ChildStatus::Completed => "c",
            ChildStatus::Dead => "d",
            ChildStatus::Removed => "r",
        }
    }

    pub(crate) fn from_code(c: &str) -> Self {
        match c {
            "c" => ChildStatus::Completed,
            "r" => ChildStatus::Removed,
            _ => ChildStatus::Dead,
        }
    }
}

/// A flow child's final state, in its queue's outbox until delivered to its parent's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowMessage {
    /// The message's id in the outbox (for [`QueueStore::ack_outbox`]).
    pub id: String,
    /// The child's id (in the queue whose outbox holds the message).
    pub child: JobId,
    /// The parent.
    pub parent: FlowParent,
    /// How the child ended.
    pub status: ChildStatus,
    /// The child's last error, when it is dead.
    pub error: Option<String>,
    /// The child's result (JSON text), when it completed and set one.
    pub result: Option<String>,
}

/// The JSON of an outbox message (the same in every backend).
#[derive(Serialize, Deserialize)]
pub(crate) struct MessageRecord {
    pub(crate) q: String,
    pub(crate) p: String,
    pub(crate) k: String,
    pub(crate) i: String,
    pub(crate) s: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) v: Option<String>,
}

impl MessageRecord {
    pub(crate) fn into_message(self, id: String) -> FlowMessage {
        FlowMessage {
            id,
            child: JobId::new(self.i),
            parent: FlowParent::new(self.q, JobId::new(self.p), self.k),
            status: ChildStatus::from_code(&self.s),
            error: self.e,
            result: self.v,
        }
    }
}

/// A resolved child as stored in its parent's record (field `kids`) once the parent is ready.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KidRecord {
    pub(crate) k: String,
    /// `c` completed, `f` failed (policy `Continue`).
    pub(crate) s: String,
    pub(crate) q: String,
    pub(crate) i: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) v: Option<String>,
}

impl KidRecord {
    pub(crate) fn into_result(self) -> ChildResult {
        ChildResult {
            key: self.k,
            queue: self.q,
            id: JobId::new(self.i),
            outcome: if self.s == "c" {
                ChildOutcome::Completed { result: self.v }
            } else {
                ChildOutcome::Failed {
                    error: self.e.unwrap_or_default(),
                }
            },
        }
    }
}

/// What a parent's handler sees of one child ([`JobContext::children`]).
///
/// [`JobContext::children`]: crate::JobContext::children
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildResult {
    /// The child's key in the flow.
    pub key: String,
    /// The child's queue.
    pub queue: String,
    /// The child's id.
    pub id: JobId,
    /// How it ended.
    pub outcome: ChildOutcome,
}

impl ChildResult {
    /// The child's result decoded as `T`: `None` if it failed or set none, or it does not
    /// decode.
    pub fn decode<T: DeserializeOwned>(&self) -> Option<T> {
        match &self.outcome {
            ChildOutcome::Completed { result: Some(r) } => serde_json::from_str(r).ok(),
            _ => None,
        }
    }
}

/// How a child ended, for its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChildOutcome {
    /// Completed, with the result it set (JSON text), if any.
    Completed {
        /// See [`JobContext::set_flow_result`](crate::JobContext::set_flow_result).
        result: Option<String>,
    },
    /// Failed (dead or removed) under [`ChildFailure::Continue`].
    Failed {
        /// Why.
        error: String,
    },
}

/// A child as the parent's record keeps it until the flow is sealed, so that any worker can
/// finish adding the children of a flow whose creator stopped half way.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChildSpec {
    queue: String,
    key: String,
    name: String,
    data: String,
    max: u32,
    backoff: Backoff,
    prio: u32,
    delay_ms: u64,
    /// The W3C trace context of the flow's span (encoded), so that the child's attempts join
    /// the trace that added the flow, also when a worker finishes adding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tc: Option<String>,
}

impl ChildSpec {
    fn new_job(&self, parent_queue: &str, parent: &JobId) -> NewJob {
        let mut job = NewJob::new(self.name.clone(), self.data.clone());
        job.trace = self.tc.as_deref().and_then(TraceContext::decode);
        job.max_attempts = self.max;
        job.backoff = self.backoff;
        job.priority = self.prio;
        job.delay = Duration::from_millis(self.delay_ms);
        job.idempotency_key = Some(child_idempotency_key(parent_queue, parent, &self.key));
        job.flow_parent = Some(FlowParent::new(parent_queue, parent.clone(), &self.key));
        job
    }
}

/// A child's idempotency key: adding the children again (a retried [`Flow::add`], or a worker
/// finishing an unsealed flow) adds each once.
fn child_idempotency_key(parent_queue: &str, parent: &JobId, key: &str) -> String {
    format!("flow:{parent_queue}:{parent}:{key}")
}

/// A flow: a parent job that runs after its children are final. Children may be on other
/// queues (of the same store); each has a key, unique in the flow, under which the parent sees
/// its outcome, and a [`ChildFailure`] policy.
///
/// ```
/// use redtower_jobs::{ChildFailure, Flow, Job, JobContext, JobError, MemoryStore, Queue, Worker};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)] struct Ship { order: u64 }
/// impl Job for Ship { const NAME: &'static str = "ship"; }
/// #[derive(Serialize, Deserialize)] struct Pick { sku: String }
/// impl Job for Pick { const NAME: &'static str = "pick"; }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), redtower_jobs::Error> {
/// let store = MemoryStore::new();
/// let shipping = Queue::<Ship>::new(store.clone(), "shipping");
/// let picking = Queue::<Pick>::new(store.clone(), "picking");
///
/// // The parent runs once both picks are final; a failed pick fails the shipment.
/// let ids = Flow::new(&shipping, Ship { order: 42 })
///     .id("order-42") // adding the same flow again adds nothing
///     .child("mug", &picking, Pick { sku: "MUG-1".into() })
///     .child_with("card", &picking, Pick { sku: "CARD".into() }, Default::default(), ChildFailure::Continue)
///     .add()
///     .await?;
/// assert_eq!(ids.children.len(), 2);
///
/// let pickers = Worker::new(store.clone(), "picking")
///     .handle::<Pick>(|p: Pick, ctx: JobContext| async move {
///         ctx.set_flow_result(&format!("bin for {}", p.sku))?; // read by the parent
///         Ok::<_, JobError>(())
///     })
///     .start();
/// let shippers = Worker::new(store.clone(), "shipping")
///     .handle::<Ship>(|s: Ship, ctx: JobContext| async move {
///         let bins: Vec<String> = ctx.children().iter().filter_map(|c| c.decode()).collect();
///         assert_eq!(bins.len(), 2);
///         println!("order {} ships from {bins:?}", s.order);
///         Ok::<_, JobError>(())
///     })
///     .start();
/// # tokio::time::sleep(std::time::Duration::from_secs(1)).await;
/// # assert_eq!(shipping.get(&ids.parent).await?.unwrap().state, redtower_jobs::JobState::Completed);
/// # pickers.shutdown().await?; shippers.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "a flow does nothing until `add` is awaited"]
pub struct Flow {
    store: Arc<dyn QueueStore>,
    queue: String,
    parent: Result<NewJob>,
    children: Vec<Result<ChildSpec>>,
    policies: Vec<ChildFailure>,
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field("queue", &self.queue)
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

/// The ids of an added flow.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowIds {
    /// The parent's id (in its queue).
    pub parent: JobId,
    /// Each child's key and id (in its queue), in the order they were given.
    pub children: Vec<(String, JobId)>,
    /// Whether the flow existed already (same [`Flow::id`] within the idempotency window):
    /// nothing new was added.
    pub existing: bool,
}

impl Flow {
    /// A flow whose parent is `job` on `queue` (with the queue's defaults; see
    /// [`parent_options`](Self::parent_options)). Errors (payload too large, bad options) are
    /// returned by [`add`](Self::add).
    pub fn new<P: Job>(queue: &Queue<P>, job: P) -> Self {
        Self::new_with(queue, job, JobOptions::default())
    }

    /// [`new`](Self::new) with options for the parent (delay is ignored: the parent becomes
    /// ready when its children are final).
    pub fn new_with<P: Job>(queue: &Queue<P>, job: P, options: JobOptions) -> Self {
        Self {
            store: queue.store().clone(),
            queue: queue.name().to_owned(),
            parent: queue.prepare_job(&job, options),
            children: Vec::new(),
            policies: Vec::new(),
        }
    }

    /// Sets the parent's idempotency key (see
    /// [`JobOptions::idempotency_key`](crate::JobOptions::idempotency_key)): adding a flow
    /// with the same id within the store's idempotency window returns the first one's ids
    /// and adds nothing.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        if let Ok(p) = &mut self.parent {
            p.idempotency_key = Some(id.into());
        }
        self
    }

    /// Replaces the parent's options.
    pub fn parent_options<P: Job>(mut self, queue: &Queue<P>, job: P, options: JobOptions) -> Self {
        let key = self
            .parent
            .as_ref()
            .ok()
            .and_then(|p| p.idempotency_key.clone());
        self.parent = queue.prepare_job(&job, options).map(|mut p| {
            p.idempotency_key = p.idempotency_key.or(key);
            p
        });
        self
    }

    /// Adds child `key` (unique in the flow, at most [`MAX_CHILD_KEY`] bytes, no NUL byte)
    /// with the queue's defaults and [`ChildFailure::FailParent`].
    pub fn child<C: Job>(self, key: impl Into<String>, queue: &Queue<C>, job: C) -> Self {
        self.child_with(
            key,
            queue,
            job,
            JobOptions::default(),
            ChildFailure::FailParent,
        )
    }

    /// Adds child `key` with options and a failure policy. Dedup and idempotency keys of the
    /// options are not used (a child's idempotency key is derived from its parent and key).
    pub fn child_with<C: Job>(
        mut self,
        key: impl Into<String>,
        queue: &Queue<C>,
        job: C,
        options: JobOptions,
        on_failure: ChildFailure,
    ) -> Self {
        let key = key.into();
        let spec = queue.prepare_job(&job, options).map(|j| ChildSpec {
            queue: queue.name().to_owned(),
            key,
            name: j.name,
            data: j.data,
            max: j.max_attempts,
            backoff: j.backoff,
            prio: j.priority,
            delay_ms: u64::try_from(j.delay.as_millis()).unwrap_or(u64::MAX),
            tc: None,
        });
        self.children.push(spec);
        self.policies.push(on_failure);
        self
    }

    /// Adds the flow: the parent (waiting for its children), then the children on their
    /// queues, then seals the flow. Each step is idempotent: if this call fails half way,
    /// calling it again (same [`id`](Self::id)) finishes it; if the process stops half way,
    /// a worker of the parent's queue finishes it after 30 s.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] (no children, more than [`MAX_CHILDREN`], duplicate or bad
    /// keys), payload errors, and store errors.
    pub async fn add(self) -> Result<FlowIds> {
        let name = self
            .parent
            .as_ref()
            .map_or("", |p| p.name.as_str())
            .to_owned();
        let span = tracing::info_span!(
            target: "redtower::jobs",
            "redtower.jobs.flow",
            otel.kind = "producer",
            queue = self.queue.as_str(),
            job.name = name.as_str(),
            flow.children = self.children.len(),
            job.id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = self.add_in_span().instrument(span.clone()).await;
        match &result {
            Ok(ids) => {
                span.record("job.id", ids.parent.as_str());
                span.record("outcome", if ids.existing { "existing" } else { "new" });
            }
            Err(_) => {
                span.record("outcome", "error");
            }
        }
        result
    }

    /// [`add`](Self::add), inside its span.
    async fn add_in_span(self) -> Result<FlowIds> {
        let mut parent = self.parent?;
        let mut children = self.children.into_iter().collect::<Result<Vec<_>>>()?;
        if children.is_empty() {
            return Err(Error::InvalidOption("a flow needs at least one child"));
        }
        if children.len() > MAX_CHILDREN {
            return Err(Error::InvalidOption(
                "a flow has at most MAX_CHILDREN children",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &children {
            if c.key.is_empty() || c.key.len() > MAX_CHILD_KEY || c.key.contains('\0') {
                return Err(Error::InvalidOption(
                    "a child key is 1 ..= MAX_CHILD_KEY bytes, without NUL",
                ));
            }
            if !seen.insert(c.key.as_str()) {
                return Err(Error::InvalidOption("child keys must be unique in a flow"));
            }
        }
        // The parent and every child carry this span's context: their attempts, on any
        // worker, join the trace that added the flow.
        #[cfg(feature = "opentelemetry")]
        let trace = TraceContext::current();
        #[cfg(not(feature = "opentelemetry"))]
        let trace: Option<TraceContext> = None;
        let tc = trace.as_ref().map(TraceContext::encode);
        for c in &mut children {
            c.tc.clone_from(&tc);
        }
        parent.trace = trace;
        let deps: Vec<FlowDep> = children
            .iter()
            .zip(&self.policies)
            .map(|(c, p)| FlowDep::new(c.key.clone(), *p))
            .collect();
        let spec = serde_json::to_string(&children).map_err(Error::Serialize)?;
        let added = self
            .store
            .add_parent(&self.queue, parent, deps, spec)
            .await?;
        let existing = !matches!(added, Enqueued::New(_));
        let pid = added.id().clone();
        let ids = add_children(self.store.as_ref(), &self.queue, &pid, &children).await?;
        self.store.seal_parent(&self.queue, &pid).await?;
        metrics::counter!("redtower_jobs_flows_added_total", "queue" => self.queue.clone())
            .increment(u64::from(!existing));
        Ok(FlowIds {
            parent: pid,
            children: children.into_iter().map(|c| c.key).zip(ids).collect(),
            existing,
        })
    }
}

/// Adds a flow's children, one enqueue call per child queue; their ids in `children` order.
async fn add_children(
    store: &dyn QueueStore,
    parent_queue: &str,
    parent: &JobId,
    children: &[ChildSpec],
) -> Result<Vec<JobId>> {
    let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in children.iter().enumerate() {
        by_queue.entry(c.queue.as_str()).or_default().push(i);
    }
    let mut ids = vec![JobId::new(String::new()); children.len()];
    for (queue, idx) in by_queue {
        let jobs = idx
            .iter()
            .map(|&i| children[i].new_job(parent_queue, parent))
            .collect();
        let added = store.enqueue(queue, jobs).await?;
        for (i, e) in idx.into_iter().zip(added) {
            ids[i] = e.id().clone();
        }
    }
    Ok(ids)
}

/// What one flow relay pass did ([`Queue::relay_flows`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayReport {
    /// Children's final states delivered to their parents' queues (re-deliveries included).
    pub delivered: usize,
    /// Parents that became ready (every child final).
    pub released: usize,
    /// Parents that became dead (a child failed under [`ChildFailure::FailParent`]).
    pub failed: usize,
    /// Unsealed flows whose children were added by this pass.
    pub resumed: usize,
}

/// One relay pass for `queue` (see [`Queue::relay_flows`]).
pub(crate) async fn relay(
    store: &dyn QueueStore,
    queue: &str,
    retention: Retention,
    unsealed_after: Duration,
) -> Result<RelayReport> {
    let mut report = RelayReport::default();
    loop {
        let msgs = store.take_outbox(queue, RELAY_BATCH, OUTBOX_LEASE).await?;
        let n = msgs.len();
        if n == 0 {
            break;
        }
        let mut by_parent: BTreeMap<String, Vec<FlowMessage>> = BTreeMap::new();
        for m in msgs {
            by_parent.entry(m.parent.queue.clone()).or_default().push(m);
        }
        let mut acked = Vec::with_capacity(n);
        for (pq, msgs) in by_parent {
            let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
            // A failed delivery leaves its messages leased: they are delivered again after
            // the outbox lease, by any process.
            let codes = store.deliver(&pq, queue, msgs, retention).await?;
            report.delivered += codes.len();
            report.released += codes.iter().filter(|c| **c == 2).count();
            report.failed += codes.iter().filter(|c| **c == 3).count();
            acked.extend(ids);
        }
        store.ack_outbox(queue, acked).await?;
        if n < RELAY_BATCH {
            break;
        }
    }
    for (pid, spec) in store.unsealed_parents(queue, unsealed_after, 20).await? {
        let Ok(children) = serde_json::from_str::<Vec<ChildSpec>>(&spec) else {
            tracing::warn!(target: "redtower::jobs", queue, id = %pid, "unsealed flow with a bad child spec");
            store.seal_parent(queue, &pid).await?;
            continue;
        };
        add_children(store, queue, &pid, &children).await?;
        store.seal_parent(queue, &pid).await?;
        report.resumed += 1;
    }
    if report.released + report.failed > 0 {
        tracing::debug!(target: "redtower::jobs", queue, released = report.released, failed = report.failed, "flow parents resolved");
    }
    Ok(report)
}

impl<J: Job> Queue<J> {
    /// One flow relay pass for this queue: delivers the final states of its flow children
    /// to their parents' queues (one idempotent script per parent queue) and acknowledges
    /// them, then finishes adding the children of flows whose parent is on this queue and
    /// that were left half added for over 30 s. Every [`Worker`](crate::Worker) does this for
    /// its queue on its own (right after settling a flow child, and every poll interval);
    /// call it for a queue no worker runs, or in tests.
    ///
    /// # Errors
    ///
    /// Store errors; what was not acknowledged is delivered again later (harmless).
    pub async fn relay_flows(&self) -> Result<RelayReport> {
        relay(
            self.store().as_ref(),
            self.name(),
            Retention::default(),
            UNSEALED_AFTER,
        )
        .await
    }
}
