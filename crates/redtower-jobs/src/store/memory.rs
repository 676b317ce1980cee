//! [`MemoryStore`]: the in-process backend, with the same semantics as Redis and the tokio
//! clock (so tests can pause and advance time).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::stream::{BoxStream, StreamExt};
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use super::{
    Counts, Enqueued, Fetched, Lease, NewJob, QueueStore, Retention, Settle, Settled, Waiter,
    WorkReply, WorkRequest,
};
use crate::{
    Result,
    event::{EventKind, QueueEvent},
    flow::{FlowDep, FlowMessage},
    job::{JobId, JobInfo, JobState, Record},
    progress::OutputKind,
    schedule::{Fire, FirstTick, StoredScheduler},
};

mod flow;

const PRIO: u64 = 1 << 32;
/// How long the idempotency key of an add and the answer to a work request are kept (as
/// [`RedisStore::idempotency_window`](crate::RedisStore::idempotency_window)'s default).
const WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Replay {
    expires: u64,
    settled: Vec<Settled>,
    leased: Vec<(u64, String)>,
}

/// The in-memory backend of [`QueueStore`], for single-instance apps, tests and the example
/// app without Redis. Jobs are lost when the process exits.
///
/// Time comes from `tokio::time`, so `tokio::time::pause()` makes tests deterministic. This is
/// the store's clock (the system clock read once when the store is created, then advanced by
/// tokio time); like Redis `TIME` for [`RedisStore`](crate::RedisStore), it is the only clock
/// scheduling uses.
/// Idempotency keys of adds are kept for 5 minutes, answers to work requests for their lease
/// (at least 10 s, at most 5 minutes), as with [`RedisStore`](crate::RedisStore)'s defaults.
/// Cloning is cheap and clones share the queues.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    base_unix_ms: u64,
    queues: Mutex<HashMap<String, QueueState>>,
    events_cap: usize,
}

#[derive(Debug, Default)]
struct ZSet {
    by_score: BTreeSet<(u64, u64)>,
    score: HashMap<u64, u64>,
}

impl ZSet {
    fn add(&mut self, id: u64, score: u64) {
        if let Some(old) = self.score.insert(id, score) {
            self.by_score.remove(&(old, id));
        }
        self.by_score.insert((score, id));
    }
    fn rem(&mut self, id: u64) -> bool {
        match self.score.remove(&id) {
            Some(s) => self.by_score.remove(&(s, id)),
            None => false,
        }
    }
    fn len(&self) -> u64 {
        self.by_score.len() as u64
    }
    fn first(&self) -> Option<(u64, u64)> {
        self.by_score.first().copied()
    }
    fn due(&self, now: u64, limit: usize) -> Vec<u64> {
        self.by_score
            .iter()
            .take_while(|(s, _)| *s <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }
}

/// A job scheduler (see [`QueueStore::upsert_scheduler`]).
#[derive(Debug)]
struct Sched {
    spec: String,
    version: u64,
    count: u64,
    next: Option<u64>,
}

impl Sched {
    fn stored(&self, id: &str) -> StoredScheduler {
        StoredScheduler::new(id, self.spec.clone(), self.version, self.count, self.next)
    }
}

/// Limits and fair groups of one queue (as the Redis store's meta fields and group keys).
#[derive(Debug, Default)]
struct Quota {
    limits: crate::QueueLimits,
    /// GCRA: the theoretical arrival time of the next start, in µs.
    tat: f64,
    /// No job starts before this (ms).
    hold: u64,
    /// The highest turn handed to a worker.
    vt: u64,
    /// The last turn of ungrouped jobs.
    fu: u64,
    /// Group → its last turn (kept while above `vt`).
    gturn: HashMap<String, u64>,
    /// Jobs held while their group was full: (group, ready score, id).
    gheld: BTreeSet<(String, u64, u64)>,
    /// Group → running jobs; running job → group (while the per-group limit is set).
    gact: HashMap<String, u32>,
    gjob: HashMap<u64, String>,
    /// A held job went back to ready in this call.
    woke: bool,
}

impl Quota {
    /// The turn of a new job of `group`: max(V, the group's last turn) + 1.
    fn turn(&mut self, group: Option<&str>) -> u64 {
        let last = match group {
            None => &mut self.fu,
            Some(g) => self.gturn.entry(g.to_owned()).or_insert(0),
        };
        let t = self.vt.max(*last) + 1;
        *last = t;
        t
    }

