//! [`RedisStore`]: the production backend. Every state change is one Lua script using Redis
//! `TIME`; every key of a queue shares one hash tag (`rt:q:{<queue>}:<structure>`).

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use fred::types::Value;
use futures::stream::BoxStream;
use redtower_client::{
    Key, Redis, Script, TraceContext,
    batch::{Coalescer, Uncoalesced},
};

use super::{
    Counts, Enqueued, Fetched, Lease, NewJob, QueueStore, Retention, Settle, Settled, Waiter,
    WorkReply, WorkRequest,
};
use crate::{
    Error, Result,
    event::QueueEvent,
    flow::{FlowDep, FlowMessage},
    job::{JobId, JobInfo, JobState, Record},
    progress::OutputKind,
    schedule::{Fire, FirstTick, StoredScheduler},
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

/// A script that also uses the quota prelude (fair groups, per-group limits).
macro_rules! quota_script {
    ($name:literal, $file:literal) => {
        LazyLock::new(|| {
            Script::new(
                $name,
                concat!(
                    include_str!("../lua/common.lua"),
                    include_str!("../lua/quota.lua"),
                    include_str!(concat!("../lua/", $file, ".lua"))
                ),
            )
        })
    };
}

static ENQUEUE: LazyLock<Script> = script!("jobs_enqueue", "enqueue");
static WORK: LazyLock<Script> = quota_script!("jobs_work", "work");
static EXTEND: LazyLock<Script> = script!("jobs_extend", "extend");
static ADMIN: LazyLock<Script> = quota_script!("jobs_admin", "admin");
static SCHEDULE: LazyLock<Script> = script!("jobs_schedule", "schedule");
static FLOW: LazyLock<Script> = script!("jobs_flow", "flow");
static OUTPUT: LazyLock<Script> = script!("jobs_output", "output");

const PARTS: [&str; 12] = [
    "jobs", "ready", "sched", "active", "done", "dead", "lease", "uniq", "meta", "wake", "events",
    "seq",
];
/// Flow keys (see `lua/flow.lua`): KEYS[13..17] of the admin and flow scripts.
const FLOW_PARTS: [&str; 5] = ["fwait", "fdeps", "fout", "fmsg", "funseal"];
const WAKE: usize = 9;
/// The keys of fair groups (see `lua/quota.lua`).
const GROUP_PARTS: [&str; 4] = ["gturn", "gheld", "gact", "gjob"];
const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);
const EVENTS: usize = 10;
/// At most this many tick jobs are added by one schedule call of a scheduler pass.
const MAX_TICKS_PER_CALL: usize = 1_000;

/// At most this many single adds share one enqueue call.
const MAX_COALESCED_ADDS: usize = 200;

/// Single adds waiting for the enqueue call ahead of them: (queue, job) in, its result out.
type Adds = Coalescer<(String, NewJob), Result<Enqueued>>;

/// One scheduler upsert: id, spec, first tick.
type Upsert = (String, String, FirstTick);

/// Scheduler upserts waiting for the schedule call ahead of them: (queue, upsert) in, whether
/// it changed the scheduler out.
type Upserts = Coalescer<(String, Upsert), Result<bool>>;

/// The Redis backend of [`QueueStore`].
///
/// Keys of queue `email` (prefix `rt`): `rt:q:{email}:jobs` (HASH id → record),
/// `:ready` (ZSET by priority then order), `:sched` (ZSET by due time), `:active` (ZSET by lease
/// end), `:done` and `:dead` (ZSET by finish time, trimmed by retention), `:lease` (HASH id →
/// fence `<batch>.<start ms>.<i>`, the part of a lease token that the store checks), `:uniq` (HASH dedup key → id), `:meta` (paused), `:wake` (LIST, the signal
/// idle workers block on), `:events` (STREAM, capped) and `:seq` (ids and tokens). They are not
/// given TTLs: retention bounds them. Job schedulers: `:sspec` (HASH id → spec), `:snext`
/// (ZSET id → next tick), `:sstate` (HASH id → version and run count), and one marker per
/// tick a pass fired, `:tick:<scheduler>:<tick ms>` → job id (kept for the idempotency window;
/// the first tick of an `every`, added by its upsert, has none).
/// Quotas ([`QueueLimits`](crate::QueueLimits)): limits, the rate state and the turn counters
/// are fields of `:meta`; fair groups use `:gturn` (ZSET group → its last turn, pruned once
/// the queue's turn passes it), and with a per-group limit `:gact` (HASH group → running jobs),
/// `:gjob` (HASH running job → group) and `:gheld` (ZSET of jobs waiting for their group).
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
    coalesce_adds: bool,
    adds: Option<Arc<Adds>>,
    upserts: Option<Arc<Upserts>>,
}

