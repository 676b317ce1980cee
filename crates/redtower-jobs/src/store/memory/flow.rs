//! Flows in the memory store: the same steps as `lua/flow.lua` (parent side: waiting parents
//! and their dependencies; child side: the outbox), one queue per step.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use super::{QueueState, ZSet, ms};
use crate::{
    flow::{ChildFailure, ChildStatus, FlowDep, FlowMessage, FlowParent, KidRecord},
    job::{JobId, Record},
    store::{Enqueued, NewJob, Retention},
};

/// A queue's flow state.
#[derive(Debug, Default)]
pub(super) struct FlowState {
    /// Parents waiting for children, by time added.
    pub(super) waiting: ZSet,
    /// A waiting parent's children: unresolved count and each child's state.
    deps: HashMap<u64, Deps>,
    /// Parents not sealed yet, by time added.
    unsealed: ZSet,
    /// The outbox: message id → (next delivery time, message).
    outbox: BTreeMap<String, (u64, FlowMessage)>,
}

#[derive(Debug)]
struct Deps {
    left: usize,
    state: HashMap<String, Dep>,
}

#[derive(Debug)]
enum Dep {
    Pending(ChildFailure),
    Resolved(Option<KidRecord>),
}

impl QueueState {
    /// Adds a waiting parent (see [`QueueStore::add_parent`](crate::QueueStore::add_parent)).
    pub(super) fn add_parent(
        &mut self,
        job: NewJob,
        deps: Vec<FlowDep>,
        spec: String,
        now: u64,
        expires: u64,
    ) -> Enqueued {
        if let Some((id, _)) = job.idempotency_key.as_ref().and_then(|k| self.idem.get(k)) {
            return Enqueued::Existing(JobId::new(id.to_string()));
        }
        self.seq += 1;
        let id = self.seq;
        let rec = Record {
            id: id.to_string(),
            name: job.name,
            data: job.data,
            attempt: 0,
            max: job.max_attempts,
            backoff: job.backoff,
            prio: job.priority,
            seq: id,
            created: now,
            stalls: 0,
            err: None,
            uniq: None,
            started: None,
            fin: None,
            trace: job.trace,
            fp: job.flow_parent,
            fw: Some(deps.iter().map(|d| d.key.clone()).collect()),
            fspec: Some(spec),
            kids: None,
            group: job.group,
            progress: None,
            result: None,
        };
        if let Some(idem) = job.idempotency_key {
            self.idem.insert(idem.clone(), (id, expires));
            self.idem_exp.insert((expires, idem));
        }
        self.emit(crate::EventKind::Added, &rec);
        self.jobs.insert(id, rec);
        self.flow.deps.insert(
            id,
            Deps {
                left: deps.len(),
                state: deps
                    .into_iter()
                    .map(|d| (d.key, Dep::Pending(d.on_failure)))
                    .collect(),
            },
        );
        self.flow.waiting.add(id, now);
        self.flow.unsealed.add(id, now);
        Enqueued::New(JobId::new(id.to_string()))
    }

    pub(super) fn seal_parent(&mut self, id: u64) {
        if self.flow.unsealed.rem(id)
            && let Some(rec) = self.jobs.get_mut(&id)
        {
            rec.fspec = None;
        }
    }

    pub(super) fn unsealed_parents(
        &mut self,
        older_than: Duration,
        limit: usize,
        now: u64,
    ) -> Vec<(JobId, String)> {
        let ids = self
            .flow
            .unsealed
            .due(now.saturating_sub(ms(older_than)), limit);
        let mut out = Vec::new();
        for id in ids {
            match self.jobs.get(&id).and_then(|r| r.fspec.clone()) {
                Some(spec) => out.push((JobId::new(id.to_string()), spec)),
                None => {
                    self.flow.unsealed.rem(id);
                }
            }
        }
        out
    }

    /// A flow child's final state into the outbox (`rec` is the child's record).
    pub(super) fn flow_out(
        &mut self,
        id: u64,
        status: ChildStatus,
        result: Option<String>,
        now: u64,
    ) {
        let Some(rec) = self.jobs.get(&id) else {
            return;
        };
        let Some(parent) = rec.fp.clone() else {
            return;
        };
        let mid = format!("{id}:{now}:{}", status.code());
        let msg = FlowMessage {
            id: mid.clone(),
            child: JobId::new(id.to_string()),
            parent,
            status,
            error: if status == ChildStatus::Dead {
                rec.err.clone()
            } else {
                None
            },
            result: if status == ChildStatus::Completed {
                result
            } else {
                None
            },
        };
        self.flow.outbox.insert(mid, (now, msg));
    }