    fn set_limits(&mut self, limits: crate::QueueLimits) -> Vec<u64> {
        if limits.rate.is_none() {
            self.tat = 0.0;
        }
        self.limits = limits;
        if limits.group_concurrency.is_none() {
            self.gact.clear();
            self.gjob.clear();
            return std::mem::take(&mut self.gheld)
                .into_iter()
                .map(|(_, _, id)| id)
                .collect();
        }
        Vec::new()
    }
}

/// One queue: its jobs, the sets that order them, and what makes calls safe to repeat.
#[derive(Debug)]
struct QueueState {
    seq: u64,
    jobs: HashMap<u64, Record>,
    ready: ZSet,
    sched: ZSet,
    active: ZSet,
    done: ZSet,
    dead: ZSet,
    /// id → (fencing token, start of the running attempt).
    lease: HashMap<u64, (String, u64)>,
    uniq: HashMap<String, u64>,
    /// Idempotency key of an add → (job id, expiry); the same keys by expiry, for trimming.
    idem: HashMap<String, (u64, u64)>,
    idem_exp: BTreeSet<(u64, String)>,
    /// Work request id → its answer (settlement codes, leases handed out) and expiry.
    replay: HashMap<String, Replay>,
    replay_exp: BTreeSet<(u64, String)>,
    paused: bool,
    /// Limits and fair groups (see `QueueLimits`).
    quota: Quota,
    /// Job schedulers by id.
    scheds: BTreeMap<String, Sched>,
    wake: watch::Sender<u64>,
    events: broadcast::Sender<QueueEvent>,
    /// Flows: waiting parents, their dependencies, the outbox.
    flow: flow::FlowState,
}

impl QueueState {
    /// Adds the job of one scheduler tick (no delay, none of a caller's per-job keys). A fired
    /// tick has a marker, kept for the idempotency window as the Redis store's
    /// `:tick:<scheduler>:<tick>` key: a tick fired again (the spec changed, its schedule
    /// repeats the tick) answers the job it added first.
    fn add_tick_job(&mut self, mut job: NewJob, marker: Option<String>, now: u64) -> JobId {
        job.delay = Duration::ZERO;
        job.unique_key = None;
        job.idempotency_key = marker;
        job.group = None;
        job.trace = None;
        job.flow_parent = None;
        let (e, _) = self.add(job, now, now.saturating_add(ms(WINDOW)));
        self.wake();
        e.id().clone()
    }

    /// Applies one scheduler fire (see [`QueueStore::fire_schedulers`]).
    fn fire(&mut self, fire: Fire, now: u64) -> Option<Vec<JobId>> {
        // In process there is no re-send: the compare-and-set under the lock is enough.
        let applies = self
            .scheds
            .get(&fire.id)
            .is_some_and(|s| s.version == fire.version && s.next == Some(fire.expected_next));
        if !applies || fire.ticks.iter().any(|t| *t > now) {
            return None;
        }
        self.expire(now);
        let ids: Vec<JobId> = fire
            .ticks
            .iter()
            .map(|tick| {
                // Apart from callers' keys (a NUL byte leads).
                let marker = format!("\0tick:{}:{tick}", fire.id);
                self.add_tick_job(fire.job.clone(), Some(marker), now)
            })
            .collect();
        if let Some(s) = self.scheds.get_mut(&fire.id) {
            s.count += ids.len() as u64;
            s.next = fire.next;
        }
        Some(ids)
    }

    fn new(cap: usize) -> Self {
        Self {
            seq: 0,
            jobs: HashMap::new(),
            ready: ZSet::default(),
            sched: ZSet::default(),
            active: ZSet::default(),
            done: ZSet::default(),
            dead: ZSet::default(),
            lease: HashMap::new(),
            uniq: HashMap::new(),
            idem: HashMap::new(),
            idem_exp: BTreeSet::new(),
            replay: HashMap::new(),
            replay_exp: BTreeSet::new(),
            paused: false,
            quota: Quota::default(),
            scheds: BTreeMap::new(),
            wake: watch::channel(0).0,
            events: broadcast::channel(cap.max(1)).0,
            flow: flow::FlowState::default(),
        }
    }

    /// Forgets idempotency keys and work answers whose window has passed.
    fn expire(&mut self, now: u64) {
        while let Some((exp, key)) = self.idem_exp.first().cloned() {
            if exp > now {
                break;
            }
            self.idem_exp.pop_first();
            if self.idem.get(&key).is_some_and(|(_, e)| *e == exp) {
                self.idem.remove(&key);
            }
        }
        while let Some((exp, key)) = self.replay_exp.first().cloned() {
            if exp > now {
                break;
            }
            self.replay_exp.pop_first();
            if self.replay.get(&key).is_some_and(|r| r.expires == exp) {
                self.replay.remove(&key);
            }
        }
    }

