//! Progress and results of jobs: [`JobContext::progress`](crate::JobContext::progress), the
//! handler's stored return value, [`Queue::wait`](crate::Queue::wait), and the [`JobEvents`]
//! hook a [`Worker`](crate::Worker) reports to.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::broadcast;

use crate::{
    Error, Result,
    event::EventKind,
    job::{JobId, JobState},
    queue::Queue,
    store::{Lease, QueueStore},
};

/// The largest progress value, serialized as JSON: 4 KiB.
/// [`JobContext::progress`](crate::JobContext::progress) refuses a larger one with
/// [`Error::ValueTooLarge`].
pub const MAX_PROGRESS_BYTES: usize = 4 * 1024;

/// The largest result a handler may return, serialized as JSON: 64 KiB. An attempt whose
/// result is larger fails for good (the job is dead with the reason): retrying would not make
/// it smaller.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Which of a job's outputs [`QueueStore::put_output`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputKind {
    /// The last progress value ([`JobContext::progress`](crate::JobContext::progress)).
    Progress,
    /// The result of the attempt that completed the job (the handler's return value).
    Result,
}

/// What happened to a job, as a [`Worker`](crate::Worker) reports it to its [`JobEvents`]
/// sink. Serializes as one flat JSON object, for example
/// `{"queue":"orders","id":"7","name":"ship-order","attempt":1,"type":"progress","value":"packed"}`.
///
/// ```
/// use redtower_jobs::{JobEvent, JobEventKind, JobId};
///
/// let event = JobEvent::new("orders", JobId::new("7"), "ship-order", 1, JobEventKind::Progress {
///     value: serde_json::json!("packed"),
/// });
/// let json = serde_json::to_value(&event).unwrap();
/// assert_eq!(json["type"], "progress");
/// assert_eq!(json["value"], "packed");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobEvent {
    /// The queue's name.
    #[serde(serialize_with = "as_str")]
    pub queue: Arc<str>,
    /// The job.
    pub id: JobId,
    /// The job type's name.
    pub name: String,
    /// The attempt it concerns, from 1.
    pub attempt: u32,
    /// What happened.
    #[serde(flatten)]
    pub kind: JobEventKind,
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

impl JobEvent {
    /// An event (for tests of a [`JobEvents`] sink; workers build their own).
    pub fn new(
        queue: impl Into<Arc<str>>,
        id: JobId,
        name: impl Into<String>,
        attempt: u32,
        kind: JobEventKind,
    ) -> Self {
        Self {
            queue: queue.into(),
            id,
            name: name.into(),
            attempt,
            kind,
        }
    }
}

/// The kinds of [`JobEvent`]: `type` in its JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobEventKind {
    /// The handler reported progress (stored first: a value the store refused as stale is
    /// not reported).
    Progress {
        /// The value passed to [`JobContext::progress`](crate::JobContext::progress).
        value: serde_json::Value,
    },
    /// The job completed.
    Completed {
        /// The handler's return value, `None` for `()`.
        result: Option<serde_json::Value>,
    },
    /// An attempt failed; another one follows after `delay_ms`.
    Retried {
        /// The error.
        error: String,
        /// The delay before the next attempt, in ms.
        delay_ms: u64,
    },
    /// The job failed for good (dead).
    Failed {
        /// The last error.
        error: String,
    },
}

/// Where a [`Worker`](crate::Worker) reports job events ([`Worker::events`](crate::Worker::events)):
/// progress as the handler reports it, and each settled attempt (completed, retried, failed).
///
/// This crate publishes nothing itself: implement this for your transport. The `redtower`
/// facade (features `jobs` and `pubsub`) has one that publishes each job's events on a
/// pub/sub channel of its own with history, so browsers resume over SSE without gaps.
///
/// Delivery: a progress event is published before
/// [`progress`](crate::JobContext::progress) returns, so a job's events come in order; a
/// settlement's event after the store accepted it, once (a settlement re-sent after a lost
/// reply is reported once). A process that dies between the store's change and the call
/// loses that event: the store ([`Queue::get`](crate::Queue::get)) stays the truth.
///
/// Implemented for closures `Fn(&JobEvent)` and for `()` (nothing).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use redtower_jobs::{JobEvent, MemoryStore, Worker};
///
/// let seen = Arc::new(Mutex::new(Vec::<JobEvent>::new()));
/// let sink = seen.clone();
/// let worker = Worker::new(MemoryStore::new(), "orders")
///     .events(move |e: &JobEvent| sink.lock().unwrap().push(e.clone()));
/// # drop(worker);
/// ```
#[async_trait::async_trait]
pub trait JobEvents: Send + Sync + 'static {
    /// Publishes one event. Errors are the sink's to log: the job goes on.
    async fn publish(&self, event: &JobEvent);
}

