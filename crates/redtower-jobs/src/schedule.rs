//! Job schedulers: a job added on every tick of a [`Schedule`], exactly once per tick across
//! any number of processes.
//!
//! # How a tick is made exactly once
//!
//! A scheduler is stored as its spec (the [`Schedule`] and the job template), a state (a
//! version bumped by every change of the spec, and the number of runs) and its next tick (a
//! time in ms, the score of a sorted set). Any process may run a pass
//! ([`Queue::run_schedulers`](crate::Queue::run_schedulers); every [`Worker`](crate::Worker)
//! runs them on its own):
//!
//! 1. read the due schedulers and the store's time (one call; Redis `TIME` decides, never a
//!    local clock);
//! 2. compute in process which ticks to fire (the catch-up policy, the end, the run limit) and
//!    the tick after them, from the cron expression or the interval;
//! 3. fire: one atomic step (one Lua script) that checks the scheduler's version and next tick
//!    are still those read in 1 (compare-and-set), adds one job per tick and stores the new next
//!    tick and run count.
//!
//! Two processes that read the same due scheduler compute the same ticks; the first fire wins
//! and the other's fails its compare-and-set and adds nothing. A process killed between 2 and 3
//! changed nothing: the next pass of any process fires the tick. A fire whose reply is lost
//! and that the client re-sends is also a failed compare-and-set, and each tick's job also
//! carries an idempotency marker derived from the scheduler id and the tick time
//! (`rt:q:{<queue>}:tick:<scheduler>:<tick ms>`, kept for the store's idempotency window), so
//! even a replay of an old fire adds nothing. Everything lives under the queue's hash tag:
//! Cluster-safe.

use std::{
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    job::{Backoff, JobId},
    store::{NewJob, QueueStore},
};

/// The most ticks one fire adds (a catch-up of more continues on the next pass).
pub(crate) const MAX_TICKS_PER_FIRE: usize = 100;
/// How many due schedulers one pass reads.
const DUE_BATCH: usize = 100;

/// What to do with ticks missed while no process ran the schedulers (an outage, a deploy).
///
/// A tick is *missed* when it is older than the schedule's [grace](Schedule::grace) when a
/// pass sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
#[non_exhaustive]
pub enum CatchUp {
    /// Missed ticks add no job; the schedule resumes at its next tick (the default: no burst
    /// after an outage).
    #[default]
    None,
    /// The latest missed tick adds one job; earlier ones add none.
    Last,
    /// Every missed tick not older than `within` adds its job (up to 100 per pass, the rest on
    /// the following passes); older ones add none.
    All {
        /// The oldest missed tick that still adds a job, counted back from now.
        #[serde(rename = "ms", with = "duration_ms")]
        within: Duration,
    },
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// Every this many ms, from the start.
    Every(u64),
    /// A cron expression (6 fields with seconds, or 5) and its time zone.
    Cron { expr: String, tz: String },
}

/// When a scheduler adds its job: every fixed interval, or on a cron expression in a time zone;
/// with an optional start, end and run limit, and a [`CatchUp`] policy.
///
/// ```
/// use std::time::Duration;
/// use redtower_jobs::{CatchUp, Schedule};
///
/// // Every 5 minutes on the wall clock of Berlin, at most 100 runs.
/// let s = Schedule::cron("0 */5 * * * *")?
///     .time_zone(chrono_tz::Europe::Berlin)
///     .limit(100);
/// // Every 30 s from the first upsert; after an outage, run the missed ticks of the last hour.
/// let t = Schedule::every(Duration::from_secs(30))
///     .catch_up(CatchUp::All { within: Duration::from_secs(3600) });
/// # let _ = (s, t);
/// # Ok::<(), redtower_jobs::Error>(())
/// ```
///
/// # Daylight saving time
///
/// [`every`](Self::every) counts real time: DST changes nothing. A [`cron`](Self::cron)
/// expression is read on the wall clock of its [time zone](Self::time_zone) (UTC by default),
/// by the rules of the [croner] crate (the Open Cron Pattern Specification):
///
/// * **A skipped local hour** (spring forward, e.g. 02:00 → 03:00 in Berlin): a fixed-time
///   expression whose time falls in the gap (`0 30 2 * * *`) runs once, at the first valid
///   time after the gap (03:00); an interval expression (`0 */15 * * * *`) has no ticks in the
///   gap and resumes after it.
/// * **A repeated local hour** (fall back, 03:00 → 02:00): a fixed-time expression runs once,
///   at the first occurrence of its time; an interval expression ticks through the first pass
///   of the hour only (the second pass, an hour of real time, has no ticks). Ticks never go
///   back in time: each is later than the one before, so no tick runs twice.
///
/// Both cases are tested (`dst_skipped_hour`, `dst_repeated_hour`, Europe/Berlin 2026).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    end: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    limit: Option<u64>,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default = "default_grace")]
    grace: u64,
}

