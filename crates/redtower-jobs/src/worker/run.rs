//! A started [`Worker`]'s loop: work exchanges on the wire, the idle wait, shutdown.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{Notify, watch},
    task::{self, JoinSet},
    time::Instant,
};

use super::{Outcome, ShutdownReport, Worker, attempt::Running};
use crate::{
    Result,
    handler::JobError,
    store::{Fetched, Settle, Settled, WorkRequest, random_key},
};

/// Settlements sent in one exchange.
pub(super) type Batch = Vec<(Running, Settle, Option<Outcome>)>;

/// Work exchanges a worker keeps on the wire at once.
const IN_FLIGHT: usize = 2;

/// The answer to a work exchange, with what it was sent with: its request id, the batch it
/// settles and the number of jobs it asked for.
type Answer = (
    String,
    Batch,
    usize,
    Result<(Vec<Settled>, Vec<Fetched>, Option<Duration>)>,
);

/// A work exchange on the wire.
type Exchange = Pin<Box<dyn Future<Output = Answer> + Send>>;

impl Worker {
    /// The started worker's task: exchanges with the store and runs jobs until `stop`, then
    /// lands what is on the wire and [shuts down](Self::shutdown).
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) -> Result<ShutdownReport> {
        let me = Arc::new(self);
        // Reporting only, in its own task so that a slow store never delays the first fetch.
        let skew_check = AbortOnDrop(tokio::spawn(report_skew(me.clone())));
        // The queue's job schedulers, in their own task: a pass never delays a fetch.
        let schedulers = me
            .schedulers
            .then(|| AbortOnDrop(tokio::spawn(scheduler_loop(me.clone()))));
        // Flows: relays the final states of this queue's flow children to their parents.
        let flows = AbortOnDrop(tokio::spawn(flow_loop(me.clone())));
        let idle = Arc::new(IdleSignal::new(me.poll_interval));
        // Aborted when this task ends, even when it is itself aborted.
        let waiter = AbortOnDrop(tokio::spawn(wait_loop(me.clone(), idle.clone())));
        let mut extend = tokio::time::interval(me.lease / 3);
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = LoopState {
            need_fetch: true,
            ..LoopState::default()
        };

        loop {
            if *stop.borrow() {
                break;
            }
            while let Some(res) = state.tasks.try_join_next_with_id() {
                me.collect(res, &mut state.running, &mut state.pending);
            }
            if state.send_next(&me) {
                continue;
            }
            let pause = state.wait_when_idle(&me, &idle);
            tokio::select! {
                biased;
                () = stopped(&mut stop) => {}
                Some(answer) = state.inflight.next(), if !state.inflight.is_empty() => {
                    state.answered(&me, answer);
                }
                Some(res) = state.tasks.join_next_with_id(), if !state.tasks.is_empty() => {
                    me.collect(res, &mut state.running, &mut state.pending);
                }
                _ = idle.wake.notified() => {
                    state.waiting = false;
                    state.need_fetch = true;
                }
                _ = extend.tick(), if !state.running.is_empty() => {
                    me.extend(&mut state.running, &mut state.tasks).await;
                }
                _ = tokio::time::sleep(pause) => {
                    if state.backoff_until.take().is_none() {
                        state.need_fetch = true;
                    }
                }
            }
        }

        drop(waiter);
        drop(flows);
        drop(skew_check);
        drop(schedulers);
        state.land_inflight(&me).await;
        let LoopState {
            running,
            tasks,
            pending,
            ..
        } = state;
        me.shutdown(running, tasks, pending).await
    }

    /// Waits up to the grace period for running jobs, settling them as they finish, then
    /// cancels the rest and hands them back (with up to three tries).
    async fn shutdown(
        &self,
        mut running: HashMap<task::Id, Running>,
        mut tasks: JoinSet<Result<(), JobError>>,
        mut pending: Batch,
    ) -> Result<ShutdownReport> {
        let mut report = ShutdownReport::default();
        let deadline = Instant::now() + self.grace;
        let mut extend = tokio::time::interval(self.lease / 3);
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !tasks.is_empty() {
            tokio::select! {
                Some(res) = tasks.join_next_with_id() => {
                    self.collect(res, &mut running, &mut pending);
                    report.finished_in_grace += 1;
                    while let Some(res) = tasks.try_join_next_with_id() {
                        self.collect(res, &mut running, &mut pending);
                        report.finished_in_grace += 1;
                    }
                    let batch = std::mem::take(&mut pending);
                    match self.exchange(&batch, 0, &random_key()).await {
                        Ok((settled, _, _)) => self.after_settle(batch, settled),
                        Err(_) => pending = batch,
                    }
                }
                _ = extend.tick() => self.extend(&mut running, &mut tasks).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        tasks.shutdown().await;
        for (_, r) in running.drain() {
            report.released += 1;
            pending.push((r, Settle::Release, None));
        }
        let mut last = Ok(());
        // One id for the hand-back, re-sent as it is when it fails.
        let rid = random_key();
        for attempt in 0..3u32 {
            if pending.is_empty() {
                break;
            }
            let batch = std::mem::take(&mut pending);
            match self.exchange(&batch, 0, &rid).await {
                Ok((settled, _, _)) => {
                    self.after_settle(batch, settled);
                    last = Ok(());
                }
                Err(e) => {
                    tracing::warn!(target: "redtower::jobs", queue = %self.queue, error = %e, "handing jobs back failed");
                    pending = batch;
                    last = Err(e);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        tracing::info!(target: "redtower::jobs", queue = %self.queue, released = report.released, "worker stopped");
        last.map(|()| report)
    }

    /// An exchange on the wire, answered with what it was sent with.
    fn send(self: Arc<Self>, rid: String, batch: Batch, fetch: usize) -> Exchange {
        Box::pin(async move {
            let result = self.exchange(&batch, fetch, &rid).await;
            (rid, batch, fetch, result)
        })
    }

    /// One work exchange: settles `batch` and fetches up to `fetch` jobs, as request
    /// `request_id`.
    async fn exchange(
        &self,
        batch: &[(Running, Settle, Option<Outcome>)],
        fetch: usize,
        request_id: &str,
    ) -> Result<(Vec<Settled>, Vec<Fetched>, Option<Duration>)> {
        let settle = batch
            .iter()
            .map(|(r, s, _)| (r.job.lease.clone(), s.clone()))
            .collect();
        let req = WorkRequest::new(settle, fetch, self.lease)
            .max_stalls(self.max_stalls)
            .retention(self.retention)
            .request_id(request_id);
        let reply = self.store.work(&self.queue, req).await?;
        Ok((reply.settled, reply.jobs, reply.next_due))
    }
}

/// Resolves once shutdown is requested; never, if the handle was dropped (the worker then
/// runs until the runtime ends).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Compares the worker's clock with the store's and reports the difference.
/// Fires the queue's due scheduler ticks, then sleeps until the earliest next tick (at most
/// the poll interval); after a store error, backs off (100 ms, doubling, at most 5 s).
async fn scheduler_loop(w: Arc<Worker>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pause = match crate::schedule::run_pass(w.store.as_ref(), &w.queue).await {
            Ok(pass) => {
                backoff = Duration::from_millis(100);
                pass.next_due
                    .map_or(w.poll_interval, |d| d.min(w.poll_interval))
                    .max(Duration::from_millis(1))
            }
            Err(e) => {
                tracing::warn!(target: "redtower::jobs", queue = %w.queue, error = %e, "scheduler pass failed; trying again");
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                b
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Relays this queue's flow outbox (see [`crate::flow`]) when a flow child was settled, and
/// every poll interval (children that died of lost leases or were removed, relays that
/// crashed, flows left unsealed); after a store error, backs off (100 ms, doubling, at most
/// 5 s).
async fn flow_loop(w: Arc<Worker>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pause = match crate::flow::relay(
            w.store.as_ref(),
            &w.queue,
            w.retention,
            w.flow_unsealed_after,
        )
        .await
        {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                w.poll_interval
            }
            Err(e) => {
                tracing::warn!(target: "redtower::jobs", queue = %w.queue, error = %e, "flow relay failed; trying again");
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                b
            }
        };
        tokio::select! {
            () = w.flow_relay.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn report_skew(w: Arc<Worker>) {
    match w.clock.skew(w.store.time(&w.queue)).await {
        Ok(skew) => {
            metrics::gauge!("redtower_jobs_clock_skew_seconds", "queue" => w.queue.to_string())
                .set(skew.as_millis() as f64 / 1000.0);
            if skew.magnitude() >= Duration::from_secs(1) {
                tracing::warn!(target: "redtower::jobs", queue = %w.queue, %skew, "this worker's clock disagrees with the store's; harmless for scheduling (the store's clock is used), but timestamps in local logs will not match the store's");
            } else {
                tracing::debug!(target: "redtower::jobs", queue = %w.queue, %skew, "clock skew");
            }
        }
        Err(e) => {
            tracing::debug!(target: "redtower::jobs", queue = %w.queue, error = %e, "cannot read the store's clock");
        }
    }
}

/// The signals between a worker's loop and its blocking waiter: the loop asks for a wait
/// (`want`, with the longest wait in `hint_ms`); the waiter answers when jobs may be ready
/// (`wake`).
struct IdleSignal {
    want: Notify,
    wake: Notify,
    hint_ms: AtomicU64,
}

impl IdleSignal {
    fn new(poll_interval: Duration) -> Self {
        Self {
            want: Notify::new(),
            wake: Notify::new(),
            hint_ms: AtomicU64::new(poll_interval.as_millis() as u64),
        }
    }
}

async fn wait_loop(w: Arc<Worker>, idle: Arc<IdleSignal>) {
    let mut waiter = None;
    loop {
        idle.want.notified().await;
        if waiter.is_none() {
            match w.store.waiter(&w.queue).await {
                Ok(x) => waiter = Some(x),
                Err(e) => {
                    tracing::warn!(target: "redtower::jobs", error = %e, "cannot open the blocking connection");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    idle.wake.notify_one();
                    continue;
                }
            }
        }
        let timeout = Duration::from_millis(idle.hint_ms.load(Ordering::Relaxed).max(1));
        if let Some(x) = waiter.as_mut()
            && let Err(e) = x.wait(timeout).await
        {
            tracing::debug!(target: "redtower::jobs", error = %e, "blocking wait failed");
            waiter = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        idle.wake.notify_one();
    }
}

/// What a worker's loop keeps between turns: running jobs, finished attempts to settle,
/// exchanges on the wire, and what decides the next one.
#[derive(Default)]
struct LoopState {
    running: HashMap<task::Id, Running>,
    tasks: JoinSet<Result<(), JobError>>,
    /// Finished attempts not yet sent.
    pending: Batch,
    /// Exchanges on the wire (at most `IN_FLIGHT`), each with the batch it settles and the
    /// number of jobs it asked for (slots reserved until it answers).
    inflight: FuturesUnordered<Exchange>,
    reserved: usize,
    /// Exchanges that failed (their reply may have been lost after they ran), each sent again
    /// with the same request id, batch and fetch count (its slots stay reserved), so that the
    /// store answers from its replay record: settlements are reported once, and the jobs it
    /// leased are handed over instead of stranded.
    retries: VecDeque<(String, Batch, usize)>,
    /// Jobs may be ready: the next exchange fetches (a worker starts by fetching).
    need_fetch: bool,
    /// The blocking waiter has been asked to wait.
    waiting: bool,
    /// When the store says the next scheduled job is due or the next lease ends.
    next_due: Option<Duration>,
    /// Failed exchanges in a row.
    errors: u32,
    backoff_until: Option<Instant>,
}

impl LoopState {
    /// Slots neither running a job nor reserved by an exchange on the wire.
    fn free(&self, w: &Worker) -> usize {
        w.concurrency
            .saturating_sub(self.tasks.len().saturating_add(self.reserved))
    }

    fn backing_off(&self) -> bool {
        self.backoff_until.is_some_and(|t| Instant::now() < t)
    }

    /// Sends the next exchange if one is due and there is room on the wire: a failed one
    /// again, else one that settles what finished and fetches for the free slots. Whether it
    /// sent one.
    ///
    /// While the previous exchange is on the wire, the next one is sent too: Redis runs one
    /// while the worker handles the other's jobs.
    fn send_next(&mut self, w: &Arc<Worker>) -> bool {
        if self.backing_off() || self.inflight.len() >= IN_FLIGHT {
            return false;
        }
        if let Some((rid, batch, asked)) = self.retries.pop_front() {
            self.inflight.push(w.clone().send(rid, batch, asked));
            return true;
        }
        let free = self.free(w);
        if self.pending.is_empty() && !(self.need_fetch && free > 0) {
            return false;
        }
        let batch = std::mem::take(&mut self.pending);
        self.reserved += free;
        self.inflight
            .push(w.clone().send(random_key(), batch, free));
        // A settle-only exchange fetches nothing: a wake-up that asked for a fetch still
        // stands.
        if free > 0 {
            self.need_fetch = false;
        }
        true
    }

    /// With free slots and nothing on the wire, asks the blocking waiter to wait for jobs (up
    /// to the next due time or the poll interval). Returns how long the loop may sleep before
    /// polling anyway (or until its backoff ends).
    fn wait_when_idle(&mut self, w: &Worker, idle: &IdleSignal) -> Duration {
        let longest = self
            .next_due
            .map_or(w.poll_interval, |d| d.min(w.poll_interval))
            .max(Duration::from_millis(1));
        if self.free(w) > 0 && !self.waiting && self.inflight.is_empty() && !self.backing_off() {
            idle.hint_ms
                .store(longest.as_millis() as u64, Ordering::Relaxed);
            idle.want.notify_one();
            self.waiting = true;
        }
        self.backoff_until
            .map_or(longest + Duration::from_millis(20), |t| {
                t.saturating_duration_since(Instant::now())
            })
    }

    /// An exchange answered: report its settlements and run the jobs it fetched; or, when it
    /// failed, queue it to be sent again after a backoff.
    fn answered(&mut self, w: &Worker, (rid, batch, asked, result): Answer) {
        match result {
            Ok((settled, jobs, due)) => {
                self.reserved -= asked;
                self.errors = 0;
                self.backoff_until = None;
                w.after_settle(batch, settled);
                self.need_fetch = self.need_fetch || (asked > 0 && jobs.len() == asked);
                self.next_due = due;
                for job in jobs {
                    w.spawn(job, &mut self.tasks, &mut self.running);
                }
            }
            Err(e) => {
                self.errors = self.errors.saturating_add(1);
                tracing::warn!(target: "redtower::jobs", queue = %w.queue, error = %e, "work round trip failed; backing off");
                self.retries.push_back((rid, batch, asked));
                self.need_fetch = true;
                let pause =
                    Duration::from_millis(50u64 << self.errors.min(7)).min(Duration::from_secs(5));
                self.backoff_until = Some(Instant::now() + pause);
            }
        }
    }

    /// Before shutting down, waits for what is on the wire: settlements land, and fetched jobs
    /// run (within the grace period) or are handed back. A failed exchange is sent once more
    /// as it was (answered from the replay record if it ran), fetching nothing new; if that
    /// fails too, its batch is left to settle in shutdown.
    async fn land_inflight(&mut self, w: &Arc<Worker>) {
        const LAST_TRY: usize = usize::MAX;
        loop {
            while let Some((rid, batch, fetch, result)) = self.inflight.next().await {
                match result {
                    Ok((settled, jobs, _)) => {
                        w.after_settle(batch, settled);
                        for job in jobs {
                            w.spawn(job, &mut self.tasks, &mut self.running);
                        }
                    }
                    Err(_) if fetch != LAST_TRY => self.retries.push_back((rid, batch, LAST_TRY)),
                    Err(_) => self.pending.extend(batch),
                }
            }
            let Some((rid, batch, _)) = self.retries.pop_front() else {
                break;
            };
            let w = w.clone();
            self.inflight.push(Box::pin(async move {
                let result = w.exchange(&batch, 0, &rid).await;
                (rid, batch, LAST_TRY, result)
            }));
        }
    }
}