impl RedisStore {
    /// A store over `redis`.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            events_max_len: 1_000,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            coalesce_adds: true,
            adds: None,
            upserts: None,
        }
        .configure()
    }

    /// Whether concurrent single adds share enqueue calls (default on): an add that arrives
    /// while an earlier add's call is on the wire leaves with the others that arrived
    /// meanwhile, as one script call (at most 200 adds, two calls on the wire at a time). A
    /// lone add leaves at once, so an idle queue pays nothing in latency; under load the
    /// records, ready entries and `added` events of a call are written in batches (see
    /// `add_bulk`), which is most of an add's cost in Redis. Each add still gets its own
    /// answer; the call is re-sent safely as a whole (its answer is kept, see
    /// [`idempotency_window`](Self::idempotency_window)), and when it fails, every add in it
    /// fails with its error.
    ///
    /// Concurrent scheduler upserts ([`Queue::schedule`](crate::Queue::schedule)) share
    /// schedule calls the same way (each upsert is applied on its own, and a re-sent call is
    /// answered from its marker, as an add call is).
    #[must_use]
    pub fn coalesce_adds(mut self, on: bool) -> Self {
        self.coalesce_adds = on;
        self.configure()
    }

    /// Rebuilds the coalescers of single adds and upserts for the current settings (their
    /// calls use a copy of the store without them, so they hold no reference to themselves).
    fn configure(mut self) -> Self {
        let plain = Self {
            adds: None,
            upserts: None,
            ..self.clone()
        };
        self.adds = self.coalesce_adds.then(|| {
            let plain = plain.clone();
            Arc::new(
                Coalescer::new(MAX_COALESCED_ADDS, move |items: Vec<(String, NewJob)>| {
                    let store = plain.clone();
                    async move { store.enqueue_coalesced(items).await }
                })
                .in_flight(2),
            )
        });
        self.upserts = self.coalesce_adds.then(|| {
            Arc::new(
                Coalescer::new(MAX_COALESCED_ADDS, move |items: Vec<(String, Upsert)>| {
                    let store = plain.clone();
                    async move { store.upsert_coalesced(items).await }
                })
                .in_flight(2),
            )
        });
        self
    }

    /// How long the idempotency key of an add is remembered (see
    /// [`AddJob::idempotency_key`](crate::AddJob::idempotency_key)): an add carrying the key of
    /// a job added less than this long ago returns that job and adds nothing. Defaults to
    /// 5 minutes; at least 1 second.
    ///
    /// An add with a key leaves one marker (`rt:q:{<queue>}:idem:<key>`, about 120 bytes) for
    /// this long. Every add call (one job or a batch) also leaves one marker with its answer
    /// (`rt:q:{<queue>}:add:<random id>`, about 110 bytes plus 8 per job) for at most a
    /// minute, for the client's own re-send of that call; so does every scheduler upsert call
    /// (`:ups:<random id>`, one byte per upsert). A queue holds about `calls per
    /// second x 60 s` of the latter, plus the keyed adds of the last window.
    ///
    /// Work requests are answered again when re-sent for the lease length, at least 10 s and
    /// at most this window (an answer is about 100 bytes plus 40 per job it settled or
    /// fetched, kept only for requests that settled or fetched something).
    #[must_use]
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window.max(Duration::from_secs(1));
        self.configure()
    }

    /// The approximate cap (`MAXLEN ~`) of each queue's event stream, in entries; `0` turns
    /// events off. Defaults to 1,000. An entry is one event, except that the completions of
    /// one worker exchange share an entry, and so do the `added` events of one enqueue or
    /// schedule call (up to 100 of them per entry).
    #[must_use]
    pub fn events_max_len(mut self, n: u64) -> Self {
        self.events_max_len = n;
        self.configure()
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

    /// The queue's keys followed by its flow keys.
    fn flow_keys(&self, queue: &str) -> Vec<Key> {
        let base = self.base(queue);
        PARTS
            .iter()
            .chain(FLOW_PARTS.iter())
            .map(|p| base.clone().push(*p))
            .collect()
    }

    /// Runs the flow script (`op` and its arguments; `extra` keys after the flow keys).
    async fn flow(&self, queue: &str, extra: Vec<Key>, args: Vec<Value>) -> Result<Value> {
        let mut keys = self.flow_keys(queue);
        keys.extend(extra);
        let mut argv = vec![Value::from(int(self.events_max_len))];
        argv.extend(args);
        self.run(&FLOW, keys, argv).await
    }

    fn group_keys(&self, queue: &str) -> impl Iterator<Item = Key> {
        let base = self.base(queue);
        GROUP_PARTS.into_iter().map(move |p| base.clone().push(p))
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
        // The flow keys (KEYS[13..17]), then the group keys (KEYS[18..21]).
        let mut keys = self.flow_keys(queue);
        keys.extend(self.group_keys(queue));
        self.run(&ADMIN, keys, argv).await
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
        let base = self.base(queue);
        keys.push(base.clone().push("x").push(request_id.as_str()));
        // A flow child's outbox (KEYS[14], KEYS[15]), then the group keys (KEYS[16..19]).
        keys.push(base.clone().push("fout"));
        keys.push(base.push("fmsg"));
        keys.extend(self.group_keys(queue));
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
                (Settle::CompleteFlowChild { flow_result }, _) => {
                    ("u", 0.into(), flow_result.unwrap_or_default().into())
                }
                (Settle::Delay { delay, pause_queue }, _) => (
                    "d",
                    ms(delay).into(),
                    if pause_queue { "1" } else { "0" }.into(),
                ),
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

    /// One schedule call applying `fires` (see `lua/schedule.lua`): per fire, its jobs' ids or
    /// `None` when its compare-and-set failed.
    async fn fire_call(&self, queue: &str, fires: &[Fire]) -> Result<Vec<Option<Vec<JobId>>>> {
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.base(queue);
        let mut markers = Vec::new();
        let mut argv: Vec<Value> = vec![
            "fire".into(),
            ms(self.idempotency_window).max(1).into(),
            (fires.len() as i64).into(),
        ];
        for fire in fires {
            let j = &fire.job;
            let tail = tick_tail(j)?;
            argv.extend([
                fire.id.as_str().into(),
                int(fire.version).into(),
                int(fire.expected_next).into(),
                fire.next.map_or_else(|| "".into(), |t| int(t).into()),
                j.name.as_str().into(),
                tail.into(),
                i64::from(j.priority).into(),
                (fire.ticks.len() as i64).into(),
            ]);
            for t in &fire.ticks {
                argv.push(int(*t).into());
                markers.push(
                    base.clone()
                        .push("tick")
                        .push(fire.id.as_str())
                        .push(t.to_string().as_str()),
                );
            }
        }
        let v = self.schedule(queue, markers, argv).await?;
        let out: Vec<Option<Vec<JobId>>> = v
            .into_array()
            .into_iter()
            .map(|ids| {
                if ids.is_null() {
                    return Ok(None);
                }
                ids.into_array()
                    .into_iter()
                    .map(|id| text(id).map(JobId::new))
                    .collect::<Result<_>>()
                    .map(Some)
            })
            .collect::<Result<_>>()?;
        if out.len() != fires.len() {
            return Err(Error::Protocol("fire schedulers reply".into()));
        }
        Ok(out)
    }

    /// The single adds of one coalesced batch, one enqueue call per queue.
    async fn enqueue_coalesced(&self, items: Vec<(String, NewJob)>) -> Vec<Result<Enqueued>> {
        per_queue(items, |queue, jobs| async move {
            self.enqueue_call(&queue, jobs).await
        })
        .await
    }

    /// The upserts of one coalesced batch, one call per queue.
    async fn upsert_coalesced(&self, items: Vec<(String, Upsert)>) -> Vec<Result<bool>> {
        per_queue(items, |queue, upserts| async move {
            self.upsert_call(&queue, upserts).await
        })
        .await
    }

    /// One schedule call applying `upserts` in order (see `lua/schedule.lua`): whether each
    /// changed its scheduler.
    async fn upsert_call(&self, queue: &str, upserts: Vec<Upsert>) -> Result<Vec<bool>> {
        let n = upserts.len();
        let mut argv: Vec<Value> = Vec::with_capacity(3 + 7 * n);
        argv.push("upsert".into());
        argv.push((n as i64).into());
        argv.push(
            ms(super::random_key_window(self.idempotency_window))
                .max(1)
                .into(),
        );
        for (id, spec, first) in upserts {
            argv.push(id.into());
            argv.push(spec.into());
            // The first tick, then the job it adds in the upsert (name, tail, priority) and the
            // step to the next tick (`now` only).
            let no_job = || ["", "", "0", ""].map(Value::from);
            match first {
                FirstTick::Now { job, then } => argv.extend([
                    "now".into(),
                    job.name.as_str().into(),
                    tick_tail(&job)?.into(),
                    i64::from(job.priority).into(),
                    then.map_or_else(|| "".into(), |d| ms(d).max(1).into()),
                ]),
                FirstTick::At(t) => {
                    argv.push(int(t).into());
                    argv.extend(no_job());
                }
                FirstTick::Never => {
                    argv.push("".into());
                    argv.extend(no_job());
                }
            }
        }
        // The call's own marker: a re-send of this very request is answered from it.
        let marker = self
            .base(queue)
            .push("ups")
            .push(super::random_key().as_str());
        let v = self.schedule(queue, vec![marker], argv).await?;
        let out = v
            .into_array()
            .iter()
            .map(|v| num(v).map(|n| n == 1))
            .collect::<Result<Vec<_>>>()?;
        if out.len() != n {
            return Err(Error::Protocol("upsert schedulers reply".into()));
        }
        Ok(out)
    }

    /// One enqueue script call for `jobs` (an `add_bulk`, or coalesced single adds).
    async fn enqueue_call(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.base(queue);
        let mut keys = self.keys(queue);
        // The call's own marker: a re-send of this very request finds it.
        keys.push(base.clone().push("add").push(super::random_key().as_str()));
        // The group-turn ZSET (KEYS[14]).
        keys.push(base.clone().push(GROUP_PARTS[0]));
        // Jobs with none of the per-job options send only their name and record tail.
        let plain = jobs.iter().all(|j| {
            j.idempotency_key.is_none()
                && j.unique_key.is_none()
                && j.group.is_none()
                && j.priority == 0
                && j.delay.is_zero()
        });
        let width = if plain { 2 } else { 7 };
        let mut argv: Vec<Value> = Vec::with_capacity(5 + jobs.len() * width);
        argv.push(int(self.events_max_len).into());
        argv.push((jobs.len() as i64).into());
        argv.push(ms(self.idempotency_window).max(1).into());
        argv.push(
            ms(super::random_key_window(self.idempotency_window))
                .max(1)
                .into(),
        );
        argv.push((width as i64).into());
        for j in jobs {
            // The record minus its opening brace and the fields the script adds (id, seq,
            // created), so the script stores it without a JSON round trip.
            let mut tail = serde_json::to_string(&RecordTail::of(&j)).map_err(Error::Serialize)?;
            tail.remove(0);
            argv.push(j.name.into());
            argv.push(tail.into());
            if plain {
                continue;
            }
            // A caller's idempotency key: its marker, by its (1-based) index in KEYS.
            let key_index = match &j.idempotency_key {
                Some(key) => {
                    keys.push(base.clone().push("idem").push(key.as_str()));
                    keys.len() as i64
                }
                None => 0,
            };
            argv.push(key_index.into());
            argv.push(i64::from(j.priority).into());
            argv.push(ms(j.delay).into());
            argv.push(j.unique_key.unwrap_or_default().into());
            argv.push(j.group.unwrap_or_default().into());
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
}

/// The record tail of a scheduler tick's job (the record minus its opening brace and the
/// fields the script adds): it carries none of a caller's per-job keys (dedup, trace, flow,
/// group).
fn tick_tail(job: &NewJob) -> Result<String> {
    let mut tail = serde_json::to_string(&RecordTail {
        uniq: None,
        tc: None,
        fp: None,
        g: None,
        ..RecordTail::of(job)
    })
    .map_err(Error::Serialize)?;
    tail.remove(0);
    Ok(tail)
}

/// The items of one coalesced batch, `(queue, item)`: one `call` per queue (a batch usually
/// holds one), all at once; the results in the items' order. When a call fails, each of its
/// items gets its error.
async fn per_queue<T, R, F, Fut>(items: Vec<(String, T)>, call: F) -> Vec<Result<R>>
where
    F: Fn(String, Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>>>,
{
    let n = items.len();
    let mut groups: Vec<(String, Vec<usize>, Vec<T>)> = Vec::new();
    for (i, (queue, item)) in items.into_iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == queue) {
            Some(g) => {
                g.1.push(i);
                g.2.push(item);
            }
            None => groups.push((queue, vec![i], vec![item])),
        }
    }
    let calls = groups.into_iter().map(|(queue, idx, items)| {
        let call = &call;
        async move { (idx, call(queue, items).await) }
    });
    let mut out: Vec<Option<Result<R>>> = (0..n).map(|_| None).collect();
    for (idx, result) in futures::future::join_all(calls).await {
        match result {
            Ok(done) => {
                for (i, r) in idx.into_iter().zip(done) {
                    out[i] = Some(Ok(r));
                }
            }
            Err(e) => {
                for i in idx {
                    out[i] = Some(Err(same_error(&e)));
                }
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Protocol("short coalesced reply".to_owned()))))
        .collect()
}

/// A copy of `e` for each item of a failed coalesced call (errors are not `Clone`).
fn same_error(e: &Error) -> Error {
    match e {
        Error::Redis(redtower_client::Error::Redis { kind, source }) => {
            Error::Redis(redtower_client::Error::Redis {
                kind: *kind,
                source: source.clone(),
            })
        }
        Error::Redis(other) => Error::Redis(redtower_client::Error::reply(other.to_string())),
        Error::PayloadTooLarge { size, limit } => Error::PayloadTooLarge {
            size: *size,
            limit: *limit,
        },
        Error::InvalidOption(what) => Error::InvalidOption(what),
        Error::InvalidSchedule(what) => Error::InvalidSchedule(what.clone()),
        other => Error::Protocol(other.to_string()),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    fp: Option<&'a crate::flow::FlowParent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    g: Option<&'a str>,
}

impl<'a> RecordTail<'a> {
    /// The tail of a new job's record (first attempt, no stalls).
    fn of(j: &'a NewJob) -> Self {
        Self {
            name: &j.name,
            data: &j.data,
            attempt: 0,
            max: j.max_attempts,
            backoff: &j.backoff,
            prio: j.priority,
            stalls: 0,
            uniq: j.unique_key.as_deref(),
            tc: j.trace.as_ref().map(TraceContext::encode),
            // A flow child's parent (queue, id, key): its final state goes to the outbox.
            fp: j.flow_parent.as_ref(),
            g: j.group.as_deref(),
        }
    }
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
                5 => Settled::Delayed,
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
            // A flow child completes through the record (its outbox message), like a job
            // with a dedup key.
            token: Token::format(
                &tok,
                attempt,
                rec.uniq.is_some() || rec.fp.is_some(),
                &rec.name,
            ),
        },
        flow_child: rec.fp.is_some(),
        children: rec
            .kids
            .unwrap_or_default()
            .into_iter()
            .map(crate::flow::KidRecord::into_result)
            .collect(),
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
    async fn enqueue(&self, queue: &str, mut jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if let (Some(adds), 1) = (&self.adds, jobs.len()) {
            let job = jobs.pop().expect("one job");
            match adds.call((queue.to_owned(), job)).await {
                Ok(result) => return result.map(|e| vec![e]),
                // No runtime to batch on: the add goes on its own.
                Err(Uncoalesced::NotSent((_, job))) => jobs.push(job),
                Err(Uncoalesced::Dropped) => {
                    return Err(Error::Redis(redtower_client::Error::reply(
                        "the enqueue call carrying this add was dropped before it answered",
                    )));
                }
            }
        }
        self.enqueue_call(queue, jobs).await
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
            waiting_children: n(6),
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

    async fn set_limits(&self, queue: &str, limits: crate::QueueLimits) -> Result<()> {
        let (n, per) = limits.rate.unwrap_or((0, Duration::ZERO));
        let args: Vec<Value> = vec![
            "limits".into(),
            i64::from(n).into(),
            ms(per).into(),
            i64::from(limits.concurrency.unwrap_or(0)).into(),
            i64::from(limits.group_concurrency.unwrap_or(0)).into(),
        ];
        self.admin(queue, args).await?;
        Ok(())
    }

    async fn limits(&self, queue: &str) -> Result<crate::QueueLimits> {
        let v = self
            .admin(queue, vec!["getlimits".into()])
            .await?
            .into_array();
        let get = |i: usize| {
            v.get(i)
                .and_then(|x| x.as_str().and_then(|s| s.parse::<u64>().ok()))
                .filter(|n| *n > 0)
        };
        let mut out = crate::QueueLimits::new();
        if let (Some(n), Some(per)) = (get(0), get(1)) {
            out.rate = Some((
                u32::try_from(n).unwrap_or(u32::MAX),
                Duration::from_millis(per),
            ));
        }
        out.concurrency = get(2).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        out.group_concurrency = get(3).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(out)
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
        first: FirstTick,
    ) -> Result<bool> {
        let mut upsert = (id.to_owned(), spec, first);
        if let Some(upserts) = &self.upserts {
            match upserts.call((queue.to_owned(), upsert)).await {
                Ok(result) => return result,
                // No runtime to batch on: the upsert goes on its own.
                Err(Uncoalesced::NotSent((_, u))) => upsert = u,
                Err(Uncoalesced::Dropped) => {
                    return Err(Error::Redis(redtower_client::Error::reply(
                        "the schedule call carrying this upsert was dropped before it answered",
                    )));
                }
            }
        }
        let mut out = self.upsert_call(queue, vec![upsert]).await?;
        out.pop()
            .ok_or_else(|| Error::Protocol("upsert schedulers reply".into()))
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

    async fn fire_schedulers(
        &self,
        queue: &str,
        fires: Vec<Fire>,
    ) -> Result<Vec<Option<Vec<JobId>>>> {
        // Calls of at most MAX_TICKS_PER_CALL ticks (each fire stands alone, so they may be
        // split), sent together.
        let mut calls: Vec<&[Fire]> = Vec::new();
        let (mut from, mut ticks) = (0, 0);
        for (i, fire) in fires.iter().enumerate() {
            if ticks > 0 && ticks + fire.ticks.len() > MAX_TICKS_PER_CALL {
                calls.push(&fires[from..i]);
                (from, ticks) = (i, 0);
            }
            ticks += fire.ticks.len();
        }
        calls.push(&fires[from..]);
        let fired =
            futures::future::join_all(calls.into_iter().map(|c| self.fire_call(queue, c))).await;
        let mut out = Vec::with_capacity(fires.len());
        for call in fired {
            out.extend(call?);
        }
        Ok(out)
    }

    async fn add_parent(
        &self,
        queue: &str,
        job: NewJob,
        deps: Vec<FlowDep>,
        spec: String,
    ) -> Result<Enqueued> {
        let tail = serde_json::to_string(&RecordTail {
            name: &job.name,
            data: &job.data,
            attempt: 0,
            max: job.max_attempts,
            backoff: &job.backoff,
            prio: job.priority,
            stalls: 0,
            uniq: None,
            tc: job.trace.as_ref().map(TraceContext::encode),
            fp: job.flow_parent.as_ref(),
            g: job.group.as_deref(),
        })
        .map_err(Error::Serialize)?;
        let base = self.base(queue);
        // The caller's idempotency key, or one for this call only (a re-send finds it).
        let marker = match &job.idempotency_key {
            Some(k) => base.push("idem").push(k.as_str()),
            None => base.push("add").push(super::random_key().as_str()),
        };
        let keep = if job.idempotency_key.is_some() {
            self.idempotency_window
        } else {
            super::random_key_window(self.idempotency_window)
        };
        let mut argv: Vec<Value> = vec![
            "parent".into(),
            ms(keep).max(1).into(),
            job.name.as_str().into(),
            tail.get(1..).unwrap_or_default().into(),
            i64::from(job.priority).into(),
            (deps.len() as i64).into(),
            spec.into(),
        ];
        for d in &deps {
            argv.push(d.key.as_str().into());
            argv.push(d.policy_code().into());
        }
        let v = self.flow(queue, vec![marker], argv).await?.into_array();
        let mut it = v.into_iter();
        let (Some(id), Some(code)) = (it.next(), it.next()) else {
            return Err(Error::Protocol("flow parent reply".into()));
        };
        let id = JobId::new(text(id)?);
        Ok(if num(&code)? == 1 {
            Enqueued::New(id)
        } else {
            Enqueued::Existing(id)
        })
    }

    async fn seal_parent(&self, queue: &str, id: &JobId) -> Result<()> {
        self.flow(queue, vec![], vec!["seal".into(), id.as_str().into()])
            .await?;
        Ok(())
    }

    async fn unsealed_parents(
        &self,
        queue: &str,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<(JobId, String)>> {
        let v = self
            .flow(
                queue,
                vec![],
                vec![
                    "unsealed".into(),
                    ms(older_than).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
        v.into_array()
            .into_iter()
            .map(|row| {
                let mut it = row.into_array().into_iter();
                match (it.next(), it.next()) {
                    (Some(id), Some(spec)) => Ok((JobId::new(text(id)?), text(spec)?)),
                    _ => Err(Error::Protocol("unsealed flow row".into())),
                }
            })
            .collect()
    }

    async fn take_outbox(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<FlowMessage>> {
        let v = self
            .flow(
                queue,
                vec![],
                vec![
                    "take".into(),
                    ms(lease).max(1).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
        let mut out = Vec::new();
        for row in v.into_array() {
            let mut it = row.into_array().into_iter();
            let (Some(id), Some(msg)) = (it.next(), it.next()) else {
                return Err(Error::Protocol("outbox row".into()));
            };
            let (id, msg) = (text(id)?, text(msg)?);
            match serde_json::from_str::<crate::flow::MessageRecord>(&msg) {
                Ok(m) => out.push(m.into_message(id)),
                Err(e) => {
                    // Not deliverable: dropped, so that it does not come back for ever.
                    tracing::warn!(target: "redtower::jobs", queue, id, error = %e, "bad flow outbox message; dropping it");
                    self.ack_outbox(queue, vec![id]).await?;
                }
            }
        }
        Ok(out)
    }

    async fn deliver(
        &self,
        parent_queue: &str,
        child_queue: &str,
        messages: Vec<FlowMessage>,
        retention: Retention,
    ) -> Result<Vec<u8>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut argv: Vec<Value> = vec![
            "deliver".into(),
            int(retention.dead_count).into(),
            child_queue.into(),
            (messages.len() as i64).into(),
        ];
        for m in messages {
            argv.push(m.parent.id.as_str().into());
            argv.push(m.parent.key.into());
            argv.push(m.child.as_str().into());
            argv.push(m.status.code().into());
            argv.push(m.error.unwrap_or_default().into());
            argv.push(m.result.unwrap_or_default().into());
        }
        let v = self.flow(parent_queue, vec![], argv).await?;
        v.into_array()
            .iter()
            .map(|c| num(c).map(|c| u8::try_from(c).unwrap_or(0)))
            .collect()
    }

    async fn ack_outbox(&self, queue: &str, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut argv: Vec<Value> = vec!["ack".into()];
        argv.extend(ids.into_iter().map(Value::from));
        self.flow(queue, vec![], argv).await?;
        Ok(())
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