    /// Adds one job (see [`QueueStore::enqueue`]); `true` when it went to ready.
    fn add(&mut self, j: NewJob, now: u64, expires: u64) -> (Enqueued, bool) {
        // In process, a call is never re-sent: only a caller's key has a marker.
        let idem = j.idempotency_key.clone();
        if let Some((id, _)) = idem.as_ref().and_then(|k| self.idem.get(k)) {
            return (Enqueued::Existing(JobId::new(id.to_string())), false);
        }
        if let Some(&existing) = j.unique_key.as_ref().and_then(|u| self.uniq.get(u)) {
            if let Some(idem) = idem {
                self.idem.insert(idem.clone(), (existing, expires));
                self.idem_exp.insert((expires, idem));
            }
            return (Enqueued::Duplicate(JobId::new(existing.to_string())), false);
        }
        self.seq += 1;
        let id = self.seq;
        let turn = self.quota.turn(j.group.as_deref());
        let rec = Record {
            id: id.to_string(),
            name: j.name,
            data: j.data,
            attempt: 0,
            max: j.max_attempts,
            backoff: j.backoff,
            prio: j.priority,
            seq: turn,
            created: now,
            stalls: 0,
            err: None,
            uniq: j.unique_key.clone(),
            started: None,
            fin: None,
            trace: j.trace,
            fp: j.flow_parent,
            fw: None,
            fspec: None,
            kids: None,
            group: j.group,
            progress: None,
            result: None,
        };
        if let Some(u) = j.unique_key {
            self.uniq.insert(u, id);
        }
        if let Some(idem) = idem {
            self.idem.insert(idem.clone(), (id, expires));
            self.idem_exp.insert((expires, idem));
        }
        self.emit(EventKind::Added, &rec);
        self.jobs.insert(id, rec);
        let ready = j.delay.is_zero();
        if ready {
            self.ready_add(id);
        } else {
            self.sched_add(id, now.saturating_add(ms(j.delay)));
        }
        (Enqueued::New(JobId::new(id.to_string())), ready)
    }

    /// The job `id` as handed out under `token`.
    fn fetched(&self, id: u64, token: String, now: u64) -> Option<Fetched> {
        let rec = self.jobs.get(&id)?.clone();
        Some(Fetched {
            lease: Lease {
                id: JobId::new(rec.id),
                token,
            },
            name: rec.name,
            data: rec.data,
            attempt: rec.attempt.saturating_add(1),
            max_attempts: rec.max,
            backoff: rec.backoff,
            waited: Duration::from_millis(now.saturating_sub(rec.created)),
            invalid: None,
            trace: rec.trace,
            flow_child: rec.fp.is_some(),
            children: rec
                .kids
                .unwrap_or_default()
                .into_iter()
                .map(crate::flow::KidRecord::into_result)
                .collect(),
        })
    }

    fn next_due(&self, now: u64) -> Option<Duration> {
        [self.sched.first(), self.active.first()]
            .into_iter()
            .flatten()
            .map(|(s, _)| s.saturating_sub(now))
            .min()
            .map(Duration::from_millis)
    }