    /// Drops a waiting parent's dependencies (removed, or failed by a child).
    pub(super) fn drop_deps(&mut self, id: u64) {
        self.flow.deps.remove(&id);
        self.flow.waiting.rem(id);
        self.flow.unsealed.rem(id);
    }

    pub(super) fn take_outbox(
        &mut self,
        limit: usize,
        lease: Duration,
        now: u64,
    ) -> Vec<FlowMessage> {
        let again = now.saturating_add(ms(lease));
        let mut out = Vec::new();
        for (due, msg) in self.flow.outbox.values_mut() {
            if out.len() >= limit {
                break;
            }
            if *due <= now {
                *due = again;
                out.push(msg.clone());
            }
        }
        out
    }

    pub(super) fn ack_outbox(&mut self, ids: Vec<String>) {
        for id in ids {
            self.flow.outbox.remove(&id);
        }
    }

    /// Resolves children of `child_queue` in their parents on this queue, each once.
    pub(super) fn deliver(
        &mut self,
        child_queue: &str,
        messages: Vec<FlowMessage>,
        retention: &Retention,
        now: u64,
    ) -> Vec<u8> {
        messages
            .into_iter()
            .map(|m| self.deliver_one(child_queue, m, retention, now))
            .collect()
    }

    fn deliver_one(
        &mut self,
        child_queue: &str,
        m: FlowMessage,
        retention: &Retention,
        now: u64,
    ) -> u8 {
        let FlowMessage {
            child,
            parent: FlowParent { id: pid, key, .. },
            status,
            error,
            result,
            ..
        } = m;
        let Some(pid) = pid.as_str().parse::<u64>().ok() else {
            return 0;
        };
        let Some(deps) = self.flow.deps.get_mut(&pid) else {
            return 0;
        };
        let Some(Dep::Pending(policy)) = deps.state.get(&key) else {
            return 0;
        };
        let policy = *policy;
        let kid = |s: &str, e: Option<String>, v: Option<String>| KidRecord {
            k: key.clone(),
            s: s.to_owned(),
            q: child_queue.to_owned(),
            i: child.as_str().to_owned(),
            e,
            v,
        };
        let why = match status {
            ChildStatus::Completed => None,
            ChildStatus::Removed => Some("was removed".to_owned()),
            ChildStatus::Dead => Some(format!("failed: {}", error.unwrap_or_default())),
        };
        let resolved = match (why, policy) {
            (None, _) => Some(kid("c", None, result)),
            (Some(why), ChildFailure::FailParent) => {
                self.drop_deps(pid);
                let Some(rec) = self.jobs.get_mut(&pid) else {
                    return 0;
                };
                rec.fw = None;
                rec.fspec = None;
                rec.err = Some(format!("child `{key}` ({child_queue} job {child}) {why}"));
                let rec = rec.clone();
                self.finish(pid, true, now, retention, None);
                self.emit(crate::EventKind::Dead, &rec);
                return 3;
            }
            (Some(_), ChildFailure::Ignore) => None,
            (Some(why), _) => Some(kid("f", Some(why), None)),
        };
        deps.state.insert(key, Dep::Resolved(resolved));
        deps.left = deps.left.saturating_sub(1);
        if deps.left > 0 {
            return 1;
        }
        let Some(mut deps) = self.flow.deps.remove(&pid) else {
            return 1;
        };
        self.flow.waiting.rem(pid);
        self.flow.unsealed.rem(pid);
        let Some(rec) = self.jobs.get_mut(&pid) else {
            return 1;
        };
        let kids: Vec<KidRecord> = rec
            .fw
            .take()
            .unwrap_or_default()
            .iter()
            .filter_map(|k| match deps.state.remove(k) {
                Some(Dep::Resolved(r)) => r,
                _ => None,
            })
            .collect();
        rec.fspec = None;
        rec.kids = (!kids.is_empty()).then_some(kids);
        self.ready_add(pid);
        self.wake();
        2
    }
}
