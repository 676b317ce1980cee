//! One quota for HTTP routes and job workers: a [`SharedQuota`] is a
//! [`StartLimiter`] that spends a `redtower-ratelimit`
//! [`Policy`] from a
//! [`RateLimitStore`], so a
//! [`RateLimitLayer`](crate::ratelimit::RateLimitLayer) on a route and a
//! [`Worker`](crate::jobs::Worker) draw from one budget ("the payment provider allows 100
//! calls a second, shared by the API and the workers").
//!
//! The route and the worker share a budget when they use the same store (the same Redis and
//! key prefix), the same policy (by name) and the same subject: with the layer's
//! [`Global`](crate::ratelimit::Global) key, [`Subject::global`],
//! the default here.
//!
//! ```
//! use std::time::Duration;
//! use redtower::{jobs, quota::SharedQuota, ratelimit};
//! use ratelimit::{Global, Policy, Quota, RateLimitLayer};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Charge;
//! # impl jobs::Job for Charge { const NAME: &'static str = "charge"; }
//! # async fn charge(_: Charge, _: jobs::JobContext) -> Result<(), jobs::JobError> { Ok(()) }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // 100 calls a second to the payment provider, wherever they come from.
//! let per_second = Quota::per_second(std::num::NonZeroU32::new(100).unwrap());
//! let provider = Policy::new("payment-provider", per_second);
//! let limits = ratelimit::MemoryStore::new(); // or ratelimit::RedisStore::new(redis)
//!
//! // HTTP: the route that calls the provider directly.
//! let layer = RateLimitLayer::with_store(limits.clone())
//!     .route("/payments/refund", [provider])
//!     .key(Global);
//!
//! // Jobs: each charge job spends one call of the same budget before it starts; when the
//! // budget is spent the job (and the queue) waits until it has room, without using an attempt.
//! let jobs_store = jobs::MemoryStore::new();
//! let worker = jobs::Worker::new(jobs_store, "payments")
//!     .start_limiter(SharedQuota::new(limits, provider))
//!     .handle::<Charge>(charge)
//!     .start();
//! # let _ = layer; worker.shutdown().await.unwrap(); }
//! ```
use std::{fmt, sync::Arc, time::Duration};

use redtower_jobs::{JobStart, StartDecision, StartLimiter};
use redtower_ratelimit::{Policy, RateLimitStore, Subject};

/// A [`StartLimiter`] over a `redtower-ratelimit` store and policy: each job start spends one
/// unit of `policy` for the subject (by default [`Subject::global`], the subject of the
/// [`Global`](redtower_ratelimit::Global) key); when none is left, the job waits for the
/// policy's retry time without using an attempt, and so does the whole queue (see
/// [`pause_queue`](Self::pause_queue)).
///
/// When the store fails, the job starts (fail open; see [`fail_closed`](Self::fail_closed)).
#[derive(Clone)]
pub struct SharedQuota {
    store: Arc<dyn RateLimitStore>,
    policy: Policy,
    subject: Subject,
    pause_queue: bool,
    fail_closed: Option<Duration>,
}

impl fmt::Debug for SharedQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedQuota")
            .field("policy", &self.policy.name())
            .field("subject", &self.subject.as_str())
            .field("pause_queue", &self.pause_queue)
            .field("fail_closed", &self.fail_closed)
            .finish()
    }
}

impl SharedQuota {
    /// Job starts spend `policy` in `store`, for [`Subject::global`].
    pub fn new(store: impl RateLimitStore, policy: Policy) -> Self {
        Self {
            store: Arc::new(store),
            policy,
            subject: Subject::global(),
            pause_queue: true,
            fail_closed: None,
        }
    }

    /// The subject whose budget job starts spend (the one the route's key extractor gives,
    /// such as an API key). Defaults to [`Subject::global`].
    #[must_use]
    pub fn subject(mut self, subject: Subject) -> Self {
        self.subject = subject;
        self
    }

    /// Whether the whole queue waits when the budget is spent (`true`, the default: right for
    /// one budget shared by all jobs of the queue), or only the refused job.
    #[must_use]
    pub fn pause_queue(mut self, on: bool) -> Self {
        self.pause_queue = on;
        self
    }

    /// When the store fails, the job waits `retry` instead of starting.
    #[must_use]
    pub fn fail_closed(mut self, retry: Duration) -> Self {
        self.fail_closed = Some(retry);
        self
    }
}

#[redtower_jobs::async_trait::async_trait]
impl StartLimiter for SharedQuota {
    async fn check(&self, job: JobStart<'_>) -> StartDecision {
        match self
            .store
            .check(&self.subject, std::slice::from_ref(&self.policy), 1)
            .await
        {
            Ok(d) if d.is_allowed() => StartDecision::Start,
            Ok(d) => StartDecision::Wait {
                retry_after: d.retry_after().unwrap_or(Duration::from_millis(1)),
                pause_queue: self.pause_queue,
            },
            Err(e) => {
                tracing::warn!(target: "redtower::quota", queue = job.queue, policy = self.policy.name(), error = %e, "shared quota unavailable");
                match self.fail_closed {
                    Some(retry) => StartDecision::Wait {
                        retry_after: retry,
                        pause_queue: self.pause_queue,
                    },
                    None => StartDecision::Start,
                }
            }
        }
    }
}