    fn wake(&self) {
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn emit(&self, kind: EventKind, rec: &Record) {
        let _ = self.events.send(QueueEvent {
            kind,
            id: JobId::new(rec.id.clone()),
            name: rec.name.clone(),
            attempt: rec.attempt,
            error: if matches!(kind, EventKind::Retrying | EventKind::Dead) {
                rec.err.clone()
            } else {
                None
            },
        });
    }

    fn ready_add(&mut self, id: u64) {
        if let Some(rec) = self.jobs.get(&id) {
            self.ready.add(
                id,
                u64::from(rec.prio)
                    .saturating_mul(PRIO)
                    .saturating_add(rec.seq),
            );
        }
    }

    fn sched_add(&mut self, id: u64, due: u64) {
        let earliest = self.sched.first().is_none_or(|(s, _)| s > due);
        self.sched.add(id, due);
        if earliest {
            self.wake();
        }
    }

    fn drop_uniq(&mut self, id: u64) {
        if let Some(u) = self.jobs.get(&id).and_then(|r| r.uniq.clone())
            && self.uniq.get(&u) == Some(&id)
        {
            self.uniq.remove(&u);
        }
    }

    /// `result`: a completed flow child's result, for its parent.
    fn finish(&mut self, id: u64, dead: bool, now: u64, r: &Retention, result: Option<String>) {
        if self.jobs.get(&id).is_some_and(|rec| rec.fp.is_some()) {
            let status = if dead {
                crate::flow::ChildStatus::Dead
            } else {
                crate::flow::ChildStatus::Completed
            };
            self.flow_out(id, status, result, now);
        }
        self.drop_uniq(id);
        let (keep_n, keep_age) = if dead {
            (r.dead_count, r.dead_age)
        } else {
            (r.completed_count, r.completed_age)
        };
        if keep_n == 0 {
            self.jobs.remove(&id);
            return;
        }
        if let Some(rec) = self.jobs.get_mut(&id) {
            rec.fin = Some(now);
        }
        let set = if dead { &mut self.dead } else { &mut self.done };
        set.add(id, now);
        let mut drop = Vec::new();
        let age_ms = u64::try_from(keep_age.as_millis()).unwrap_or(u64::MAX);
        if age_ms > 0 {
            drop.extend(set.due(now.saturating_sub(age_ms), 100));
        }
        for id in &drop {
            set.rem(*id);
        }
        let excess = set.len().saturating_sub(keep_n).min(100);
        let oldest: Vec<u64> = set
            .by_score
            .iter()
            .take(excess as usize)
            .map(|(_, i)| *i)
            .collect();
        for id in &oldest {
            set.rem(*id);
        }
        for id in drop.into_iter().chain(oldest) {
            self.jobs.remove(&id);
        }
    }

    fn state_of(&self, id: u64) -> Option<(JobState, u64)> {
        [
            (JobState::Active, &self.active),
            (JobState::Ready, &self.ready),
            (JobState::Scheduled, &self.sched),
            (JobState::WaitingChildren, &self.flow.waiting),
            (JobState::Completed, &self.done),
            (JobState::Dead, &self.dead),
        ]
        .into_iter()
        .find_map(|(st, set)| set.score.get(&id).map(|s| (st, *s)))
    }

    fn info(&self, id: u64) -> Option<JobInfo> {
        let rec = self.jobs.get(&id)?.clone();
        let (state, score) = self.state_of(id).unwrap_or((JobState::Ready, 0));
        let due = matches!(state, JobState::Scheduled | JobState::Active).then_some(score);
        let running_since = self.lease.get(&id).map(|(_, started)| *started);
        Some(JobInfo::from_record(rec, state, due, running_since))
    }

    /// One work exchange (see [`QueueStore::work`]): settle, promote due jobs, reclaim expired
    /// leases, fetch; or, for a request seen before, its first answer.
    fn work(&mut self, req: WorkRequest, now: u64) -> WorkReply {
        self.expire(now);
        if let Some(reply) = req
            .request_id
            .as_deref()
            .and_then(|rid| self.replayed(rid, now))
        {
            return reply;
        }
        let settled_any = !req.settle.is_empty();
        let mut settled = Vec::with_capacity(req.settle.len());
        for (lease, s) in req.settle {
            settled.push(self.settle(&lease, s, now, &req.retention));
        }
        let promoted = self.promote_due(now);
        let reclaimed = self.reclaim_expired(now, req.max_stalls, &req.retention);
        if self.quota.limits.concurrency.is_some()
            && (settled_any || reclaimed)
            && self.ready.len() > 0
        {
            self.wake();
        }
        let (want, limit_hint) = if req.fetch > 0 && !self.paused {
            self.allowed(req.fetch, now)
        } else {
            (0, None)
        };
        let jobs = if want > 0 {
            let jobs = self.lease_ready(want, req.lease, now);
            if let Some((_, per)) = self.quota.limits.rate {
                let (n, _) = self.quota.limits.rate.unwrap_or((1, per));
                let step = ms(per) as f64 * 1000.0 / f64::from(n.max(1));
                let now_us = now as f64 * 1000.0;
                self.quota.tat = self.quota.tat.max(now_us) + jobs.len() as f64 * step;
            }
            jobs
        } else {
            if promoted || reclaimed || self.quota.woke {
                self.wake();
            }
            Vec::new()
        };
        self.quota.woke = false;
        if let Some(rid) = req.request_id
            && (settled_any || !jobs.is_empty())
        {
            self.remember(rid, &settled, &jobs, req.lease, now);
        }
        let next_due = match (self.next_due(now), limit_hint) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        WorkReply {
            settled,
            jobs,
            next_due,
        }
    }

    /// How many jobs a fetch of `fetch` may start under the queue's limits, and when more may
    /// start if a rate limit or hold stopped it.
    fn allowed(&self, fetch: usize, now: u64) -> (usize, Option<Duration>) {
        let q = &self.quota;
        if q.hold > now {
            return (0, Some(Duration::from_millis(q.hold - now)));
        }
        let mut want = fetch;
        if let Some(c) = q.limits.concurrency {
            want = want.min((c as usize).saturating_sub(self.active.len() as usize));
        }
        let mut hint = None;
        if want > 0
            && let Some((n, per)) = q.limits.rate
        {
            let period = ms(per) as f64 * 1000.0;
            let step = period / f64::from(n.max(1));
            let now_us = now as f64 * 1000.0;
            let tat = q.tat.max(now_us);
            let fit = ((now_us + period - tat) / step + 1e-9).floor().max(0.0) as usize;
            if fit < want {
                want = fit;
                let wait = tat + want as f64 * step + step - period - now_us;
                hint = Some(Duration::from_millis((wait / 1000.0).ceil().max(0.0) as u64));
            }
        }
        (want, hint)
    }

    /// Job `id` stopped running: its group's count goes down and one held job of the group
    /// goes back to ready.
    fn group_done(&mut self, id: u64) {
        let Some(g) = self.quota.gjob.remove(&id) else {
            return;
        };
        if let Some(n) = self.quota.gact.get_mut(&g) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.quota.gact.remove(&g);
            }
        }
        let first = self
            .quota
            .gheld
            .range((g.clone(), 0, 0)..)
            .take_while(|(hg, _, _)| *hg == g)
            .find(|_| true)
            .cloned();
        if let Some(key) = first {
            self.quota.gheld.remove(&key);
            if self.jobs.contains_key(&key.2) {
                self.ready_add(key.2);
                self.quota.woke = true;
            }
        }
    }

