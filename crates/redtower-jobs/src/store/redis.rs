//! [`RedisStore`]: the production backend. Every state change is one Lua script using Redis
//! `TIME`; every key of a queue shares one hash tag (`rt:q:{<queue>}:<structure>`).

use std::{sync::LazyLock, time::Duration};

use fred::types::Value;
use futures::stream::BoxStream;
use redtower_client::{Key, Redis, Script, TraceContext};

use super::{
    Counts, Enqueued, Fetched, Lease, NewJob, QueueStore, Settle, Settled, Waiter, WorkReply,
    WorkRequest,
};
use crate::{
    Error, Result,
    event::QueueEvent,
    job::{JobId, JobInfo, JobState, Record},
    progress::OutputKind,
    schedule::{Fire, StoredScheduler},
};

mod events;
mod waiter;

use waiter::RedisWaiter;

macro_rules! script {
    ($name:literal, $file:literal) => {
        LazyLock::new(|| {
            Script::new(
                $name,
                concat!(
                    include_str!("../lua/common.lua"),
                    include_str!(concat!("../lua/", $file, ".lua"))
                ),
            )
        })
    };
}

static ENQUEUE: LazyLock<Script> = script!("jobs_enqueue", "enqueue");
static WORK: LazyLock<Script> = script!("jobs_work", "work");
static EXTEND: LazyLock<Script> = script!("jobs_extend", "extend");
static ADMIN: LazyLock<Script> = script!("jobs_admin", "admin");
static SCHEDULE: LazyLock<Script> = script!("jobs_schedule", "schedule");
static OUTPUT: LazyLock<Script> = script!("jobs_output", "output");

const PARTS: [&str; 12] = [
    "jobs", "ready", "sched", "active", "done", "dead", "lease", "uniq", "meta", "wake", "events",
    "seq",
];
const WAKE: usize = 9;
const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);
const EVENTS: usize = 10;

/// The Redis backend of [`QueueStore`].
///
/// Keys of queue `email` (prefix `rt`): `rt:q:{email}:jobs` (HASH id → record),
/// `:ready` (ZSET by priority then order), `:sched` (ZSET by due time), `:active` (ZSET by lease
/// end), `:done` and `:dead` (ZSET by finish time, trimmed by retention), `:lease` (HASH id →
/// fence `<batch>.<start ms>.<i>`, the part of a lease token that the store checks), `:uniq` (HASH dedup key → id), `:meta` (paused), `:wake` (LIST, the signal
/// idle workers block on), `:events` (STREAM, capped) and `:seq` (ids and tokens). They are not
/// given TTLs: retention bounds them. Job schedulers: `:sspec` (HASH id → spec), `:snext`
/// (ZSET id → next tick), `:sstate` (HASH id → version and run count), and one marker per
/// fired tick, `:tick:<scheduler>:<tick ms>` → job id (kept for the idempotency window).
///
/// Cloning is cheap.
///
/// ```no_run
/// use redtower_client::{Redis, RedisConfig};
/// use redtower_jobs::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// let store = RedisStore::new(redis).events_max_len(10_000);
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisStore {
    redis: Redis,
    events_max_len: u64,
    idempotency_window: Duration,
}

impl RedisStore {
    /// A store over `redis`.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            events_max_len: 1_000,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }

