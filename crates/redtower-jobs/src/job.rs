//! Typed jobs, ids, options and backoff.

use std::{fmt, time::Duration};

use redtower_client::TraceContext;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A job type: a serde payload with a stable name.
///
/// The name is stored with every job and picks the handler on the worker side, so keep it stable
/// across deploys (rename the Rust type freely, never the `NAME`).
///
/// ```
/// use redtower_jobs::Job;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Welcome { to: String }
///
/// impl Job for Welcome {
///     const NAME: &'static str = "welcome";
/// }
/// assert_eq!(Welcome::NAME, "welcome");
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name of this job type.
    const NAME: &'static str;
}

/// The id of a job, unique within its queue. Assigned by the store when the job is added.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Wraps an id (as returned by [`Queue::add`](crate::Queue::add) or read back from a log).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// How long to wait before retrying a failed attempt.
///
/// The delay is a duration relative to the moment the failure is settled, measured by the
/// store's clock (Redis `TIME` for Redis), never the worker's.
///
/// ```
/// use std::time::Duration;
/// use redtower_jobs::Backoff;
///
/// let b = Backoff::exponential(Duration::from_secs(2));
/// assert_eq!(b.delay(1), Duration::from_secs(2)); // after the 1st failed attempt
/// assert_eq!(b.delay(2), Duration::from_secs(4));
/// assert_eq!(b.delay(3), Duration::from_secs(8));
/// assert_eq!(Backoff::fixed(Duration::from_millis(500)).delay(7), Duration::from_millis(500));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    #[serde(rename = "k")]
    kind: BackoffKind,
    #[serde(rename = "ms", deserialize_with = "lenient_ms")]
    base_ms: u64,
    #[serde(rename = "max", default, deserialize_with = "lenient_ms")]
    max_ms: u64,
    #[serde(rename = "j", default)]
    jitter: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BackoffKind {
    Fixed,
    Exponential,
}

impl Default for Backoff {
    /// Exponential from one second, capped at one hour, no jitter.
    fn default() -> Self {
        Self::exponential(Duration::from_secs(1))
    }
}

/// The longest backoff delay kept: 100 years. Longer ones are clamped to it, so that every
/// delay stays an exact integer in the stored record (Lua numbers are doubles).
const MAX_BACKOFF_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_BACKOFF_MS)
}

// A stored delay in ms: an integer, or a float as Lua may write it back; clamped to
// MAX_BACKOFF_MS. Negative or not a number: the record is bad (its job goes dead with the
// reason).
fn lenient_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Number::deserialize(d)? {
        n if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0).min(MAX_BACKOFF_MS)),
        n => match n.as_f64() {
            Some(f) if f >= 0.0 => Ok((f as u64).min(MAX_BACKOFF_MS)),
            _ => Err(serde::de::Error::custom(format!(
                "backoff delay {n} ms is negative"
            ))),
        },
    }
}