fn default_grace() -> u64 {
    10_000
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

impl Schedule {
    /// A tick every `interval` (at least 1 ms), from the [start](Self::start) (by default: the
    /// moment the scheduler is first stored, whose tick runs at once).
    pub fn every(interval: Duration) -> Self {
        Self::new(Kind::Every(millis(interval).max(1)))
    }

    /// A tick on every match of a cron expression, in UTC unless [`time_zone`](Self::time_zone)
    /// says otherwise. Six fields (`sec min hour day month weekday`) or five (seconds `0`);
    /// ranges, lists, steps, names, `L`, `W` and `#` as in [croner].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSchedule`] when the expression does not parse.
    pub fn cron(expr: &str) -> Result<Self> {
        parse_cron(expr)?;
        Ok(Self::new(Kind::Cron {
            expr: expr.to_owned(),
            tz: "UTC".to_owned(),
        }))
    }

    fn new(kind: Kind) -> Self {
        Self {
            kind,
            start: None,
            end: None,
            limit: None,
            catch_up: CatchUp::None,
            grace: default_grace(),
        }
    }

    /// The time zone a cron expression is read in (no effect on [`every`](Self::every)).
    /// Defaults to UTC.
    #[must_use]
    pub fn time_zone(mut self, tz: Tz) -> Self {
        if let Kind::Cron { tz: z, .. } = &mut self.kind {
            *z = tz.name().to_owned();
        }
        self
    }

    /// No tick before `at`. For [`every`](Self::every), ticks are `at`, `at + interval`, ...
    /// A start in the past makes the ticks between it and the first pass missed ticks: the
    /// [catch-up policy](Self::catch_up) decides (a backfill with [`CatchUp::All`]).
    #[must_use]
    pub fn start(mut self, at: SystemTime) -> Self {
        self.start = Some(unix_ms(at));
        self
    }

    /// No tick after `at`: the scheduler then stays listed, finished.
    #[must_use]
    pub fn end(mut self, at: SystemTime) -> Self {
        self.end = Some(unix_ms(at));
        self
    }

    /// At most `n` jobs in all (ticks skipped by the catch-up policy do not count).
    #[must_use]
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// What to do with missed ticks. Defaults to [`CatchUp::None`].
    #[must_use]
    pub fn catch_up(mut self, policy: CatchUp) -> Self {
        self.catch_up = policy;
        self
    }

    /// How late a tick may be seen and still count as on time (not missed). Defaults to 10 s.
    #[must_use]
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = millis(d);
        self
    }

    /// The first tick when it needs no clock: `every` without a start or an end ticks first
    /// at the store's time of the upsert, which adds that tick's job (`job`).
    pub(crate) fn first_tick_now(&self, job: impl FnOnce() -> NewJob) -> Option<FirstTick> {
        let Kind::Every(ms) = self.kind else {
            return None;
        };
        if self.start.is_some() || self.end.is_some() {
            return None;
        }
        Some(match self.limit {
            Some(0) => FirstTick::Never,
            limit => FirstTick::Now {
                job: Box::new(job()),
                then: (limit != Some(1)).then_some(Duration::from_millis(ms)),
            },
        })
    }

    /// The first tick: at or after the start when there is one (possibly before `now`: such
    /// ticks are missed, see [`CatchUp`]), else at or after `now` (ms since the epoch).
    pub(crate) fn first_tick(&self, now: u64) -> Result<Option<u64>> {
        let from = self.start.unwrap_or(now);
        let t = match &self.kind {
            Kind::Every(_) => Some(from),
            Kind::Cron { .. } => self.cron_after(from, true)?,
        };
        Ok(t.filter(|t| self.end.is_none_or(|e| *t <= e)))
    }

    /// The tick after `tick`.
    fn after(&self, tick: u64) -> Result<Option<u64>> {
        let t = match &self.kind {
            Kind::Every(ms) => tick.checked_add(*ms),
            Kind::Cron { .. } => self.cron_after(tick, false)?,
        };
        Ok(t.filter(|t| self.end.is_none_or(|e| *t <= e)))
    }

    /// The first tick after the last one at or before `now`, skipping fast over a long
    /// interval.
    fn after_now(&self, tick: u64, now: u64) -> Result<Option<u64>> {
        match &self.kind {
            Kind::Every(ms) if now >= tick => {
                let k = (now - tick) / ms + 1;
                Ok(k.checked_mul(*ms)
                    .and_then(|d| tick.checked_add(d))
                    .filter(|t| self.end.is_none_or(|e| *t <= e)))
            }
            _ => {
                let mut t = Some(tick);
                while let Some(x) = t {
                    if x > now {
                        break;
                    }
                    t = self.cron_after(x.max(now), false)?;
                }
                Ok(t.filter(|t| self.end.is_none_or(|e| *t <= e)))
            }
        }
    }

    fn cron_after(&self, from: u64, inclusive: bool) -> Result<Option<u64>> {
        let Kind::Cron { expr, tz } = &self.kind else {
            return Ok(None);
        };
        let cron = parse_cron(expr)?;
        let tz = Tz::from_str(tz).map_err(|e| Error::InvalidSchedule(e.to_string()))?;
        // Cron ticks are whole seconds: the first at or after `from`, or after it.
        let secs = if inclusive {
            from.div_ceil(1000)
        } else {
            from / 1000
        };
        let Some(at) = DateTime::<Utc>::from_timestamp(i64::try_from(secs).unwrap_or(0), 0) else {
            return Ok(None);
        };
        let local = tz.from_utc_datetime(&at.naive_utc());
        Ok(cron
            .find_next_occurrence(&local, inclusive)
            .ok()
            .and_then(|next| u64::try_from(next.timestamp()).ok())
            .map(|s| s * 1000))
    }

    /// What a pass at `now` does with a scheduler whose next tick is `next` and that has run
    /// `count` times: the ticks to fire and the tick after them (`None`: finished).
    pub(crate) fn plan(&self, next: u64, count: u64, now: u64) -> Result<Plan> {
        let mut due = Vec::new();
        let mut t = Some(next);
        // The due ticks, newest kept; older than the catch-up bound are dropped on the way.
        let oldest_kept = match self.catch_up {
            CatchUp::None => now.saturating_sub(self.grace),
            CatchUp::Last => 0,
            CatchUp::All { within } => now.saturating_sub(millis(within).max(self.grace)),
        };
        let mut after = None;
        // Jump over ticks older than every kept one at once (a long outage of a fast schedule).
        if let (Kind::Every(ms), Some(x)) = (&self.kind, t)
            && !matches!(self.catch_up, CatchUp::Last)
            && x < oldest_kept
        {
            let k = (oldest_kept - x).div_ceil(*ms);
            t = k
                .checked_mul(*ms)
                .and_then(|d| x.checked_add(d))
                .filter(|t| self.end.is_none_or(|e| *t <= e));
        }
        while let Some(x) = t {
            if x > now {
                after = Some(x);
                break;
            }
            if matches!(self.catch_up, CatchUp::Last) {
                // Only the newest due tick counts: find it and the one after it.
                let next_after = self.after_now(x, now)?;
                let last = self.last_at_or_before(x, now)?;
                due.push(last);
                after = next_after;
                break;
            }
            if x >= oldest_kept {
                due.push(x);
                if due.len() == MAX_TICKS_PER_FIRE {
                    after = self.after(x)?;
                    break;
                }
            }
            t = self.after(x)?;
            if t.is_none() {
                after = None;
            }
        }
        // The run limit.
        let left = self.limit.map_or(u64::MAX, |l| l.saturating_sub(count));
        if (due.len() as u64) >= left {
            due.truncate(usize::try_from(left).unwrap_or(usize::MAX));
            after = None;
        }
        Ok(Plan {
            fire: due,
            next: after,
        })
    }

    /// The newest tick at or before `now`, from the due tick `tick`.
    fn last_at_or_before(&self, tick: u64, now: u64) -> Result<u64> {
        if let Kind::Every(ms) = self.kind {
            return Ok(tick + (now - tick) / ms * ms);
        }
        let mut last = tick;
        while let Some(x) = self.after(last)? {
            if x > now {
                break;
            }
            last = x;
        }
        Ok(last)
    }
}

