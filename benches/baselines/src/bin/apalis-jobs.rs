//! The apalis side of the `redtower-jobs` benchmark (`crates/redtower-jobs/benches/jobs.rs`):
//! apalis 1.0 with apalis-redis on `redis://127.0.0.1:$REDIS_PORT`, `N` no-op jobs per scenario,
//! the same scenarios as redtower-jobs and BullMQ:
//!
//! * bulk enqueue: batches of 1,000 (`push_bulk`, one script call per batch);
//! * single enqueue: `push` with 50 calls in flight;
//! * processing: `N` jobs already queued, one worker with `concurrency(50)` and a no-op
//!   handler, until the `N`th job is recorded as done in Redis (its `done` set). apalis-redis
//!   puts every pushed task in its scheduled set and its fetch moves all due ones to the
//!   active list with one `unpack`, which fails above about 8,000 tasks ("too many results to
//!   unpack"); so the bench moves them first, 1,000 at a time, before the clock starts.
//!
//! Storage and worker keep apalis-redis' defaults (`Config::default()`: batches of 10, per-task
//! locks, results and events on). With its default per-task locks every fetched task is
//! locked by `acquire_leases.lua`, whose `LREM` on the active list scans the whole queue per
//! task; `APALIS_LOCKS=both` also measures processing with `lock_tasks(false)`.
//!
//! Prints one JSON line: `{"bulk":..,"single":..,"process":..,"process_nolock":..|null}` in jobs
//! per second.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use futures::future::join_all;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    n: u32,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn storage(conn: &ConnectionManager, queue: &str, locks: bool) -> RedisStorage<Noop> {
    RedisStorage::new(conn.clone()).with_config(Config::default().queue(queue).lock_tasks(locks))
}

async fn bulk(conn: &ConnectionManager, queue: &str, n: u32) -> Result<f64, Error> {
    let mut s = storage(conn, queue, true);
    let t = Instant::now();
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(1000) {
        s.push_bulk(chunk.iter().map(|&n| Noop { n }).collect())
            .await?;
    }
    Ok(f64::from(n) / t.elapsed().as_secs_f64())
}

async fn single(conn: &ConnectionManager, n: u32) -> Result<f64, Error> {
    let s = storage(conn, "bench-single", true);
    let t = Instant::now();
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(50) {
        let adds = chunk.iter().map(|&n| {
            let mut s = s.clone();
            async move { s.push(Noop { n }).await }
        });
        for r in join_all(adds).await {
            r?;
        }
    }
    Ok(f64::from(n) / t.elapsed().as_secs_f64())
}

async fn done(conn: &ConnectionManager, queue: &str) -> Result<u64, Error> {
    let mut c = conn.clone();
    let key = Config::default().queue(queue).done_jobs_set();
    Ok(redis::cmd("SCARD").arg(key).query_async(&mut c).await?)
}

async fn noop(_job: Noop, handled: Data<Arc<AtomicU64>>) -> Result<(), BoxDynError> {
    handled.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Moves the pushed tasks from the scheduled set (where `push` puts every task, due now) to the
/// active list, 1,000 at a time: what apalis-redis' `fetch_next.lua` does on its first fetch,
/// with one `unpack` of every due task, which fails above about 8,000 tasks (Lua's stack
/// limit: "too many results to unpack").
async fn promote(conn: &ConnectionManager, queue: &str) -> Result<(), Error> {
    let config = Config::default().queue(queue);
    let (scheduled, active) = (config.scheduled_jobs_set(), config.active_jobs_list());
    let mut c = conn.clone();
    loop {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&scheduled)
            .arg(0)
            .arg(999)
            .query_async(&mut c)
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("RPUSH")
            .arg(&active)
            .arg(&ids)
            .query_async::<()>(&mut c)
            .await?;
        redis::cmd("ZREM")
            .arg(&scheduled)
            .arg(&ids)
            .query_async::<()>(&mut c)
            .await?;
    }
}

async fn processing(
    conn: &ConnectionManager,
    queue: &str,
    n: u32,
    locks: bool,
) -> Result<f64, Error> {
    bulk(conn, queue, n).await?;
    promote(conn, queue).await?;
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let t = Instant::now();
    let worker = WorkerBuilder::new(format!("{queue}-worker"))
        .backend(storage(conn, queue, locks))
        .concurrency(50)
        .data(h)
        .build(noop);
    // Handled first (cheap), then recorded as done in Redis.
    let finished = async {
        while handled.load(Ordering::Relaxed) < u64::from(n)
            || done(conn, queue).await? < u64::from(n)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok::<_, Error>(f64::from(n) / t.elapsed().as_secs_f64())
    };
    tokio::select! {
        rate = finished => rate,
        r = worker.run() => Err(format!("the apalis worker stopped: {r:?}").into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let port: u16 = std::env::var("REDIS_PORT")
        .map_err(|_| "REDIS_PORT is not set")?
        .parse()?;
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let both = std::env::var("APALIS_LOCKS").is_ok_and(|v| v == "both");
    let conn = apalis_redis::connect(format!("redis://127.0.0.1:{port}")).await?;
    let bulk_rate = bulk(&conn, "bench-bulk", n).await?;
    let single_rate = single(&conn, n).await?;
    let process = processing(&conn, "bench-process", n, true).await?;
    let nolock = if both {
        Some(processing(&conn, "bench-process-nolock", n, false).await?)
    } else {
        None
    };
    println!(
        "{}",
        serde_json::json!({
            "bulk": bulk_rate,
            "single": single_rate,
            "process": process,
            "process_nolock": nolock,
        })
    );
    Ok(())
}