    /// The answer to request `rid` again (its reply was lost): the same settlement codes, and
    /// the jobs it leased that it still holds. `None` for a request not seen in its window.
    fn replayed(&self, rid: &str, now: u64) -> Option<WorkReply> {
        let prev = self.replay.get(rid)?;
        let mut jobs = Vec::new();
        for (id, token) in &prev.leased {
            if self.lease.get(id).is_some_and(|(t, _)| t == token) {
                jobs.extend(self.fetched(*id, token.clone(), now));
            }
        }
        Some(WorkReply {
            settled: prev.settled.clone(),
            jobs,
            next_due: self.next_due(now),
        })
    }

    /// Settles one attempt, fenced by its lease token.
    fn settle(
        &mut self,
        lease: &Lease,
        settle: Settle,
        now: u64,
        retention: &Retention,
    ) -> Settled {
        let Some(id) = parse_id(&lease.id) else {
            return Settled::Stale;
        };
        let started = match self.lease.get(&id) {
            Some((token, started)) if *token == lease.token => *started,
            _ => return Settled::Stale,
        };
        self.lease.remove(&id);
        self.active.rem(id);
        self.group_done(id);
        let Some(rec) = self.jobs.get_mut(&id) else {
            return Settled::Stale;
        };
        match settle {
            Settle::Complete | Settle::CompleteFlowChild { .. } => {
                let mut rec = rec.clone();
                // The stored record keeps counting failed attempts only (as in Redis).
                rec.attempt = rec.attempt.saturating_add(1);
                let result = match settle {
                    Settle::CompleteFlowChild { flow_result } => flow_result,
                    _ => None,
                };
                self.finish(id, false, now, retention, result);
                self.emit(EventKind::Completed, &rec);
                Settled::Completed
            }
            Settle::Release => {
                let rec = rec.clone();
                self.ready_add(id);
                self.wake();
                self.emit(EventKind::Released, &rec);
                Settled::Released
            }
            Settle::Delay { delay, pause_queue } => {
                let rec = rec.clone();
                let until = now.saturating_add(ms(delay));
                if delay.is_zero() {
                    self.ready_add(id);
                    self.wake();
                } else {
                    self.sched_add(id, until);
                }
                if pause_queue {
                    self.quota.hold = self.quota.hold.max(until);
                }
                self.emit(EventKind::Released, &rec);
                Settled::Delayed
            }
            Settle::Retry { delay, error } if rec.attempt.saturating_add(1) < rec.max => {
                rec.attempt += 1;
                rec.started = Some(started);
                rec.err = Some(error);
                let rec = rec.clone();
                self.sched_add(id, now.saturating_add(ms(delay)));
                self.emit(EventKind::Retrying, &rec);
                Settled::Retrying
            }
            Settle::Retry { error, .. } | Settle::Fail { error } => {
                rec.attempt = rec.attempt.saturating_add(1);
                rec.started = Some(started);
                rec.err = Some(error);
                let mut rec = rec.clone();
                self.finish(id, true, now, retention, None);
                rec.fin = Some(now);
                self.emit(EventKind::Dead, &rec);
                Settled::Dead
            }
        }
    }

    /// Moves scheduled jobs that are due to ready (up to 1,000). Whether any moved.
    fn promote_due(&mut self, now: u64) -> bool {
        let due = self.sched.due(now, 1000);
        for id in &due {
            self.sched.rem(*id);
            self.ready_add(*id);
        }
        !due.is_empty()
    }