fn parse_cron(expr: &str) -> Result<Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| Error::InvalidSchedule(format!("{expr:?}: {e}")))
}

/// The ticks one fire adds and the tick after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) fire: Vec<u64>,
    pub(crate) next: Option<u64>,
}

/// A new scheduler's first tick, as [`QueueStore::upsert_scheduler`](crate::QueueStore::upsert_scheduler)
/// stores it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FirstTick {
    /// At this time, in ms since the Unix epoch (store clock).
    At(u64),
    /// At the store's time when the upsert runs, and the upsert adds this tick's job itself:
    /// the first tick of [`Schedule::every`] without a start or an end, known without reading
    /// the store's clock first (one round trip instead of two), and queued when
    /// [`Queue::schedule`](crate::Queue::schedule) returns.
    Now {
        /// The tick's job (without delay; it carries none of a caller's per-job keys).
        job: Box<NewJob>,
        /// The next tick, this long after the first; `None`: the scheduler is finished after
        /// this job (a run limit of 1).
        then: Option<Duration>,
    },
    /// None: the scheduler is finished at once (its end is before its first tick, or it is an
    /// `every` from now with a run limit of 0).
    Never,
}

impl FirstTick {
    /// The first tick, given the store's time when the upsert runs.
    #[must_use]
    pub fn resolve(&self, now: u64) -> Option<u64> {
        match self {
            Self::At(t) => Some(*t),
            Self::Now { .. } => Some(now),
            Self::Never => None,
        }
    }
}

