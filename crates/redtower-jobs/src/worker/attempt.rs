//! One attempt of a [`Worker`]: running the handler, turning its result into a settlement,
//! reporting it, and keeping its lease.

use std::{collections::HashMap, panic::AssertUnwindSafe};

use futures::FutureExt;
use tokio::{
    task::{self, JoinSet},
    time::Instant,
};
use tracing::Instrument;

use super::{Finished, Outcome, Worker};
use crate::{
    Result,
    handler::{JobContext, JobError},
    progress::{JobEvent, JobEventKind, MAX_RESULT_BYTES, OutputKind, Reporter, ResultSlot},
    store::{Fetched, Lease, Settle, Settled},
};

/// A job being run by the worker.
pub(super) struct Running {
    pub(super) job: Fetched,
    /// The handler's context (a flow child's result is read from it).
    ctx: JobContext,
    started: Instant,
    abort: task::AbortHandle,
    /// The attempt's `redtower.jobs.run` span, open until the attempt is settled.
    span: tracing::Span,
    /// The result the attempt stored (JSON text), for its completion event.
    result: ResultSlot,
}

/// The span of one attempt (see the crate docs, "Tracing"): a root in this process, whose
/// OpenTelemetry parent is the span that added the job (its stored trace context), with the
/// `opentelemetry` feature.
fn run_span(queue: &str, job: &Fetched) -> tracing::Span {
    let span = tracing::info_span!(
        target: "redtower::jobs",
        parent: None,
        "redtower.jobs.run",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        queue,
        job.name = job.name.as_str(),
        job.id = job.lease.id.as_str(),
        job.attempt = job.attempt,
        outcome = tracing::field::Empty,
    );
    #[cfg(feature = "opentelemetry")]
    if let Some(cx) = &job.trace {
        cx.set_parent_of(&span);
    }
    span
}

/// The `outcome` of a settled attempt.
fn settled_outcome(s: Settled) -> &'static str {
    match s {
        Settled::Completed => "completed",
        Settled::Retrying => "retrying",
        Settled::Dead => "dead",
        Settled::Released => "released",
        Settled::Delayed => "rate_limited",
        _ => "lease_lost",
    }
}