    /// Takes back jobs whose lease has ended (up to 100): ready again, or dead after more than
    /// `max_stalls` lost leases. Whether any was taken back.
    fn reclaim_expired(&mut self, now: u64, max_stalls: u32, retention: &Retention) -> bool {
        let expired = self.active.due(now, 100);
        for id in &expired {
            self.active.rem(*id);
            self.group_done(*id);
            let lost = self.lease.remove(id);
            let Some(rec) = self.jobs.get_mut(id) else {
                continue;
            };
            rec.stalls = rec.stalls.saturating_add(1);
            if let Some((_, started)) = lost {
                rec.started = Some(started);
            }
            if rec.stalls > max_stalls {
                rec.err = Some(format!(
                    "lease lost {} times (worker crashed or too slow)",
                    rec.stalls
                ));
                let rec = rec.clone();
                self.finish(*id, true, now, retention, None);
                self.emit(EventKind::Dead, &rec);
            } else {
                let rec = rec.clone();
                self.ready_add(*id);
                self.emit(EventKind::Stalled, &rec);
            }
        }
        !expired.is_empty()
    }

    /// Leases up to `fetch` ready jobs, most urgent first, for `lease`.
    fn lease_ready(&mut self, fetch: usize, lease: Duration, now: u64) -> Vec<Fetched> {
        let mut jobs = Vec::new();
        while jobs.len() < fetch {
            let Some((score, id)) = self.ready.first() else {
                break;
            };
            self.ready.rem(id);
            self.quota.vt = self.quota.vt.max(score % PRIO);
            if let Some(limit) = self.quota.limits.group_concurrency
                && let Some(g) = self.jobs.get(&id).and_then(|r| r.group.clone())
            {
                let n = self.quota.gact.entry(g.clone()).or_insert(0);
                if *n >= limit {
                    self.quota.gheld.insert((g, score, id));
                    continue;
                }
                *n += 1;
                self.quota.gjob.insert(id, g);
            }
            self.seq += 1;
            let token = self.seq.to_string();
            let Some(job) = self.fetched(id, token.clone(), now) else {
                continue;
            };
            self.lease.insert(id, (token, now));
            self.active.add(id, now.saturating_add(ms(lease).max(1)));
            jobs.push(job);
        }
        let vt = self.quota.vt;
        self.quota.gturn.retain(|_, t| *t > vt);
        if jobs.len() == fetch && self.ready.len() > 0 {
            // More are ready: another idle worker may take them.
            self.wake();
        }
        jobs
    }

    /// Keeps the answer to request `rid` for a re-send, for its lease (10 s .. the window).
    fn remember(
        &mut self,
        rid: String,
        settled: &[Settled],
        jobs: &[Fetched],
        lease: Duration,
        now: u64,
    ) {
        let expires = now.saturating_add(ms(super::replay_window(lease, WINDOW)));
        let leased = jobs
            .iter()
            .filter_map(|j| Some((parse_id(&j.lease.id)?, j.lease.token.clone())))
            .collect();
        self.replay_exp.insert((expires, rid.clone()));
        self.replay.insert(
            rid,
            Replay {
                expires,
                settled: settled.to_vec(),
                leased,
            },
        );
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        let base_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            inner: Arc::new(Inner {
                base: Instant::now(),
                base_unix_ms,
                queues: Mutex::new(HashMap::new()),
                events_cap: 1_024,
            }),
        }
    }

    fn now(&self) -> u64 {
        self.inner.base_unix_ms + self.inner.base.elapsed().as_millis() as u64
    }

    fn with<R>(&self, queue: &str, f: impl FnOnce(&mut QueueState, u64) -> R) -> R {
        let now = self.now();
        let mut guard: MutexGuard<'_, HashMap<String, QueueState>> = match self.inner.queues.lock()
        {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let q = guard
            .entry(queue.to_owned())
            .or_insert_with(|| QueueState::new(self.inner.events_cap));
        f(q, now)
    }
}

fn parse_id(id: &JobId) -> Option<u64> {
    id.as_str().parse().ok()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait::async_trait]
impl QueueStore for MemoryStore {
    async fn enqueue(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        Ok(self.with(queue, |q, now| {
            q.expire(now);
            let mut woke = false;
            let expires = now.saturating_add(ms(WINDOW));
            let out = jobs
                .into_iter()
                .map(|j| {
                    let (e, w) = q.add(j, now, expires);
                    woke |= w;
                    e
                })
                .collect();
            if woke {
                q.wake();
            }
            out
        }))
    }

    async fn work(&self, queue: &str, req: WorkRequest) -> Result<WorkReply> {
        Ok(self.with(queue, |q, now| q.work(req, now)))
    }