    /// How long the idempotency key of an add is remembered (see
    /// [`AddJob::idempotency_key`](crate::AddJob::idempotency_key)): an add carrying the key of
    /// a job added less than this long ago returns that job and adds nothing. Defaults to
    /// 5 minutes; at least 1 second.
    ///
    /// An add with a key leaves one marker (`rt:q:{<queue>}:idem:<key>`, about 120 bytes) for
    /// this long. Every add call (one job or a batch) also leaves one marker with its answer
    /// (`rt:q:{<queue>}:add:<random id>`, about 110 bytes plus 8 per job) for at most a
    /// minute, for the client's own re-send of that call. A queue holds about `calls per
    /// second x 60 s` of the latter, plus the keyed adds of the last window.
    ///
    /// Work requests are answered again when re-sent for the lease length, at least 10 s and
    /// at most this window (an answer is about 100 bytes plus 40 per job it settled or
    /// fetched, kept only for requests that settled or fetched something).
    #[must_use]
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window.max(Duration::from_secs(1));
        self
    }

    /// The approximate cap (`MAXLEN ~`) of each queue's event stream, in entries; `0` turns
    /// events off. Defaults to 1,000. An entry is one event, except that the completions of
    /// one worker exchange share an entry (up to 100 of them).
    #[must_use]
    pub fn events_max_len(mut self, n: u64) -> Self {
        self.events_max_len = n;
        self
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    fn base(&self, queue: &str) -> Key {
        self.redis.keyspace().namespace("q").key(queue)
    }

    fn keys(&self, queue: &str) -> Vec<Key> {
        let base = self.base(queue);
        PARTS.iter().map(|p| base.clone().push(*p)).collect()
    }

    /// Runs the schedule script (`op` and its arguments; `extra` keys after the scheduler
    /// keys).
    async fn schedule(&self, queue: &str, extra: Vec<Key>, args: Vec<Value>) -> Result<Value> {
        let base = self.base(queue);
        let mut keys = self.keys(queue);
        keys.extend(["sspec", "snext", "sstate"].map(|p| base.clone().push(p)));
        keys.extend(extra);
        let mut argv = vec![Value::from(int(self.events_max_len))];
        argv.extend(args);
        self.run(&SCHEDULE, keys, argv).await
    }

    async fn admin(&self, queue: &str, args: Vec<Value>) -> Result<Value> {
        let mut argv = vec![Value::from(int(self.events_max_len))];
        argv.extend(args);
        self.run(&ADMIN, self.keys(queue), argv).await
    }

    /// The keys and arguments of the work script for `req` (see `lua/work.lua`).
    fn work_call(&self, queue: &str, req: WorkRequest) -> (Vec<Key>, Vec<Value>) {
        let r = req.retention;
        let mut argv: Vec<Value> = Vec::with_capacity(10 + req.settle.len() * 5);
        argv.push(int(self.events_max_len).into());
        argv.push(ms(req.lease).max(1).into());
        argv.push(i64::try_from(req.fetch).unwrap_or(i64::MAX).into());
        argv.push(i64::from(req.max_stalls).into());
        argv.push(int(r.completed_count).into());
        argv.push(ms(r.completed_age).into());
        argv.push(int(r.dead_count).into());
        argv.push(ms(r.dead_age).into());
        argv.push((req.settle.len() as i64).into());
        argv.push(ms(super::replay_window(req.lease, self.idempotency_window)).into());
        let mut keys = self.keys(queue);
        let request_id = req.request_id.unwrap_or_else(super::random_key);
        keys.push(self.base(queue).push("x").push(request_id.as_str()));
        for (lease, s) in req.settle {
            let token = Token::parse(&lease.token);
            argv.push(lease.id.as_str().into());
            argv.push(token.fence.into());
            let (kind, a, b): (_, Value, Value) = match (s, token.plain) {
                (Settle::Complete, Some((attempt, name))) => ("c", attempt.into(), name.into()),
                (Settle::Complete, None) => ("u", 0.into(), "".into()),
                (Settle::Retry { delay, error }, _) => ("r", ms(delay).into(), error.into()),
                (Settle::Fail { error }, _) => ("f", 0.into(), error.into()),
                (Settle::Release, _) => ("x", 0.into(), "".into()),
            };
            argv.push(kind.into());
            argv.push(a);
            argv.push(b);
        }
        (keys, argv)
    }

    /// Runs a script once the first connection is made: a store built on a fresh handle is
    /// not in an outage, its first calls wait for the connection (up to the command timeout)
    /// instead of failing (on a Cluster, fred fails a command sent before it has the routing
    /// table). After that, it returns at once.
    async fn run(&self, script: &Script, keys: Vec<Key>, argv: Vec<Value>) -> Result<Value> {
        self.redis.first_connection().await?;
        Ok(script.run::<Value, _, _>(&self.redis, keys, argv).await?)
    }
}

#[derive(serde::Serialize)]
struct RecordTail<'a> {
    name: &'a str,
    data: &'a str,
    attempt: u32,
    max: u32,
    backoff: &'a crate::job::Backoff,
    prio: u32,
    stalls: u32,
    uniq: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tc: Option<String>,
}