impl Worker {
    pub(super) fn spawn(
        &self,
        mut job: Fetched,
        tasks: &mut JoinSet<Result<(), JobError>>,
        running: &mut HashMap<task::Id, Running>,
    ) {
        let q = self.queue.to_string();
        metrics::counter!("redtower_jobs_started_total", "queue" => q.clone()).increment(1);
        metrics::histogram!("redtower_jobs_wait_seconds", "queue" => q)
            .record(job.waited.as_secs_f64());
        let ctx = JobContext::with_children(
            self.queue.clone(),
            job.lease.id.clone(),
            job.name.clone(),
            job.attempt,
            job.max_attempts,
            std::mem::take(&mut job.children),
        )
        .with_reporter(Reporter {
            store: self.store.clone(),
            lease: job.lease.clone(),
            events: self.events.clone(),
        });
        let handler_ctx = ctx.clone();
        let fut: crate::handler::BoxFuture = match (&job.invalid, self.handlers.get(&job.name)) {
            (Some(reason), _) => {
                let msg = format!("bad job record: {reason}");
                Box::pin(async move { Err(JobError::fatal(msg)) })
            }
            (None, Some(h)) => h(&job.data, handler_ctx),
            (None, None) => {
                let msg = format!("no handler for job `{}` in this worker", job.name);
                Box::pin(async move { Err(JobError::fatal(msg)) })
            }
        };
        let span = run_span(&self.queue, &job);
        let timeout = self.timeout;
        // A start limiter is asked first: a refusal is a rate-limited attempt (not counted).
        let fut: crate::handler::BoxFuture = match &self.start_limiter {
            Some(limiter) if job.invalid.is_none() => {
                let limiter = limiter.clone();
                let (queue, id, name, attempt) = (
                    self.queue.clone(),
                    job.lease.id.clone(),
                    job.name.clone(),
                    job.attempt,
                );
                Box::pin(async move {
                    let start = crate::JobStart {
                        queue: &queue,
                        id: &id,
                        name: &name,
                        attempt,
                    };
                    match limiter.check(start).await {
                        crate::StartDecision::Wait {
                            retry_after,
                            pause_queue,
                        } => {
                            let e = JobError::rate_limited(retry_after);
                            Err(if pause_queue { e.pause_queue() } else { e })
                        }
                        _ => fut.await,
                    }
                })
            }
            _ => fut,
        };
        let result = ResultSlot::default();
        let slot = result.clone();
        let store = self.store.clone();
        let queue = self.queue.clone();
        let lease = job.lease.clone();
        let fut = async move {
            let run = AssertUnwindSafe(fut).catch_unwind();
            let res = match timeout {
                Some(t) => match tokio::time::timeout(t, run).await {
                    Ok(r) => r,
                    Err(_) => return Err(JobError::retry(format!("timed out after {t:?}"))),
                },
                None => run.await,
            };
            res.unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(JobError::retry(format!("handler panicked: {msg}")))
            })
        };
        // A result is stored (fenced by the lease) before the attempt is settled; `()`
        // stores nothing and costs nothing.
        let fut = async move {
            let Some(json) = fut.await? else {
                return Ok(());
            };
            if json.len() > MAX_RESULT_BYTES {
                return Err(JobError::fatal(format!(
                    "result is {} bytes, over the limit of {MAX_RESULT_BYTES} bytes",
                    json.len()
                )));
            }
            store
                .put_output(&queue, &lease, OutputKind::Result, json.clone())
                .await
                .map_err(|e| JobError::retry(format!("storing the result failed: {e}")))?;
            if let Ok(mut s) = slot.lock() {
                *s = Some(json);
            }
            Ok(())
        };
        let abort = tasks.spawn(fut.instrument(span.clone()));
        running.insert(
            abort.id(),
            Running {
                job,
                ctx,
                started: Instant::now(),
                abort,
                span,
                result,
            },
        );
    }

    pub(super) fn collect(
        &self,
        res: std::result::Result<(task::Id, Result<(), JobError>), task::JoinError>,
        running: &mut HashMap<task::Id, Running>,
        pending: &mut Vec<(Running, Settle, Option<Outcome>)>,
    ) {
        let (id, result) = match res {
            Ok((id, r)) => (id, r),
            Err(e) => {
                let id = e.id();
                if e.is_cancelled() {
                    // Lease lost (already removed) or shutdown (handled by the caller).
                    running.remove(&id);
                    return;
                }
                (id, Err(JobError::retry("handler panicked")))
            }
        };
        let Some(r) = running.remove(&id) else {
            return;
        };
        if let Err(e) = &result
            && let Some((delay, pause_queue)) = e.rate_limit()
        {
            pending.push((r, Settle::Delay { delay, pause_queue }, None));
            return;
        }
        let (settle, outcome) = match result {
            Ok(()) if r.job.flow_child => (
                Settle::CompleteFlowChild {
                    flow_result: r.ctx.take_flow_result(),
                },
                Outcome::Completed,
            ),
            Ok(()) => (Settle::Complete, Outcome::Completed),
            Err(e) if e.is_retryable() => {
                let delay = e
                    .retry_delay()
                    .unwrap_or_else(|| r.job.backoff.delay_with_jitter(r.job.attempt));
                let error = e.message().to_owned();
                let outcome = if r.job.attempt >= r.job.max_attempts {
                    Outcome::Dead {
                        error: error.clone(),
                    }
                } else {
                    Outcome::Retrying {
                        error: error.clone(),
                        delay,
                    }
                };
                (Settle::Retry { delay, error }, outcome)
            }
            Err(e) => {
                let error = e.message().to_owned();
                (
                    Settle::Fail {
                        error: error.clone(),
                    },
                    Outcome::Dead { error },
                )
            }
        };
        pending.push((r, settle, Some(outcome)));
    }

    pub(super) fn after_settle(
        &self,
        batch: Vec<(Running, Settle, Option<Outcome>)>,
        settled: Vec<Settled>,
    ) {
        let q = self.queue.to_string();
        for ((r, _, outcome), s) in batch.into_iter().zip(settled) {
            if r.job.flow_child && matches!(s, Settled::Completed | Settled::Dead) {
                // Its final state is in the outbox: relay it now.
                self.flow_relay.notify_one();
            }
            let run_time = r.started.elapsed();
            r.span.record("outcome", settled_outcome(s));
            if matches!(s, Settled::Retrying | Settled::Dead) {
                r.span.record("otel.status_code", "error");
            }
            let name = match s {
                Settled::Completed => "redtower_jobs_completed_total",
                Settled::Retrying => "redtower_jobs_retried_total",
                Settled::Dead => "redtower_jobs_dead_total",
                Settled::Released => "redtower_jobs_released_total",
                Settled::Delayed => "redtower_jobs_rate_limited_total",
                _ => "redtower_jobs_lease_lost_total",
            };
            metrics::counter!(name, "queue" => q.clone()).increment(1);
            if matches!(s, Settled::Retrying | Settled::Dead) {
                metrics::counter!("redtower_jobs_failed_total", "queue" => q.clone()).increment(1);
            }
            let Some(mut outcome) = outcome else {
                continue;
            };
            metrics::histogram!("redtower_jobs_run_seconds", "queue" => q.clone())
                .record(run_time.as_secs_f64());
            let hooks = match s {
                Settled::Completed => &self.on_completed,
                Settled::Retrying | Settled::Dead => &self.on_failed,
                _ => {
                    tracing::debug!(target: "redtower::jobs", queue = %self.queue, id = %r.job.lease.id, "late result rejected: lease lost");
                    continue;
                }
            };
            // The store decides dead versus retry (a lease may have changed the count).
            if s == Settled::Dead
                && let Outcome::Retrying { error, .. } = outcome
            {
                outcome = Outcome::Dead { error };
            }
            if let Some(events) = &self.events {
                let kind =
                    match &outcome {
                        Outcome::Completed => JobEventKind::Completed {
                            result: r.result.lock().ok().and_then(|s| {
                                s.as_deref().and_then(|j| serde_json::from_str(j).ok())
                            }),
                        },
                        Outcome::Retrying { error, delay } => JobEventKind::Retried {
                            error: error.clone(),
                            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        },
                        Outcome::Dead { error } => JobEventKind::Failed {
                            error: error.clone(),
                        },
                    };
                let event = JobEvent::new(
                    self.queue.clone(),
                    r.job.lease.id.clone(),
                    r.job.name.clone(),
                    r.job.attempt,
                    kind,
                );
                let events = events.clone();
                tokio::spawn(async move { events.publish(&event).await });
            }
            tracing::debug!(target: "redtower::jobs", queue = %self.queue, id = %r.job.lease.id, outcome = ?s, "job settled");
            if hooks.is_empty() {
                continue;
            }
            let finished = Finished {
                queue: self.queue.clone(),
                id: r.job.lease.id.clone(),
                name: r.job.name.clone(),
                data: r.job.data.clone(),
                attempt: r.job.attempt,
                max_attempts: r.job.max_attempts,
                run_time,
                outcome,
            };
            let kind = if s == Settled::Completed {
                "completed"
            } else {
                "failed"
            };
            for hook in hooks {
                let span = tracing::info_span!(
                    target: "redtower::jobs",
                    parent: &r.span,
                    "redtower.jobs.hook",
                    hook = kind,
                );
                tokio::spawn(hook(finished.clone()).instrument(span));
            }
        }
    }

    pub(super) async fn extend(
        &self,
        running: &mut HashMap<task::Id, Running>,
        tasks: &mut JoinSet<Result<(), JobError>>,
    ) {
        let leases: Vec<Lease> = running.values().map(|r| r.job.lease.clone()).collect();
        match self.store.extend(&self.queue, leases, self.lease).await {
            Ok(lost) if !lost.is_empty() => {
                let q = self.queue.to_string();
                running.retain(|_, r| {
                    if lost.contains(&r.job.lease.id) {
                        r.span.record("outcome", "lease_lost");
                        tracing::warn!(target: "redtower::jobs", queue = %q, id = %r.job.lease.id, "lease lost; cancelling the job");
                        metrics::counter!("redtower_jobs_lease_lost_total", "queue" => q.clone()).increment(1);
                        r.abort.abort();
                        false
                    } else {
                        true
                    }
                });
                let _ = tasks;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "redtower::jobs", queue = %self.queue, error = %e, "lease extension failed");
            }
        }
    }
}