/// A scheduler as stored: its id, its spec (opaque JSON: the [`Schedule`] and the job
/// template), its version and run count, and its next tick.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredScheduler {
    /// The scheduler's id, unique within its queue.
    pub id: String,
    /// The spec as stored (JSON; see [`SchedulerSpec`]).
    pub spec: String,
    /// Bumped by every upsert that changed the spec.
    pub version: u64,
    /// Jobs added so far (since the spec last changed).
    pub count: u64,
    /// The next tick, in ms since the Unix epoch (store clock); `None`: finished.
    pub next: Option<u64>,
}

impl StoredScheduler {
    /// A stored scheduler (for stores outside this crate).
    pub fn new(
        id: impl Into<String>,
        spec: impl Into<String>,
        version: u64,
        count: u64,
        next: Option<u64>,
    ) -> Self {
        Self {
            id: id.into(),
            spec: spec.into(),
            version,
            count,
            next,
        }
    }
}

/// One fire of a scheduler: add one job per tick and store the next tick, if the scheduler's
/// version and next tick are still `version` and `expected_next` (compare-and-set).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Fire {
    /// The scheduler.
    pub id: String,
    /// The version read.
    pub version: u64,
    /// The next tick read: the fire applies only if it is still the stored one.
    pub expected_next: u64,
    /// The tick times to add a job for, in ms (each at or before the store's time).
    pub ticks: Vec<u64>,
    /// The next tick to store; `None`: the scheduler is finished.
    pub next: Option<u64>,
    /// The job to add for each tick (without delay; its idempotency key is derived by the
    /// store from the scheduler id and the tick).
    pub job: NewJob,
}

