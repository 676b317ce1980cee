//! Handlers: async fns or `tower::Service`s, their context and their errors.

use std::{fmt, future::Future, marker::PhantomData, pin::Pin, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{
    Result,
    flow::{ChildResult, MAX_CHILD_RESULT},
    job::{Job, JobId},
    progress::{JobEvent, JobEventKind, MAX_PROGRESS_BYTES, OutputKind, Reporter, bounded_json},
};

/// Why an attempt failed, and what to do about it. Any `std::error::Error` converts into a
/// retryable `JobError`, so `?` works in handlers.
///
/// ```
/// use std::time::Duration;
/// use redtower_jobs::JobError;
///
/// let e = JobError::retry("smtp busy").after(Duration::from_secs(30));
/// assert_eq!(e.retry_delay(), Some(Duration::from_secs(30)));
/// assert!(!JobError::fatal("no such user").is_retryable());
/// let from_io: JobError = std::io::Error::other("reset").into();
/// assert!(from_io.is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retry: Option<Option<Duration>>,
    /// Rate limited: (delay, whether the whole queue waits).
    limited: Option<(Duration, bool)>,
}

impl JobError {
    /// A failure worth retrying (after the job's backoff) unless attempts are exhausted.
    pub fn retry(error: impl fmt::Display) -> Self {
        Self {
            message: error.to_string(),
            retry: Some(None),
            limited: None,
        }
    }

    /// Not a failure: an upstream said "too many requests, come back in `delay`". The job is
    /// ready again after `delay`, in its place, and the attempt is not counted (it is not
    /// retried early, and `on_failed` hooks do not run). Add
    /// [`pause_queue`](Self::pause_queue) when the limit is the whole queue's: then no job of
    /// the queue starts, on any worker, for `delay` either.
    ///
    /// ```
    /// use std::{sync::atomic::{AtomicBool, Ordering}, time::Duration};
    /// use redtower_jobs::{Job, JobContext, JobError, MemoryStore, Queue, Worker};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Charge;
    /// # impl Job for Charge { const NAME: &'static str = "charge"; }
    ///
    /// static LIMITED_ONCE: AtomicBool = AtomicBool::new(false);
    ///
    /// async fn charge(_: Charge, _ctx: JobContext) -> Result<(), JobError> {
    ///     if !LIMITED_ONCE.swap(true, Ordering::SeqCst) {
    ///         // HTTP 429 with `Retry-After: 2`: every charge waits, no attempt is used.
    ///         return Err(JobError::rate_limited(Duration::from_secs(2)).pause_queue());
    ///     }
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), redtower_jobs::Error> {
    /// let store = MemoryStore::new();
    /// let charges = Queue::<Charge>::new(store.clone(), "charges");
    /// let id = charges.add(Charge).attempts(1).await?;
    /// let worker = Worker::new(store, "charges").handle::<Charge>(charge).start();
    /// tokio::time::sleep(Duration::from_secs(3)).await;
    /// // One attempt allowed, yet it completed: the rate-limited run did not count.
    /// assert_eq!(charges.get(&id).await?.unwrap().state, redtower_jobs::JobState::Completed);
    /// worker.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn rate_limited(delay: Duration) -> Self {
        Self {
            message: format!("rate limited for {delay:?}"),
            retry: Some(Some(delay)),
            limited: Some((delay, false)),
        }
    }

    /// For a [`rate_limited`](Self::rate_limited) error: the whole queue waits for the delay
    /// too (no job of it starts on any worker before then). No effect on other errors.
    #[must_use]
    pub fn pause_queue(mut self) -> Self {
        if let Some((d, _)) = self.limited {
            self.limited = Some((d, true));
        }
        self
    }

    /// For a [`rate_limited`](Self::rate_limited) error: the delay, and whether the whole queue
    /// waits.
    pub fn rate_limit(&self) -> Option<(Duration, bool)> {
        self.limited
    }

    /// A permanent failure: the job is dead at once, whatever attempts are left.
    pub fn fatal(error: impl fmt::Display) -> Self {
        Self {
            message: error.to_string(),
            retry: None,
            limited: None,
        }
    }

    /// Retries after `delay` instead of the job's backoff (a retryable error only).
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        if self.retry.is_some() {
            self.retry = Some(Some(delay));
        }
        if self.limited.is_some() {
            self.limited = self.limited.map(|(_, p)| (delay, p));
        }
        self
    }

    /// Whether another attempt may follow.
    pub fn is_retryable(&self) -> bool {
        self.retry.is_some()
    }

    /// The explicit retry delay, if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry.flatten()
    }

    /// The message stored as the job's last error.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self {
            message,
            retry: Some(None),
            limited: None,
        }
    }
}