impl Backoff {
    /// The same delay after every failed attempt.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            kind: BackoffKind::Fixed,
            base_ms: ms(delay),
            max_ms: 0,
            jitter: 0.0,
        }
    }

    /// `base`, `2 * base`, `4 * base`, ... after the 1st, 2nd, 3rd failed attempt (BullMQ's
    /// `exponential`), capped at one hour unless [`max`](Self::max) says otherwise.
    pub fn exponential(base: Duration) -> Self {
        Self {
            kind: BackoffKind::Exponential,
            base_ms: ms(base),
            max_ms: 3_600_000,
            jitter: 0.0,
        }
    }

    /// Caps every delay at `max`. Defaults to one hour for exponential backoff. Every delay is
    /// also capped at 100 years.
    #[must_use]
    pub fn max(mut self, max: Duration) -> Self {
        self.max_ms = ms(max);
        self
    }

    /// Randomizes each delay by up to `ratio` of itself, downwards (`0.2`: between 80% and
    /// 100% of the delay), so that jobs failing together do not retry together. Clamped to
    /// `0.0..=1.0`. Defaults to `0.0`.
    #[must_use]
    pub fn jitter(mut self, ratio: f64) -> Self {
        self.jitter = if ratio.is_finite() {
            ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The delay after failed attempt number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let raw = match self.kind {
            BackoffKind::Fixed => self.base_ms,
            BackoffKind::Exponential => {
                let shift = attempt.saturating_sub(1).min(63);
                self.base_ms.saturating_mul(1u64 << shift)
            }
        };
        let capped = if self.max_ms > 0 {
            raw.min(self.max_ms)
        } else {
            raw
        };
        Duration::from_millis(capped.min(MAX_BACKOFF_MS))
    }

    /// The delay after failed attempt `attempt`, with jitter applied.
    pub fn delay_with_jitter(&self, attempt: u32) -> Duration {
        let d = self.delay(attempt);
        if self.jitter <= 0.0 {
            return d;
        }
        // A ratio read back from a stored record may be anything: clamp it again.
        let ratio = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let cut = rand::random::<f64>() * ratio;
        Duration::try_from_secs_f64(d.as_secs_f64() * (1.0 - cut)).unwrap_or(d)
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for its run time (delayed, or backing off before a retry).
    Scheduled,
    /// Ready to be picked up by a worker.
    Ready,
    /// Held by a worker under a lease.
    Active,
    /// Finished successfully (kept under the completed retention).
    Completed,
    /// Failed for good: out of attempts, failed permanently, or lost too often (kept under the
    /// dead retention).
    Dead,
    /// A flow parent waiting for its children (see [`Flow`](crate::Flow)).
    WaitingChildren,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 6] = [
        JobState::WaitingChildren,
        JobState::Scheduled,
        JobState::Ready,
        JobState::Active,
        JobState::Completed,
        JobState::Dead,
    ];

    pub(crate) fn code(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::WaitingChildren => "waiting",
        }
    }

    pub(crate) fn from_code(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.code() == s)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The stored record of a job (the same JSON shape in every backend).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) data: String,
    pub(crate) attempt: u32,
    pub(crate) max: u32,
    pub(crate) backoff: Backoff,
    pub(crate) prio: u32,
    pub(crate) seq: u64,
    pub(crate) created: u64,
    #[serde(default)]
    pub(crate) stalls: u32,
    #[serde(default, deserialize_with = "null_string")]
    pub(crate) err: Option<String>,
    #[serde(default, deserialize_with = "null_string")]
    pub(crate) uniq: Option<String>,
    #[serde(default, deserialize_with = "null_u64")]
    pub(crate) started: Option<u64>,
    #[serde(default, deserialize_with = "null_u64")]
    pub(crate) fin: Option<u64>,
    /// The W3C trace context of the span that added the job (see [`trace_field`]).
    #[serde(
        rename = "tc",
        default,
        skip_serializing_if = "Option::is_none",
        with = "trace_field"
    )]
    pub(crate) trace: Option<TraceContext>,
    /// The job's fair group, if any (`g`).
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// A flow child's parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fp: Option<crate::flow::FlowParent>,
    /// A flow parent's child keys, while it waits for them.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_list"
    )]
    pub(crate) fw: Option<Vec<String>>,
    /// A flow parent's child specs, until its flow is sealed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "null_string"
    )]
    pub(crate) fspec: Option<String>,
    /// A flow parent's children's outcomes, once they are final.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_kids"
    )]
    pub(crate) kids: Option<Vec<crate::flow::KidRecord>>,
    /// The last progress value (JSON text): kept here by the memory store, next to the
    /// record by the Redis store (never in the record's text).
    #[serde(skip)]
    pub(crate) progress: Option<String>,
    /// The completing attempt's result (JSON text), as `progress`.
    #[serde(skip)]
    pub(crate) result: Option<String>,
}

// Lua's cjson writes an empty table as `{}`: an empty list.
fn lenient_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(v @ serde_json::Value::Array(_)) => serde_json::from_value(v).ok(),
        _ => None,
    })
}

fn lenient_kids<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<crate::flow::KidRecord>>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(v @ serde_json::Value::Array(_)) => serde_json::from_value(v).ok(),
        _ => None,
    })
}

/// The record's `tc` field: a [`TraceContext`] as its encoded text (at most
/// [`TraceContext::MAX_ENCODED_LEN`] bytes). Reading is lenient: a record without the field
/// (written before it existed, or without the `opentelemetry` feature), or with one that is
/// not a valid context, loads with none; a bad context never fails its job.
pub(crate) mod trace_field {
    use redtower_client::TraceContext;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        cx: &Option<TraceContext>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match cx {
            Some(cx) => s.serialize_str(&cx.encode()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<TraceContext>, D::Error> {
        Ok(match Option::<serde_json::Value>::deserialize(d)? {
            Some(serde_json::Value::String(s)) => TraceContext::decode(&s),
            _ => None,
        })
    }
}

// Lua's cjson writes a missing value as `null` and may write integers as floats.
fn null_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(
        Option::<serde_json::Value>::deserialize(d)?.and_then(|v| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            _ => None,
        }),
    )
}

fn null_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<serde_json::Value>::deserialize(d)?.and_then(|v| v.as_f64().map(|f| f as u64)))
}