fn text(v: Value) -> Result<String> {
    v.into_string()
        .ok_or_else(|| Error::Protocol("expected a string".into()))
}

fn num(v: &Value) -> Result<i64> {
    v.as_i64()
        .ok_or_else(|| Error::Protocol("expected a number".into()))
}

fn record(raw: &str) -> Result<Record> {
    serde_json::from_str(raw).map_err(|e| Error::Protocol(format!("bad job record: {e}")))
}

/// What a lease token handed out by this store holds: `<fence>/<attempt>/<u><name>`, where the
/// fence `<batch>.<start ms>.<i>` is what the lease hash holds, and the rest lets a completion
/// settle without reading the job's record (`u` is `1` when the job has a dedup key, whose
/// release needs the record).
struct Token<'a> {
    fence: &'a str,
    /// The attempt and the name, for a job without a dedup key.
    plain: Option<(&'a str, &'a str)>,
}

impl<'a> Token<'a> {
    fn format(fence: &str, attempt: u32, unique: bool, name: &str) -> String {
        format!("{fence}/{attempt}/{}{name}", u8::from(unique))
    }

    fn parse(token: &'a str) -> Self {
        let Some((fence, rest)) = token.split_once('/') else {
            return Token {
                fence: token,
                plain: None,
            };
        };
        let plain = rest
            .split_once('/')
            .and_then(|(attempt, rest)| Some((attempt, rest.strip_prefix('0')?)));
        Token { fence, plain }
    }
}

/// The start of the attempt that holds a lease, from its token (`<batch>.<start ms>.<i>`).
fn started_of(token: &str) -> Option<u64> {
    let mut parts = Token::parse(token).fence.split('.');
    let (Some(_), Some(start), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    start.parse().ok()
}

/// A count as a Redis integer, saturated (`u64::MAX` means as many as there can be).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn info(rec: Record, state: JobState, score: f64, lease: &str) -> JobInfo {
    let due = matches!(state, JobState::Scheduled | JobState::Active).then_some(score as u64);
    let mut info = JobInfo::from_record(rec, state, due, started_of(lease));
    if matches!(state, JobState::Completed | JobState::Dead) && score >= 0.0 {
        // The finish time is the score of the done/dead set.
        info.finished_at_ms = Some(score as u64);
    }
    info
}

/// The job's info, or, when its record does not decode, what can be shown of it: the raw text
/// as its data and the reason as its last error.
fn info_or_stub(id: &str, raw: &str, state: JobState, score: f64, lease: &str) -> JobInfo {
    match record(raw) {
        Ok(rec) => info(rec, state, score, lease),
        Err(e) => JobInfo::stub(JobId::new(id), raw.to_owned(), state, e.to_string()),
    }
}