    async fn extend(&self, queue: &str, leases: Vec<Lease>, lease: Duration) -> Result<Vec<JobId>> {
        Ok(self.with(queue, |q, now| {
            let mut lost = Vec::new();
            for l in leases {
                match parse_id(&l.id) {
                    Some(id) if q.lease.get(&id).is_some_and(|(t, _)| *t == l.token) => {
                        q.active.add(id, now.saturating_add(ms(lease).max(1)));
                    }
                    _ => lost.push(l.id),
                }
            }
            lost
        }))
    }

    async fn waiter(&self, queue: &str) -> Result<Box<dyn Waiter>> {
        let rx = self.with(queue, |q, _| q.wake.subscribe());
        Ok(Box::new(MemoryWaiter { rx }))
    }

    async fn counts(&self, queue: &str) -> Result<Counts> {
        Ok(self.with(queue, |q, _| Counts {
            scheduled: q.sched.len(),
            ready: q.ready.len(),
            active: q.active.len(),
            completed: q.done.len(),
            dead: q.dead.len(),
            paused: q.paused,
            waiting_children: q.flow.waiting.len(),
        }))
    }

    async fn get(&self, queue: &str, id: &JobId) -> Result<Option<JobInfo>> {
        Ok(self.with(queue, |q, _| parse_id(id).and_then(|id| q.info(id))))
    }

    async fn list(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<JobInfo>> {
        Ok(self.with(queue, |q, _| {
            let set = match state {
                JobState::Scheduled => &q.sched,
                JobState::Ready => &q.ready,
                JobState::Active => &q.active,
                JobState::Completed => &q.done,
                JobState::Dead => &q.dead,
                JobState::WaitingChildren => &q.flow.waiting,
            };
            let ids: Vec<u64> = if matches!(state, JobState::Completed | JobState::Dead) {
                set.by_score
                    .iter()
                    .rev()
                    .skip(offset)
                    .take(limit)
                    .map(|(_, i)| *i)
                    .collect()
            } else {
                set.by_score
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|(_, i)| *i)
                    .collect()
            };
            ids.into_iter().filter_map(|id| q.info(id)).collect()
        }))
    }

