//! Queue-wide quotas: a start rate and a concurrency limit enforced by the store for every
//! worker of a queue, fair groups, and the [`StartLimiter`] hook for a quota shared with
//! other code (such as an HTTP route's rate limit).

use std::{fmt, sync::Arc, time::Duration};

use crate::{Error, Result, job::JobId};

/// The most bytes of a group name.
pub const MAX_GROUP_LEN: usize = 256;

/// Limits of one queue, stored with the queue and enforced atomically by the store (for Redis,
/// inside the work script, with Redis `TIME`) for every worker of the queue on any number of
/// processes. Set them with [`Queue::set_limits`](crate::Queue::set_limits); every field
/// unset (the default) means no limit.
///
/// * **Rate** ([`rate`](Self::rate)): at most `max` job starts per `per`, across all workers
///   (GCRA: a burst of up to `max`, then one start every `per / max`). When no start fits,
///   the store answers how long until the next one does and workers sleep exactly that long;
///   waiting jobs stay ready and use no attempt.
/// * **Concurrency** ([`concurrency`](Self::concurrency)): at most `n` jobs of the queue
///   running at once across all workers. A job counts from its fetch until it is settled or
///   its lease ends (so a crashed worker's slots come back when their leases end). A settle
///   that frees a slot while jobs are ready wakes a waiting worker.
/// * **Per group** ([`group_concurrency`](Self::group_concurrency)): at most `n` running
///   jobs of each [group](crate::AddJob::group); a job fetched while its group is full is
///   held and goes back to ready, in its place, when a job of its group ends. Counts cover
///   jobs fetched while the limit is set.
///
/// **Fair groups.** Every job has a turn number: a job of group `g` gets
/// `max(V, last turn of g) + 1`, where `V` is the highest turn handed to a worker so far;
/// ungrouped jobs form one more group. Jobs start in order of priority, then turn, so groups
/// take turns: after 1,000 jobs of group `a`, the first job of group `b` starts within about
/// two fetches of `a`'s next one, and a retried or delayed job keeps its turn.
///
/// ```
/// use std::time::Duration;
/// use redtower_jobs::{Job, MemoryStore, Queue, QueueLimits};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Charge;
/// # impl Job for Charge { const NAME: &'static str = "charge"; }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), redtower_jobs::Error> {
/// let charges = Queue::<Charge>::new(MemoryStore::new(), "charges");
/// // The payment provider allows 100 calls a second and 20 open connections.
/// charges
///     .set_limits(
///         QueueLimits::new()
///             .rate(100, Duration::from_secs(1))
///             .concurrency(20)
///             .group_concurrency(2),
///     )
///     .await?;
/// assert_eq!(charges.limits().await?.concurrency, Some(20));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueLimits {
    /// At most `.0` job starts per `.1`, across all workers.
    pub rate: Option<(u32, Duration)>,
    /// At most this many jobs of the queue running at once, across all workers.
    pub concurrency: Option<u32>,
    /// At most this many running jobs of each group.
    pub group_concurrency: Option<u32>,
}

impl QueueLimits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` job starts per `per` across all workers (`max` at least 1, `per` at least
    /// 1 ms and at most a year).
    #[must_use]
    pub fn rate(mut self, max: u32, per: Duration) -> Self {
        self.rate = Some((max, per));
        self
    }

    /// At most `n` jobs running at once across all workers (at least 1).
    #[must_use]
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// At most `n` running jobs of each group (at least 1).
    #[must_use]
    pub fn group_concurrency(mut self, n: u32) -> Self {
        self.group_concurrency = Some(n);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some((max, per)) = self.rate {
            if max == 0 {
                return Err(Error::InvalidOption("rate limit: max must be at least 1"));
            }
            if per < Duration::from_millis(1) || per > Duration::from_secs(366 * 24 * 3600) {
                return Err(Error::InvalidOption(
                    "rate limit: period must be 1 ms ..= a year",
                ));
            }
        }
        if self.concurrency == Some(0) || self.group_concurrency == Some(0) {
            return Err(Error::InvalidOption("concurrency limit must be at least 1"));
        }
        Ok(())
    }
}

/// Checks a group name: at most [`MAX_GROUP_LEN`] bytes, without the bytes 0 and 1 (the
/// store separates fields with them).
pub(crate) fn check_group(g: &str) -> Result<()> {
    if g.len() > MAX_GROUP_LEN {
        return Err(Error::InvalidOption("group is over 256 bytes"));
    }
    if g.bytes().any(|b| b <= 1) {
        return Err(Error::InvalidOption("group contains the byte 0 or 1"));
    }
    Ok(())
}

/// The job a [`StartLimiter`] is asked about.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct JobStart<'a> {
    /// The queue.
    pub queue: &'a str,
    /// The job.
    pub id: &'a JobId,
    /// The job's type name.
    pub name: &'a str,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

/// What a [`StartLimiter`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartDecision {
    /// Run the job now.
    Start,
    /// Not now: the job is ready again after `retry_after`, in its place, without using an
    /// attempt. With `pause_queue`, no job of the queue starts (on any worker) before then
    /// either: right for a quota the whole queue shares.
    Wait {
        /// How long until the quota has room.
        retry_after: Duration,
        /// Whether the whole queue waits.
        pause_queue: bool,
    },
}

/// A quota asked before each job starts, shared with other code: for instance the rate limit
/// of an HTTP route, so that handlers and workers spend one budget ("the payment provider
/// allows 100 calls a second, shared by the API and the workers").
///
/// A worker asks it once per fetched job, before the handler runs
/// ([`Worker::start_limiter`](crate::Worker::start_limiter)). The facade crate `redtower`
/// (features `jobs` and `ratelimit`) implements it over a `redtower-ratelimit` store and
/// policy (`redtower::quota::SharedQuota`); any other quota fits too.
///
/// ```
/// use std::{sync::atomic::{AtomicU32, Ordering}, time::Duration};
/// use redtower_jobs::{JobStart, StartDecision, StartLimiter};
///
/// /// At most `left` starts in this process (a toy quota).
/// #[derive(Debug)]
/// struct Budget { left: AtomicU32 }
///
/// #[redtower_jobs::async_trait::async_trait]
/// impl StartLimiter for Budget {
///     async fn check(&self, _job: JobStart<'_>) -> StartDecision {
///         if self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
///             StartDecision::Start
///         } else {
///             StartDecision::Wait { retry_after: Duration::from_secs(1), pause_queue: true }
///         }
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait StartLimiter: fmt::Debug + Send + Sync + 'static {
    /// Whether `job` may start now. A limiter that cannot decide (its store is down) chooses
    /// itself whether to start the job or make it wait.
    async fn check(&self, job: JobStart<'_>) -> StartDecision;
}

#[async_trait::async_trait]
impl<T: StartLimiter + ?Sized> StartLimiter for Arc<T> {
    async fn check(&self, job: JobStart<'_>) -> StartDecision {
        (**self).check(job).await
    }
}