impl Fire {
    /// A fire of `scheduler` as read (its version and next tick are the compare-and-set's
    /// expected values): add `job` for each of `ticks`, then store `next`.
    pub fn new(
        scheduler: &StoredScheduler,
        ticks: Vec<u64>,
        next: Option<u64>,
        job: NewJob,
    ) -> Self {
        Self {
            id: scheduler.id.clone(),
            version: scheduler.version,
            expected_next: scheduler.next.unwrap_or(u64::MAX),
            ticks,
            next,
            job,
        }
    }
}

/// The spec of a scheduler as stored: the schedule and the job template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SchedulerSpec {
    /// When.
    #[serde(rename = "s")]
    pub schedule: Schedule,
    /// The job type's name.
    #[serde(rename = "n")]
    pub name: String,
    /// The payload as JSON text.
    #[serde(rename = "d")]
    pub data: String,
    /// The attempt limit of each job.
    #[serde(rename = "a")]
    pub max_attempts: u32,
    /// The retry schedule of each job.
    #[serde(rename = "b")]
    pub backoff: Backoff,
    /// The priority of each job.
    #[serde(rename = "p")]
    pub priority: u32,
}

impl SchedulerSpec {
    pub(crate) fn job(&self) -> NewJob {
        let mut job = NewJob::new(self.name.clone(), self.data.clone());
        job.max_attempts = self.max_attempts;
        job.backoff = self.backoff;
        job.priority = self.priority;
        job
    }
}

/// A scheduler, as listed by [`Queue::schedulers`](crate::Queue::schedulers).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SchedulerInfo {
    /// Its id.
    pub id: String,
    /// Its schedule.
    pub schedule: Schedule,
    /// The job type's name.
    pub name: String,
    /// The job payload (JSON text).
    pub data: String,
    /// Jobs added since the spec last changed.
    pub count: u64,
    /// The next tick; `None`: finished (past its end or its run limit).
    pub next: Option<SystemTime>,
}

impl SchedulerInfo {
    pub(crate) fn from_stored(s: StoredScheduler) -> Result<Self> {
        let spec: SchedulerSpec = serde_json::from_str(&s.spec)
            .map_err(|e| Error::Protocol(format!("bad scheduler spec: {e}")))?;
        Ok(Self {
            id: s.id,
            schedule: spec.schedule,
            name: spec.name,
            data: spec.data,
            count: s.count,
            next: s.next.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        })
    }
}

/// What one pass over a queue's schedulers did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedulerPass {
    /// The jobs added, with the scheduler and tick (ms since the epoch) of each.
    pub added: Vec<(String, u64, JobId)>,
    /// How long until the earliest next tick this pass knows of (`None`: none due soon is
    /// known; the caller polls).
    pub next_due: Option<Duration>,
}