/// What the admin API shows of a job.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JobInfo {
    /// The id.
    pub id: JobId,
    /// The job type's [`Job::NAME`].
    pub name: String,
    /// The payload as JSON text.
    pub data: String,
    /// The current state.
    pub state: JobState,
    /// Attempts made so far, the running one included (a lease lost to a crashed worker and a
    /// job handed back at shutdown do not count).
    pub attempts_made: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// How often a worker lost the job's lease (crashed, partitioned, too slow).
    pub stalls: u32,
    /// The priority (`0` is the most urgent).
    pub priority: u32,
    /// The last error, after a failed attempt.
    pub last_error: Option<String>,
    /// When it was added, in ms since the Unix epoch by the store's clock.
    pub created_at_ms: u64,
    /// When an attempt started, in ms since the Unix epoch by the store's clock: the running one
    /// for an active job, the last failed one for any other job that has failed before.
    /// `None` for completed jobs: a job's record is not rewritten when it starts or completes
    /// (that write would cost more than the rest of a no-op job), so only its finish time is
    /// kept; a worker's [`on_completed`](crate::Worker::on_completed) hook sees the run time.
    pub started_at_ms: Option<u64>,
    /// When it finished, in ms since the Unix epoch by the store's clock.
    pub finished_at_ms: Option<u64>,
    /// For scheduled jobs: when it becomes ready; for active jobs: when the lease ends (ms since
    /// the Unix epoch by the store's clock).
    pub due_at_ms: Option<u64>,
    /// The dedup key, if any.
    pub unique_key: Option<String>,
    /// The last progress value the handler reported
    /// ([`JobContext::progress`](crate::JobContext::progress)), kept across attempts; `None`
    /// before any. Filled by [`Queue::get`](crate::Queue::get) (not by
    /// [`Queue::list`](crate::Queue::list)).
    pub progress: Option<serde_json::Value>,
    /// The value the handler returned when it completed the job (`None` for `()` and before
    /// completion). A failed job's error is [`last_error`](Self::last_error). Filled by
    /// [`Queue::get`](crate::Queue::get) (not by [`Queue::list`](crate::Queue::list)); kept
    /// and trimmed with the job (its [`Retention`](crate::Retention)).
    pub result: Option<serde_json::Value>,
}

impl JobInfo {
    /// `rec.attempt` counts failed attempts; an active job's running attempt and a completed
    /// job's last attempt are added here. `running_since` is the start of an active job's
    /// attempt (kept with its lease).
    pub(crate) fn from_record(
        rec: Record,
        state: JobState,
        due: Option<u64>,
        running_since: Option<u64>,
    ) -> Self {
        let (attempts_made, started) = match state {
            JobState::Active => (rec.attempt + 1, running_since.or(rec.started)),
            JobState::Completed => (rec.attempt + 1, None),
            _ => (rec.attempt, rec.started),
        };
        Self {
            id: JobId(rec.id),
            name: rec.name,
            data: rec.data,
            state,
            attempts_made,
            max_attempts: rec.max,
            stalls: rec.stalls,
            priority: rec.prio,
            last_error: rec.err,
            created_at_ms: rec.created,
            started_at_ms: started,
            finished_at_ms: rec.fin,
            due_at_ms: due,
            unique_key: rec.uniq,
            progress: rec
                .progress
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            result: rec
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok()),
        }
    }

    /// What can be shown of a job whose stored record does not decode: the raw record as its
    /// data and the reason as its last error.
    pub(crate) fn stub(id: JobId, raw: String, state: JobState, reason: String) -> Self {
        Self {
            id,
            name: String::new(),
            data: raw,
            state,
            attempts_made: 0,
            max_attempts: 0,
            stalls: 0,
            priority: 0,
            last_error: Some(reason),
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            due_at_ms: None,
            unique_key: None,
            progress: None,
            result: None,
        }
    }

    /// Decodes the payload as `J`, if it is one.
    pub fn decode<J: Job>(&self) -> Option<J> {
        if self.name != J::NAME {
            return None;
        }
        serde_json::from_str(&self.data).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn record(tail: &str) -> Record {
        let raw = format!(
            r#"{{"id":"1","name":"n","data":"{{}}","attempt":0,"max":3,"backoff":{{"k":"fixed","ms":10}},"prio":0,"seq":1,"created":1{tail}}}"#
        );
        serde_json::from_str(&raw).unwrap()
    }

    #[test]
    fn the_trace_field_is_optional_and_lenient() {
        assert_eq!(record("").trace, None);
        assert_eq!(record(r#","tc":null"#).trace, None);
        assert_eq!(record(r#","tc":7"#).trace, None);
        assert_eq!(record(r#","tc":{"traceparent":"x"}"#).trace, None);
        assert_eq!(record(r#","tc":"00-zz""#).trace, None);
        let long = format!(r#","tc":"{TP};{}""#, "a".repeat(1000));
        assert_eq!(record(&long).trace, None);
        let cx = TraceContext::new(TP, Some("k=v")).unwrap();
        let rec = record(&format!(r#","tc":"{TP};k=v""#));
        assert_eq!(rec.trace.as_ref(), Some(&cx));
        // Written back only when present.
        let text = serde_json::to_string(&rec).unwrap();
        assert!(text.contains(&format!(r#""tc":"{TP};k=v""#)), "{text}");
        let plain = serde_json::to_string(&record("")).unwrap();
        assert!(!plain.contains("\"tc\""), "{plain}");
    }
}