/// The work script's reply: settlement codes, fetched jobs, the next-due hint, the time.
fn work_reply(queue: &str, reply: Value) -> Result<WorkReply> {
    let mut parts = reply.into_array().into_iter();
    let (Some(codes), Some(jobs), Some(hint), Some(now)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Protocol("work reply".into()));
    };
    let now: u64 = text(now)?.parse().unwrap_or(0);
    let settled = codes
        .into_array()
        .iter()
        .map(|c| {
            Ok(match num(c)? {
                1 => Settled::Completed,
                2 => Settled::Retrying,
                3 => Settled::Dead,
                4 => Settled::Released,
                _ => Settled::Stale,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fetched = jobs
        .into_array()
        .into_iter()
        .map(|job| fetched(queue, job, now))
        .collect::<Result<Vec<_>>>()?;
    // Lua formats the hint with %.0f: parse as a float, so that a far-off due time is a
    // long hint rather than none.
    let hint: f64 = text(hint)?.parse().unwrap_or(-1.0);
    Ok(WorkReply {
        settled,
        jobs: fetched,
        next_due: (hint >= 0.0).then(|| Duration::from_millis(hint as u64)),
    })
}

/// One fetched job (`[id, fence, record]`, `now` the store's time) with its lease token; a
/// record that does not decode makes an [invalid](Fetched::invalid) job, which the worker
/// fails for good.
fn fetched(queue: &str, job: Value, now: u64) -> Result<Fetched> {
    let mut f = job.into_array().into_iter();
    let (Some(id), Some(tok), Some(raw)) = (f.next(), f.next(), f.next()) else {
        return Err(Error::Protocol("fetched job".into()));
    };
    let (id, tok, raw) = (text(id)?, text(tok)?, text(raw)?);
    let rec = match record(&raw) {
        Ok(rec) => rec,
        Err(e) => {
            // That job only: the worker fails it for good with this reason.
            tracing::warn!(target: "redtower::jobs", queue, id, error = %e, "job record does not decode; failing the job");
            return Ok(Fetched::invalid(
                Lease {
                    id: JobId::new(id),
                    token: Token::format(&tok, 1, true, ""),
                },
                raw,
                e.to_string(),
            ));
        }
    };
    // The record counts failed attempts; this one is the next.
    let attempt = rec.attempt.saturating_add(1);
    Ok(Fetched {
        lease: Lease {
            id: JobId::new(id),
            token: Token::format(&tok, attempt, rec.uniq.is_some(), &rec.name),
        },
        name: rec.name,
        data: rec.data,
        attempt,
        max_attempts: rec.max,
        backoff: rec.backoff,
        waited: Duration::from_millis(now.saturating_sub(rec.created)),
        invalid: None,
        trace: rec.trace,
    })
}

#[async_trait::async_trait]
impl QueueStore for RedisStore {
    async fn enqueue(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.base(queue);
        let mut keys = self.keys(queue);
        // The call's own marker: a re-send of this very request finds it.
        keys.push(base.clone().push("add").push(super::random_key().as_str()));
        let mut argv: Vec<Value> = Vec::with_capacity(4 + jobs.len() * 7);
        argv.push(int(self.events_max_len).into());
        argv.push((jobs.len() as i64).into());
        argv.push(ms(self.idempotency_window).max(1).into());
        argv.push(
            ms(super::random_key_window(self.idempotency_window))
                .max(1)
                .into(),
        );
        for j in jobs {
            // The record minus its opening brace and the fields the script adds (id, seq,
            // created), so the script stores it without a JSON round trip.
            let tail = serde_json::to_string(&RecordTail {
                name: &j.name,
                data: &j.data,
                attempt: 0,
                max: j.max_attempts,
                backoff: &j.backoff,
                prio: j.priority,
                stalls: 0,
                uniq: j.unique_key.as_deref(),
                tc: j.trace.as_ref().map(TraceContext::encode),
            })
            .map_err(Error::Serialize)?;
            // A caller's idempotency key: its marker, by its (1-based) index in KEYS.
            let key_index = match &j.idempotency_key {
                Some(key) => {
                    keys.push(base.clone().push("idem").push(key.as_str()));
                    keys.len() as i64
                }
                None => 0,
            };
            argv.push(j.name.into());
            argv.push(tail.get(1..).unwrap_or_default().into());
            argv.push(i64::from(j.max_attempts).into());
            argv.push(key_index.into());
            argv.push(i64::from(j.priority).into());
            argv.push(ms(j.delay).into());
            argv.push(j.unique_key.unwrap_or_default().into());
        }
        let reply: Value = self.run(&ENQUEUE, keys, argv).await?;
        let flat = reply.into_array();
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(new)) = (it.next(), it.next()) {
            let id = JobId::new(text(id)?);
            out.push(match num(&new)? {
                1 => Enqueued::New(id),
                2 => Enqueued::Existing(id),
                _ => Enqueued::Duplicate(id),
            });
        }
        Ok(out)
    }

    async fn work(&self, queue: &str, req: WorkRequest) -> Result<WorkReply> {
        let (keys, argv) = self.work_call(queue, req);
        let reply: Value = self.run(&WORK, keys, argv).await?;
        work_reply(queue, reply)
    }

    async fn extend(&self, queue: &str, leases: Vec<Lease>, lease: Duration) -> Result<Vec<JobId>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut argv: Vec<Value> = vec![int(self.events_max_len).into(), ms(lease).into()];
        for l in leases {
            argv.push(l.id.as_str().into());
            argv.push(Token::parse(&l.token).fence.into());
        }
        let reply: Value = self.run(&EXTEND, self.keys(queue), argv).await?;
        reply
            .into_array()
            .into_iter()
            .map(|v| text(v).map(JobId::new))
            .collect()
    }

    async fn waiter(&self, queue: &str) -> Result<Box<dyn Waiter>> {
        let wake = self.keys(queue).swap_remove(WAKE);
        Ok(Box::new(RedisWaiter::new(self.redis.clone(), wake)))
    }

    async fn counts(&self, queue: &str) -> Result<Counts> {
        let v = self.admin(queue, vec!["counts".into()]).await?.into_array();
        let n = |i: usize| v.get(i).and_then(Value::as_u64).unwrap_or(0);
        Ok(Counts {
            scheduled: n(0),
            ready: n(1),
            active: n(2),
            completed: n(3),
            dead: n(4),
            paused: n(5) == 1,
        })
    }

    async fn get(&self, queue: &str, id: &JobId) -> Result<Option<JobInfo>> {
        let v = self
            .admin(queue, vec!["get".into(), id.as_str().into()])
            .await?
            .into_array();
        let mut it = v.into_iter();
        let (Some(raw), Some(state), Some(score), Some(lease)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Ok(None);
        };
        let state = JobState::from_code(&text(state)?).unwrap_or(JobState::Ready);
        let score = score.as_f64().unwrap_or(-1.0);
        let lease = lease.into_string().unwrap_or_default();
        let mut info = info_or_stub(id.as_str(), &text(raw)?, state, score, &lease);
        // The outputs (see `lua/output.lua`): JSON text, '' when none.
        let mut output = || {
            it.next()
                .and_then(Value::into_string)
                .and_then(|s| serde_json::from_str(&s).ok())
        };
        info.progress = output();
        info.result = output();
        Ok(Some(info))
    }

    async fn list(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<JobInfo>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .admin(
                queue,
                vec![
                    "list".into(),
                    state.code().into(),
                    i64::try_from(offset).unwrap_or(i64::MAX).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?
            .into_array();
        let mut out = Vec::with_capacity(v.len() / 4);
        let mut it = v.into_iter();
        while let (Some(id), Some(raw), Some(score), Some(lease)) =
            (it.next(), it.next(), it.next(), it.next())
        {
            let score = score.as_f64().unwrap_or(-1.0);
            let lease = lease.into_string().unwrap_or_default();
            out.push(info_or_stub(&text(id)?, &text(raw)?, state, score, &lease));
        }
        Ok(out)
    }

    async fn retry_dead(&self, queue: &str, id: &JobId) -> Result<bool> {
        let v = self
            .admin(queue, vec!["retry".into(), id.as_str().into()])
            .await?;
        Ok(num(&v)? == 1)
    }

    async fn remove(&self, queue: &str, id: &JobId) -> Result<bool> {
        let v = self
            .admin(queue, vec!["remove".into(), id.as_str().into()])
            .await?;
        Ok(num(&v)? == 1)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let op = if paused { "pause" } else { "resume" };
        self.admin(queue, vec![op.into()]).await?;
        Ok(())
    }

    async fn time(&self, queue: &str) -> Result<u64> {
        // Through the admin script, so the TIME is the queue's node's (Cluster).
        let v = self.admin(queue, vec!["time".into()]).await?;
        u64::try_from(num(&v)?).map_err(|_| Error::Protocol("negative TIME".into()))
    }

    async fn events(&self, queue: &str) -> Result<BoxStream<'static, Result<QueueEvent>>> {
        let key = self.keys(queue).swap_remove(EVENTS);
        events::read(self.redis.clone(), key).await
    }

    async fn upsert_scheduler(
        &self,
        queue: &str,
        id: &str,
        spec: String,
        first: Option<u64>,
    ) -> Result<bool> {
        let first: Value = first.map_or_else(|| "".into(), |t| int(t).into());
        let v = self
            .schedule(
                queue,
                vec![],
                vec!["upsert".into(), id.into(), spec.into(), first],
            )
            .await?;
        Ok(num(&v)? == 1)
    }

    async fn remove_scheduler(&self, queue: &str, id: &str) -> Result<bool> {
        let v = self
            .schedule(queue, vec![], vec!["remove".into(), id.into()])
            .await?;
        Ok(num(&v)? == 1)
    }

    async fn schedulers(&self, queue: &str) -> Result<Vec<StoredScheduler>> {
        let v = self.schedule(queue, vec![], vec!["list".into()]).await?;
        v.into_array().into_iter().map(scheduler_row).collect()
    }

    async fn due_schedulers(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<(u64, Vec<StoredScheduler>, Option<u64>)> {
        let v = self
            .schedule(
                queue,
                vec![],
                vec![
                    "due".into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
        let mut it = v.into_array().into_iter();
        let (Some(now), Some(rows), Some(later)) = (it.next(), it.next(), it.next()) else {
            return Err(Error::Protocol("due schedulers reply".into()));
        };
        let now = text(now)?
            .parse()
            .map_err(|_| Error::Protocol("due schedulers time".into()))?;
        let rows = rows
            .into_array()
            .into_iter()
            .map(scheduler_row)
            .collect::<Result<Vec<_>>>()?;
        let later = later.into_string().and_then(|s| s.parse::<f64>().ok());
        Ok((now, rows, later.map(|f| f as u64)))
    }

    async fn put_output(
        &self,
        queue: &str,
        lease: &Lease,
        kind: OutputKind,
        value: String,
    ) -> Result<bool> {
        let kind = match kind {
            OutputKind::Progress => "p",
            _ => "r",
        };
        let argv: Vec<Value> = vec![
            int(self.events_max_len).into(),
            kind.into(),
            lease.id.as_str().into(),
            Token::parse(&lease.token).fence.into(),
            value.into(),
        ];
        let v = self.run(&OUTPUT, self.keys(queue), argv).await?;
        Ok(num(&v)? == 1)
    }

    async fn fire_scheduler(&self, queue: &str, fire: Fire) -> Result<Option<Vec<JobId>>> {
        let base = self.base(queue);
        let markers: Vec<Key> = fire
            .ticks
            .iter()
            .map(|t| {
                base.clone()
                    .push("tick")
                    .push(fire.id.as_str())
                    .push(t.to_string().as_str())
            })
            .collect();
        let j = &fire.job;
        let tail = serde_json::to_string(&RecordTail {
            name: &j.name,
            data: &j.data,
            attempt: 0,
            max: j.max_attempts,
            backoff: &j.backoff,
            prio: j.priority,
            stalls: 0,
            uniq: None,
            tc: None,
        })
        .map_err(Error::Serialize)?;
        let mut argv: Vec<Value> = vec![
            "fire".into(),
            fire.id.as_str().into(),
            int(fire.version).into(),
            int(fire.expected_next).into(),
            fire.next.map_or_else(|| "".into(), |t| int(t).into()),
            ms(self.idempotency_window).max(1).into(),
            j.name.as_str().into(),
            tail.get(1..).unwrap_or_default().into(),
            i64::from(j.priority).into(),
            (fire.ticks.len() as i64).into(),
        ];
        argv.extend(fire.ticks.iter().map(|t| Value::from(int(*t))));
        let v = self.schedule(queue, markers, argv).await?;
        if v.is_null() {
            return Ok(None);
        }
        Ok(Some(
            v.into_array()
                .into_iter()
                .map(|id| text(id).map(JobId::new))
                .collect::<Result<_>>()?,
        ))
    }
}

/// One scheduler row of the schedule script: id, spec, version, count, next ('' when none).
fn scheduler_row(row: Value) -> Result<StoredScheduler> {
    let mut it = row.into_array().into_iter();
    let (Some(id), Some(spec), Some(version), Some(count), Some(next)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Error::Protocol("scheduler row".into()));
    };
    let number = |v: Value| -> Result<u64> {
        text(v)?
            .parse()
            .map_err(|_| Error::Protocol("scheduler row number".into()))
    };
    let next = next
        .into_string()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse::<f64>().ok())
        .map(|f| f as u64);
    Ok(StoredScheduler {
        id: text(id)?,
        spec: text(spec)?,
        version: number(version)?,
        count: number(count)?,
        next,
    })
}