/// One pass over `queue`'s due schedulers: read them with the store's time, plan each, fire
/// each (a lost compare-and-set means another process fired it: skipped).
pub(crate) async fn run_pass(store: &dyn QueueStore, queue: &str) -> Result<SchedulerPass> {
    let mut pass = SchedulerPass::default();
    let (now, due, upcoming) = store.due_schedulers(queue, DUE_BATCH).await?;
    // A full batch may have left due schedulers behind: the next pass is due at once.
    let mut soonest = if due.len() >= DUE_BATCH {
        Some(now)
    } else {
        upcoming
    };
    // Plan every due scheduler, then fire them all in one store call.
    let (mut plans, mut fires) = (Vec::with_capacity(due.len()), Vec::with_capacity(due.len()));
    for s in due {
        let Some(next) = s.next else { continue };
        let spec: SchedulerSpec = match serde_json::from_str(&s.spec) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(target: "redtower::jobs", queue, scheduler = s.id, error = %e, "scheduler spec does not decode; skipped");
                continue;
            }
        };
        let plan = match spec.schedule.plan(next, s.count, now) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::warn!(target: "redtower::jobs", queue, scheduler = s.id, error = %e, "scheduler cannot be planned; skipped");
                continue;
            }
        };
        fires.push(Fire::new(&s, plan.fire.clone(), plan.next, spec.job()));
        plans.push((s.id, plan));
    }
    let fired = store.fire_schedulers(queue, fires).await?;
    for ((id, plan), result) in plans.into_iter().zip(fired) {
        match result {
            Some(ids) => {
                for (tick, job) in plan.fire.iter().zip(ids) {
                    pass.added.push((id.clone(), *tick, job));
                }
                if let Some(n) = plan.next {
                    soonest = Some(soonest.map_or(n, |x: u64| x.min(n)));
                }
            }
            None => {
                tracing::debug!(target: "redtower::jobs", queue, scheduler = id, "tick fired elsewhere");
                soonest = Some(now);
            }
        }
    }
    if !pass.added.is_empty() {
        metrics::counter!("redtower_jobs_scheduled_total", "queue" => queue.to_owned())
            .increment(pass.added.len() as u64);
    }
    pass.next_due = soonest.map(|t| Duration::from_millis(t.saturating_sub(now)));
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 3_600_000;

    fn at(s: &str) -> u64 {
        u64::try_from(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()).unwrap()
    }

    #[test]
    fn every_fires_on_time_and_steps() {
        let s = Schedule::every(Duration::from_secs(60));
        assert_eq!(s.first_tick(1_000).unwrap(), Some(1_000));
        let p = s.plan(1_000, 0, 1_005).unwrap();
        assert_eq!(p.fire, vec![1_000]);
        assert_eq!(p.next, Some(61_000));
    }

    #[test]
    fn catch_up_policies() {
        let every = Schedule::every(Duration::from_millis(HOUR));
        let now = 10 * HOUR + 30 * MIN;
        // None: the missed ticks (0 h .. 10 h) add nothing; next is 11 h.
        let p = every.clone().plan(0, 0, now).unwrap();
        assert_eq!(p.fire, Vec::<u64>::new());
        assert_eq!(p.next, Some(11 * HOUR));
        // Last: one job, for 10 h.
        let p = every
            .clone()
            .catch_up(CatchUp::Last)
            .plan(0, 0, now)
            .unwrap();
        assert_eq!(p.fire, vec![10 * HOUR]);
        assert_eq!(p.next, Some(11 * HOUR));
        // All within 3 h: 8, 9 and 10 h.
        let p = every
            .clone()
            .catch_up(CatchUp::All {
                within: Duration::from_millis(3 * HOUR),
            })
            .plan(0, 0, now)
            .unwrap();
        assert_eq!(p.fire, vec![8 * HOUR, 9 * HOUR, 10 * HOUR]);
        assert_eq!(p.next, Some(11 * HOUR));
    }

    #[test]
    fn limit_and_end_finish_the_scheduler() {
        let s = Schedule::every(Duration::from_millis(10))
            .limit(3)
            .catch_up(CatchUp::All {
                within: Duration::from_secs(60),
            });
        let p = s.plan(0, 1, 100).unwrap();
        assert_eq!(p.fire, vec![0, 10]);
        assert_eq!(p.next, None);
        let s =
            Schedule::every(Duration::from_millis(10)).end(UNIX_EPOCH + Duration::from_millis(25));
        let p = s.plan(20, 0, 21).unwrap();
        assert_eq!(p.fire, vec![20]);
        assert_eq!(p.next, None);
    }

    #[test]
    fn a_long_outage_of_a_fast_schedule_is_skipped_at_once() {
        let s = Schedule::every(Duration::from_millis(1));
        // A year of missed 1 ms ticks: jumped over, not looped over. The ticks within the
        // 10 s grace are on time; a fire takes 100 of them, the next pass the rest.
        let now = 365 * 24 * HOUR;
        let p = s.plan(0, 0, now).unwrap();
        assert_eq!(p.fire.len(), MAX_TICKS_PER_FIRE);
        assert_eq!(p.fire[0], now - 10_000);
        assert_eq!(p.next, Some(now - 10_000 + 100));
    }

    #[test]
    fn cron_in_a_time_zone() {
        let s = Schedule::cron("0 */5 * * * *").unwrap();
        let t = at("2026-01-01T10:02:03Z");
        assert_eq!(s.first_tick(t).unwrap(), Some(at("2026-01-01T10:05:00Z")));
        let s = Schedule::cron("0 0 9 * * *")
            .unwrap()
            .time_zone(chrono_tz::Europe::Berlin);
        assert_eq!(s.first_tick(t).unwrap(), Some(at("2026-01-02T08:00:00Z")));
        assert!(matches!(
            Schedule::cron("nope"),
            Err(Error::InvalidSchedule(_))
        ));
    }

    /// Berlin springs forward on 2026-03-29 at 02:00 → 03:00: a fixed time in the gap runs
    /// once, at 03:00; an interval expression has no ticks in the gap.
    #[test]
    fn dst_skipped_hour() {
        let s = Schedule::cron("0 30 2 * * *")
            .unwrap()
            .time_zone(chrono_tz::Europe::Berlin);
        let from = at("2026-03-28T12:00:00Z");
        let first = s.first_tick(from).unwrap().unwrap();
        // 03:00 CEST, the first valid time after the gap.
        assert_eq!(first, at("2026-03-29T01:00:00Z"));
        let second = s.after(first).unwrap().unwrap();
        assert_eq!(second, at("2026-03-30T00:30:00Z"));

        let s = Schedule::cron("0 */30 * * * *")
            .unwrap()
            .time_zone(chrono_tz::Europe::Berlin);
        let mut t = s.first_tick(at("2026-03-29T00:15:00Z")).unwrap().unwrap();
        let mut ticks = vec![t];
        for _ in 0..3 {
            t = s.after(t).unwrap().unwrap();
            ticks.push(t);
        }
        // 01:30 CET, then 03:00 CEST (= 01:00 UTC): an hour of wall clock that never happened.
        assert_eq!(
            ticks,
            vec![
                at("2026-03-29T00:30:00Z"),
                at("2026-03-29T01:00:00Z"),
                at("2026-03-29T01:30:00Z"),
                at("2026-03-29T02:00:00Z"),
            ]
        );
    }

    /// Berlin falls back on 2026-10-25 at 03:00 → 02:00: a fixed time in the repeated hour runs
    /// once; ticks never go back in time.
    #[test]
    fn dst_repeated_hour() {
        let s = Schedule::cron("0 30 2 * * *")
            .unwrap()
            .time_zone(chrono_tz::Europe::Berlin);
        let first = s.first_tick(at("2026-10-24T12:00:00Z")).unwrap().unwrap();
        // 02:30 CEST (the first occurrence) = 00:30 UTC.
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        let second = s.after(first).unwrap().unwrap();
        assert_eq!(second, at("2026-10-26T01:30:00Z"), "not again at 02:30 CET");

        let s = Schedule::cron("0 0,30 * * * *")
            .unwrap()
            .time_zone(chrono_tz::Europe::Berlin);
        let mut t = s.first_tick(at("2026-10-24T23:45:00Z")).unwrap().unwrap();
        let mut ticks = vec![t];
        for _ in 0..5 {
            let n = s.after(t).unwrap().unwrap();
            assert!(n > t, "ticks only move forward");
            t = n;
            ticks.push(t);
        }
        // 02:00 and 02:30 CEST; the second pass of 02:00-03:00 (CET, 01:00-02:00 UTC) has
        // no ticks; then 03:00 CET.
        assert_eq!(
            ticks,
            vec![
                at("2026-10-25T00:00:00Z"),
                at("2026-10-25T00:30:00Z"),
                at("2026-10-25T02:00:00Z"),
                at("2026-10-25T02:30:00Z"),
                at("2026-10-25T03:00:00Z"),
                at("2026-10-25T03:30:00Z"),
            ]
        );
    }
}