    async fn retry_dead(&self, queue: &str, id: &JobId) -> Result<bool> {
        Ok(self.with(queue, |q, _| {
            let Some(id) = parse_id(id) else {
                return false;
            };
            if !q.dead.rem(id) {
                return false;
            }
            let Some(rec) = q.jobs.get_mut(&id) else {
                return false;
            };
            rec.attempt = 0;
            rec.stalls = 0;
            rec.fin = None;
            if let Some(u) = rec.uniq.clone() {
                match q.uniq.entry(u) {
                    std::collections::hash_map::Entry::Occupied(_) => rec.uniq = None,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(id);
                    }
                }
            }
            let rec = rec.clone();
            q.ready_add(id);
            q.wake();
            q.emit(EventKind::Added, &rec);
            true
        }))
    }

    async fn remove(&self, queue: &str, id: &JobId) -> Result<bool> {
        Ok(self.with(queue, |q, now| {
            let Some(id) = parse_id(id) else {
                return false;
            };
            if !q.jobs.contains_key(&id) {
                return false;
            }
            if q.flow.waiting.score.contains_key(&id) {
                q.drop_deps(id);
            }
            if !q.done.score.contains_key(&id) && !q.dead.score.contains_key(&id) {
                q.flow_out(id, crate::flow::ChildStatus::Removed, None, now);
            }
            q.drop_uniq(id);
            for set in [
                &mut q.ready,
                &mut q.sched,
                &mut q.active,
                &mut q.done,
                &mut q.dead,
            ] {
                set.rem(id);
            }
            q.lease.remove(&id);
            q.group_done(id);
            q.quota.gheld.retain(|(_, _, held)| *held != id);
            q.jobs.remove(&id);
            if std::mem::take(&mut q.quota.woke) {
                q.wake();
            }
            true
        }))
    }

    async fn set_limits(&self, queue: &str, limits: crate::QueueLimits) -> Result<()> {
        limits.validate()?;
        self.with(queue, |q, _| {
            for id in q.quota.set_limits(limits) {
                q.ready_add(id);
            }
            q.wake();
        });
        Ok(())
    }

    async fn limits(&self, queue: &str) -> Result<crate::QueueLimits> {
        Ok(self.with(queue, |q, _| q.quota.limits))
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.with(queue, |q, _| {
            q.paused = paused;
            if !paused {
                q.wake();
            }
        });
        Ok(())
    }

    async fn time(&self, _queue: &str) -> Result<u64> {
        Ok(self.now())
    }

    async fn events(&self, queue: &str) -> Result<BoxStream<'static, Result<QueueEvent>>> {
        let rx = self.with(queue, |q, _| q.events.subscribe());
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((Ok(ev), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }

    async fn upsert_scheduler(
        &self,
        queue: &str,
        id: &str,
        spec: String,
        first: FirstTick,
    ) -> Result<bool> {
        Ok(self.with(queue, |q, now| {
            let version = match q.scheds.get(id) {
                Some(s) if s.spec == spec => return false,
                Some(s) => s.version + 1,
                None => 1,
            };
            let (count, next) = match first {
                FirstTick::Now { job, then } => {
                    q.expire(now);
                    q.add_tick_job(*job, None, now);
                    (1, then.map(|d| now.saturating_add(ms(d))))
                }
                first => (0, first.resolve(now)),
            };
            q.scheds.insert(
                id.to_owned(),
                Sched {
                    spec,
                    version,
                    count,
                    next,
                },
            );
            true
        }))
    }

    async fn remove_scheduler(&self, queue: &str, id: &str) -> Result<bool> {
        Ok(self.with(queue, |q, _| q.scheds.remove(id).is_some()))
    }

    async fn schedulers(&self, queue: &str) -> Result<Vec<StoredScheduler>> {
        Ok(self.with(queue, |q, _| {
            q.scheds.iter().map(|(id, s)| s.stored(id)).collect()
        }))
    }

    async fn due_schedulers(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<(u64, Vec<StoredScheduler>, Option<u64>)> {
        Ok(self.with(queue, |q, now| {
            let mut due: Vec<_> = q
                .scheds
                .iter()
                .filter(|(_, s)| s.next.is_some_and(|n| n <= now))
                .map(|(id, s)| s.stored(id))
                .collect();
            due.sort_by_key(|s| s.next);
            due.truncate(limit);
            let later = q
                .scheds
                .values()
                .filter_map(|s| s.next.filter(|n| *n > now))
                .min();
            (now, due, later)
        }))
    }

    async fn put_output(
        &self,
        queue: &str,
        lease: &Lease,
        kind: OutputKind,
        value: String,
    ) -> Result<bool> {
        Ok(self.with(queue, |q, _| {
            let Some(id) = parse_id(&lease.id) else {
                return false;
            };
            if q.lease.get(&id).is_none_or(|(t, _)| *t != lease.token) {
                return false;
            }
            let Some(rec) = q.jobs.get_mut(&id) else {
                return false;
            };
            match kind {
                OutputKind::Progress => rec.progress = Some(value),
                _ => rec.result = Some(value),
            }
            true
        }))
    }

    async fn fire_schedulers(
        &self,
        queue: &str,
        fires: Vec<Fire>,
    ) -> Result<Vec<Option<Vec<JobId>>>> {
        Ok(self.with(queue, |q, now| {
            fires.into_iter().map(|fire| q.fire(fire, now)).collect()
        }))
    }

    async fn add_parent(
        &self,
        queue: &str,
        job: NewJob,
        deps: Vec<FlowDep>,
        spec: String,
    ) -> Result<Enqueued> {
        Ok(self.with(queue, |q, now| {
            q.expire(now);
            q.add_parent(job, deps, spec, now, now.saturating_add(ms(WINDOW)))
        }))
    }

    async fn seal_parent(&self, queue: &str, id: &JobId) -> Result<()> {
        if let Some(id) = parse_id(id) {
            self.with(queue, |q, _| q.seal_parent(id));
        }
        Ok(())
    }

    async fn unsealed_parents(
        &self,
        queue: &str,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<(JobId, String)>> {
        Ok(self.with(queue, |q, now| q.unsealed_parents(older_than, limit, now)))
    }

    async fn take_outbox(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<FlowMessage>> {
        Ok(self.with(queue, |q, now| q.take_outbox(limit, lease, now)))
    }

    async fn deliver(
        &self,
        parent_queue: &str,
        child_queue: &str,
        messages: Vec<FlowMessage>,
        retention: Retention,
    ) -> Result<Vec<u8>> {
        Ok(self.with(parent_queue, |q, now| {
            q.deliver(child_queue, messages, &retention, now)
        }))
    }

    async fn ack_outbox(&self, queue: &str, ids: Vec<String>) -> Result<()> {
        self.with(queue, |q, _| q.ack_outbox(ids));
        Ok(())
    }
}

#[derive(Debug)]
struct MemoryWaiter {
    rx: watch::Receiver<u64>,
}

#[async_trait::async_trait]
impl Waiter for MemoryWaiter {
    async fn wait(&mut self, timeout: Duration) -> Result<()> {
        let _ = tokio::time::timeout(timeout, self.rx.changed()).await;
        Ok(())
    }
}