#[async_trait::async_trait]
impl<F> JobEvents for F
where
    F: Fn(&JobEvent) + Send + Sync + 'static,
{
    async fn publish(&self, event: &JobEvent) {
        self(event);
    }
}

#[async_trait::async_trait]
impl JobEvents for () {
    async fn publish(&self, _event: &JobEvent) {}
}

/// What a running attempt reports through: its store, lease and event sink.
pub(crate) struct Reporter {
    pub(crate) store: Arc<dyn QueueStore>,
    pub(crate) lease: Lease,
    pub(crate) events: Option<Arc<dyn JobEvents>>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("lease", &self.lease)
            .field("events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

/// JSON text of `value`, refused above `limit` bytes.
pub(crate) fn bounded_json(
    value: &serde_json::Value,
    what: &'static str,
    limit: usize,
) -> Result<String> {
    let json = serde_json::to_string(value).map_err(Error::Serialize)?;
    if json.len() > limit {
        return Err(Error::ValueTooLarge {
            what,
            size: json.len(),
            limit,
        });
    }
    Ok(json)
}

/// Why [`Queue::wait`] returned no result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The job is dead: its last attempt failed for good or it ran out of attempts.
    #[error("job failed after {attempts} attempt(s): {error}")]
    Failed {
        /// The last error.
        error: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The job did not finish within the timeout (it goes on).
    #[error("job did not finish within {0:?}")]
    Timeout(Duration),
    /// No such job: never added, removed, or trimmed by retention before it was read (a wait
    /// longer than the retention of finished jobs ends here).
    #[error("no such job (never added, removed, or trimmed by retention)")]
    Gone,
    /// The job completed but its stored result does not decode as the requested type (or it
    /// stored none, and the type is not one that decodes from `null`).
    #[error("job result does not decode: {0}")]
    Decode(#[source] serde_json::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// How often a waiter re-reads its job when no event came: the event stream is advisory
/// (bounded, may skip entries under load or across a reconnect), this is the net under it.
pub(crate) const WAIT_RECHECK: Duration = Duration::from_secs(1);

/// One reader of a queue's event stream per [`Queue`] handle (and its clones), shared by its
/// waiters: finished job ids are broadcast to them.
#[derive(Default)]
pub(crate) struct FinishedWatch {
    inner: tokio::sync::Mutex<Option<Started>>,
}

struct Started {
    tx: broadcast::Sender<JobId>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for FinishedWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishedWatch").finish_non_exhaustive()
    }
}

impl FinishedWatch {
    /// A receiver of finished job ids, listening from when this returns (the reader's stream
    /// position is taken before the first subscriber gets its receiver).
    async fn subscribe(
        &self,
        store: &Arc<dyn QueueStore>,
        queue: &str,
    ) -> Result<broadcast::Receiver<JobId>> {
        let mut guard = self.inner.lock().await;
        if let Some(s) = guard.as_ref()
            && !s.task.is_finished()
        {
            return Ok(s.tx.subscribe());
        }
        let events = store.events(queue).await?;
        let (tx, rx) = broadcast::channel(1024);
        let task = tokio::spawn(read_finished(
            events,
            tx.clone(),
            store.clone(),
            queue.to_owned(),
        ));
        *guard = Some(Started { tx, task });
        Ok(rx)
    }
}

/// Forwards the ids of completed and dead jobs; re-opens the stream when it fails or ends.
async fn read_finished(
    mut events: futures::stream::BoxStream<'static, Result<crate::QueueEvent>>,
    tx: broadcast::Sender<JobId>,
    store: Arc<dyn QueueStore>,
    queue: String,
) {
    use futures::StreamExt;
    loop {
        match events.next().await {
            Some(Ok(ev)) => {
                if matches!(ev.kind, EventKind::Completed | EventKind::Dead) {
                    let _ = tx.send(ev.id);
                }
            }
            Some(Err(_)) => {}
            None => loop {
                // Waiters re-read their jobs meanwhile (`WAIT_RECHECK`).
                tokio::time::sleep(WAIT_RECHECK).await;
                if let Ok(s) = store.events(&queue).await {
                    events = s;
                    break;
                }
            },
        }
    }
}

impl<J> Queue<J> {
    /// Waits until job `id` finishes, up to `timeout`, and returns its result: the value its
    /// handler returned (stored as JSON, decoded as `T`; use `()` or [`serde_json::Value`]
    /// when you do not need it).
    ///
    /// It listens to the queue's events (one reader per queue handle, shared by every wait
    /// on it and its clones) and re-reads the job when one names it, or every second as a
    /// net under the advisory event stream: no busy polling.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_jobs::{Job, JobContext, JobError, MemoryStore, Queue, WaitError, Worker};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Resize { width: u32 }
    /// impl Job for Resize { const NAME: &'static str = "resize"; }
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Resized { bytes: u64 }
    ///
    /// async fn resize(job: Resize, ctx: JobContext) -> Result<Resized, JobError> {
    ///     ctx.progress(50).await?; // percent; stored with the job, sent to `Worker::events`
    ///     if job.width == 0 {
    ///         return Err(JobError::fatal("width 0"));
    ///     }
    ///     Ok(Resized { bytes: u64::from(job.width) * 10 })
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let images = Queue::<Resize>::new(store.clone(), "images");
    /// let worker = Worker::new(store, "images").handle::<Resize>(resize).start();
    ///
    /// let id = images.add(Resize { width: 64 }).await?;
    /// let done: Resized = images.wait(&id, Duration::from_secs(30)).await?;
    /// assert_eq!(done, Resized { bytes: 640 });
    ///
    /// let info = images.get(&id).await?.unwrap();
    /// assert_eq!(info.progress, Some(serde_json::json!(50)));
    /// assert_eq!(info.result, Some(serde_json::json!({ "bytes": 640 })));
    ///
    /// let bad = images.add(Resize { width: 0 }).await?;
    /// match images.wait::<Resized>(&bad, Duration::from_secs(30)).await {
    ///     Err(WaitError::Failed { error, .. }) => assert_eq!(error, "width 0"),
    ///     other => panic!("{other:?}"),
    /// }
    /// worker.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`WaitError::Failed`] when the job is dead, [`WaitError::Timeout`] when it has not
    /// finished in time, [`WaitError::Gone`] when it does not exist (or was trimmed by
    /// retention), [`WaitError::Decode`] when its result is not a `T`, and store errors.
    pub async fn wait<T: DeserializeOwned>(
        &self,
        id: &JobId,
        timeout: Duration,
    ) -> std::result::Result<T, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut finished = self
            .shared
            .finished
            .subscribe(&self.shared.store, &self.shared.name)
            .await?;
        loop {
            // Listening first, then reading: a finish after the read is an event we get.
            match self.shared.store.get(&self.shared.name, id).await? {
                None => return Err(WaitError::Gone),
                Some(info) if info.state == JobState::Completed => {
                    let value = info.result.unwrap_or(serde_json::Value::Null);
                    return serde_json::from_value(value).map_err(WaitError::Decode);
                }
                Some(info) if info.state == JobState::Dead => {
                    return Err(WaitError::Failed {
                        error: info.last_error.unwrap_or_default(),
                        attempts: info.attempts_made,
                    });
                }
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitError::Timeout(timeout));
            }
            let recheck = (tokio::time::Instant::now() + WAIT_RECHECK).min(deadline);
            loop {
                tokio::select! {
                    got = finished.recv() => match got {
                        Ok(done) if &done == id => break,
                        Ok(_) => continue,
                        // Missed some: re-read.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(recheck).await;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(recheck) => break,
                }
            }
        }
    }
}

/// Shared slot for an attempt's stored result, read when it is settled.
pub(crate) type ResultSlot = Arc<Mutex<Option<String>>>;