/// What a handler knows about the attempt it runs. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct JobContext {
    inner: Arc<CtxInner>,
}

#[derive(Debug)]
struct CtxInner {
    queue: Arc<str>,
    id: JobId,
    name: String,
    attempt: u32,
    max_attempts: u32,
    /// A flow parent's children's outcomes.
    children: Vec<ChildResult>,
    /// A flow child's result for its parent (JSON text).
    flow_result: std::sync::Mutex<Option<String>>,
    /// Where progress goes (set by the worker).
    reporter: Option<Reporter>,
}

impl JobContext {
    pub(crate) fn with_children(
        queue: Arc<str>,
        id: JobId,
        name: String,
        attempt: u32,
        max_attempts: u32,
        children: Vec<ChildResult>,
    ) -> Self {
        Self {
            inner: Arc::new(CtxInner {
                queue,
                id,
                name,
                attempt,
                max_attempts,
                children,
                flow_result: std::sync::Mutex::new(None),
                reporter: None,
            }),
        }
    }

    /// For a flow parent: its children's outcomes (completed ones with the result each set,
    /// failed ones under [`ChildFailure::Continue`](crate::ChildFailure::Continue); ignored
    /// failures are left out), in the order the flow listed them. Empty for other jobs.
    pub fn children(&self) -> &[ChildResult] {
        &self.inner.children
    }

    /// For a flow parent: the result of child `key` decoded as `T`, if it completed with one.
    pub fn child_result<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.inner
            .children
            .iter()
            .find(|c| c.key == key)
            .and_then(ChildResult::decode)
    }

    /// For a flow child: the value its parent reads (see [`children`](Self::children)) if
    /// this attempt completes. A later call replaces it; other jobs ignore it.
    ///
    /// # Errors
    ///
    /// A fatal [`JobError`] when the value does not serialize or its JSON is over
    /// [`MAX_CHILD_RESULT`](crate::MAX_CHILD_RESULT) bytes (return it with `?`).
    pub fn set_flow_result<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let text = serde_json::to_string(value)
            .map_err(|e| JobError::fatal(format!("flow result does not serialize: {e}")))?;
        if text.len() > MAX_CHILD_RESULT {
            return Err(JobError::fatal(format!(
                "flow result is {} bytes, over the limit of {MAX_CHILD_RESULT}",
                text.len()
            )));
        }
        *self
            .inner
            .flow_result
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
        Ok(())
    }

    pub(crate) fn take_flow_result(&self) -> Option<String> {
        self.inner
            .flow_result
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Reports progress through `reporter` (a context just built, not shared yet).
    pub(crate) fn with_reporter(mut self, reporter: Reporter) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.reporter = Some(reporter);
        }
        self
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// The job id (stable across attempts: use it as an idempotency key).
    pub fn id(&self) -> &JobId {
        &self.inner.id
    }

    /// The job type's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// Whether a retryable failure now makes the job dead.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.attempt >= self.inner.max_attempts
    }

    /// Reports progress: a number or a small JSON value (at most
    /// [`MAX_PROGRESS_BYTES`](crate::MAX_PROGRESS_BYTES) as JSON), stored with the job
    /// ([`JobInfo::progress`](crate::JobInfo::progress), kept across attempts and trimmed
    /// with the job) and then sent to the worker's [`JobEvents`](crate::JobEvents) sink.
    ///
    /// The write is fenced by the attempt's lease: an attempt that lost its lease (it ran too
    /// long, its worker was partitioned, the job was removed) changes nothing and gets
    /// `Ok(false)`; stop working then. One call is one store round trip: report steps, not
    /// every byte. A re-sent write (after a reconnect) writes the same value again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_jobs::{Job, JobContext, JobError, MemoryStore, Queue, Worker};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ship;
    /// # impl Job for Ship { const NAME: &'static str = "ship"; }
    ///
    /// async fn ship(_: Ship, ctx: JobContext) -> Result<(), JobError> {
    ///     for step in ["packed", "label printed", "shipped"] {
    ///         ctx.progress(serde_json::json!({ "step": step })).await?;
    ///     }
    ///     Ok(())
    /// }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let q = Queue::<Ship>::new(store.clone(), "ship");
    /// let w = Worker::new(store, "ship").handle::<Ship>(ship).start();
    /// let id = q.add(Ship).await?;
    /// q.wait::<()>(&id, Duration::from_secs(5)).await?;
    /// let info = q.get(&id).await?.unwrap();
    /// assert_eq!(info.progress, Some(serde_json::json!({ "step": "shipped" })));
    /// w.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ValueTooLarge`](crate::Error::ValueTooLarge) above the limit (nothing is
    /// stored), [`Error::Serialize`](crate::Error::Serialize), and store errors.
    pub async fn progress(&self, value: impl Serialize) -> Result<bool> {
        let value = serde_json::to_value(&value).map_err(crate::Error::Serialize)?;
        let json = bounded_json(&value, "progress", MAX_PROGRESS_BYTES)?;
        let Some(r) = &self.inner.reporter else {
            return Ok(false);
        };
        let stored = r
            .store
            .put_output(&self.inner.queue, &r.lease, OutputKind::Progress, json)
            .await?;
        if stored && let Some(events) = &r.events {
            let event = JobEvent::new(
                self.inner.queue.clone(),
                self.inner.id.clone(),
                self.inner.name.clone(),
                self.inner.attempt,
                JobEventKind::Progress { value },
            );
            events.publish(&event).await;
        }
        Ok(stored)
    }
}

/// A job handler: implemented for `async fn(J, JobContext) -> Result<T, JobError>` and
/// closures of that shape, where `T` is `()` or any `Serialize` value: the value of the
/// attempt that completes the job is stored as its result (at most
/// [`MAX_RESULT_BYTES`](crate::MAX_RESULT_BYTES) as JSON; `()` stores nothing), read by
/// [`Queue::wait`](crate::Queue::wait) and [`Queue::get`](crate::Queue::get).
pub trait Handler<J>: Clone + Send + Sync + 'static {
    /// The value a successful attempt returns.
    type Output: Serialize + Send + 'static;

    /// The future of one attempt.
    type Future: Future<Output = std::result::Result<Self::Output, JobError>> + Send + 'static;

    /// Runs one attempt.
    fn call(&self, job: J, ctx: JobContext) -> Self::Future;
}

impl<J, F, Fut, T> Handler<J> for F
where
    F: Fn(J, JobContext) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<T, JobError>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    type Output = T;
    type Future = Fut;

    fn call(&self, job: J, ctx: JobContext) -> Fut {
        self(job, ctx)
    }
}

/// The request a `tower::Service` handler receives (see
/// [`Worker::service`](crate::Worker::service)).
#[derive(Debug)]
pub struct JobRequest<J> {
    /// The payload.
    pub job: J,
    /// The attempt's context.
    pub ctx: JobContext,
}

/// Adapts a `tower::Service<JobRequest<J>>` into a [`Handler`].
#[derive(Debug)]
pub struct ServiceHandler<S, J> {
    service: S,
    _job: PhantomData<fn(J)>,
}

impl<S: Clone, J> Clone for ServiceHandler<S, J> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            _job: PhantomData,
        }
    }
}

impl<S, J> ServiceHandler<S, J> {
    pub(crate) fn new(service: S) -> Self {
        Self {
            service,
            _job: PhantomData,
        }
    }
}

impl<S, J> Handler<J> for ServiceHandler<S, J>
where
    J: Job,
    S: tower_service::Service<JobRequest<J>> + Clone + Send + Sync + 'static,
    S::Response: Serialize + Send + 'static,
    S::Error: Into<JobError>,
    S::Future: Send + 'static,
{
    type Output = S::Response;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, JobError>> + Send>>;

    fn call(&self, job: J, ctx: JobContext) -> Self::Future {
        let mut svc = self.service.clone();
        Box::pin(async move {
            futures::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            svc.call(JobRequest { job, ctx }).await.map_err(Into::into)
        })
    }
}

/// An erased attempt: its result as JSON text (`None` for `null`, which `()` serializes to).
pub(crate) type BoxFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Option<String>, JobError>> + Send>>;

/// A handler with its payload type erased: decodes, then runs.
pub(crate) type ErasedHandler = Arc<dyn Fn(&str, JobContext) -> BoxFuture + Send + Sync>;

pub(crate) fn erase<J: Job, H: Handler<J>>(h: H) -> ErasedHandler {
    Arc::new(move |data: &str, ctx: JobContext| -> BoxFuture {
        match serde_json::from_str::<J>(data) {
            Ok(job) => {
                let run = h.call(job, ctx);
                Box::pin(async move {
                    let out = run.await?;
                    match serde_json::to_string(&out) {
                        Ok(json) if json == "null" => Ok(None),
                        Ok(json) => Ok(Some(json)),
                        Err(e) => Err(JobError::fatal(format!("result does not serialize: {e}"))),
                    }
                })
            }
            Err(e) => {
                let msg = format!("payload does not deserialize as job `{}`: {e}", J::NAME);
                Box::pin(async move { Err(JobError::fatal(msg)) })
            }
        }
    })
}
