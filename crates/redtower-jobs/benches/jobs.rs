//! redtower-jobs versus BullMQ on the same fresh Redis, in the same run: 50,000 no-op jobs,
//! bulk enqueue, single enqueue (50 in flight) and processing at concurrency 50; and job
//! schedulers: `N / 10` schedulers (every hour) created 50 in flight until each one's first
//! tick is a job in the queue (BullMQ: `upsertJobScheduler`, which adds the first job).
//!
//! Run with: `cargo bench -p redtower-jobs --bench jobs` (BullMQ runs too when
//! `crates/redtower-jobs/bench/node_modules` exists: `npm ci` in that folder). `N=...` changes
//! the job count.
//!
//! Rate-limited queue: `max(N / 10, 1000)` jobs on a queue limited to 1,000 starts a second
//! (redtower: `QueueLimits::rate(100, 100 ms)`; BullMQ: `limiter: { max: 100, duration: 100 }`),
//! one worker at concurrency 50. Reported: the steady rate (starts after the first burst of
//! 100, over the time from the first start to the last) against the limit (`accuracy`), and
//! the throughput (jobs over the whole run, burst included).
//!
//! Besides the human lines, it prints one machine-readable line per scenario, starting with
//! `RESULT ` and followed by one JSON object:
//! `{"bench":"redtower-jobs","scenario":"bulk_enqueue"|"single_enqueue"|"processing_c50"|"scheduler_first_tick",
//! "jobs":N,"redtower_per_s":..,"bullmq_per_s":..|null,"ratio":..|null,
//! "round_trips_per_job":..|null,"load_avg_1m":..|null}` (`ratio` = redtower / BullMQ, measured
//! in the same run; `load_avg_1m` read when the scenario ended). The rate-limited scenario
//! (`"rate_limited_1000_per_s"`) reports the steady rate as `redtower_per_s` / `bullmq_per_s`
//! and adds `limit_per_s`, `redtower_accuracy`, `bullmq_accuracy` (steady rate / limit) and
//! `redtower_throughput_per_s`, `bullmq_throughput_per_s`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{
    Job, JobContext, JobError, JobOptions, Queue, QueueLimits, RedisStore, Schedule, Worker,
};
use redtower_testkit::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u32,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
}

/// CPU seconds redis-server has used so far (`INFO cpu`: user + sys).
fn redis_cpu(server: &RedisServer) -> f64 {
    let info = server.cmd(&["INFO", "cpu"]).as_text().unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// CPU seconds this process has used so far (`/proc/self/stat`: utime + stime).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}

fn evalsha_calls(server: &RedisServer) -> u64 {
    let info = server
        .cmd(&["INFO", "commandstats"])
        .as_text()
        .unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn bulk(queue: &Queue<Noop>, n: u32) -> f64 {
    let t = Instant::now();
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(1000) {
        queue
            .add_bulk(chunk.iter().map(|&n| (Noop { n }, JobOptions::new())))
            .await
            .unwrap();
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

async fn single(queue: &Queue<Noop>, n: u32) -> f64 {
    let t = Instant::now();
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(50) {
        join_all(
            chunk
                .iter()
                .map(|&n| async move { queue.add(Noop { n }).await.unwrap() }),
        )
        .await;
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

/// `n` schedulers created 50 in flight, then passes until each one's first tick is a job:
/// schedulers (with their first job) per second.
async fn schedulers(store: &RedisStore, n: u32) -> f64 {
    let queue = Queue::<Noop>::new(store.clone(), "bench-sched");
    let t = Instant::now();
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(50) {
        join_all(chunk.iter().map(|&i| {
            let queue = &queue;
            async move {
                let every = Schedule::every(Duration::from_secs(3600));
                queue
                    .schedule(&format!("s{i}"), every, Noop { n: i })
                    .await
                    .unwrap()
            }
        }))
        .await;
    }
    let mut added = 0;
    while added < n as usize {
        added += queue.run_schedulers().await.unwrap().added.len();
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

async fn processing(store: &RedisStore, server: &RedisServer, n: u32) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let (d2, n2) = (done.clone(), notify.clone());
    if std::env::var_os("JOBS_COMMANDSTATS").is_some() {
        server.cmd(&["CONFIG", "RESETSTAT"]);
    }
    let calls = evalsha_calls(server);
    let (redis_before, own_before) = (redis_cpu(server), own_cpu());
    let t = Instant::now();
    let worker = Worker::new(store.clone(), "bench-process")
        .concurrency(50)
        .handle::<Noop>(|_j: Noop, _c: JobContext| async { Ok::<(), JobError>(()) })
        .on_completed(move |_| {
            let (d, nt) = (d2.clone(), n2.clone());
            async move {
                if d.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(n) {
                    nt.notify_one();
                }
            }
        })
        .start();
    notify.notified().await;
    let rate = f64::from(n) / t.elapsed().as_secs_f64();
    let rtt = (evalsha_calls(server) - calls) as f64 / f64::from(n);
    let per_job = |secs: f64| secs * 1e6 / f64::from(n);
    println!(
        "redtower-jobs processing: redis-server CPU {:.1} µs/job, worker process CPU {:.1} µs/job",
        per_job(redis_cpu(server) - redis_before),
        per_job(own_cpu() - own_before)
    );
    if std::env::var_os("JOBS_COMMANDSTATS").is_some() {
        let stats = server
            .cmd(&["INFO", "commandstats"])
            .as_text()
            .unwrap_or_default();
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("  {line}");
        }
    }
    worker.shutdown().await.unwrap();
    (rate, rtt)
}

/// The rate limit of the rate-limited scenario: `RATE_MAX` starts per `RATE_WINDOW`.
const RATE_MAX: u32 = 100;
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// `m` jobs through a queue limited to `RATE_MAX` per `RATE_WINDOW`: (steady start rate after
/// the first burst, throughput over the whole run).
async fn rate_limited(store: &RedisStore, m: u32) -> (f64, f64) {
    let queue = Queue::<Noop>::new(store.clone(), "bench-rate");
    queue
        .set_limits(QueueLimits::new().rate(RATE_MAX, RATE_WINDOW))
        .await
        .unwrap();
    bulk(&queue, m).await;
    let starts = Arc::new(std::sync::Mutex::new(Vec::with_capacity(m as usize)));
    let done = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let (s2, d2, n2) = (starts.clone(), done.clone(), notify.clone());
    let t = Instant::now();
    let worker = Worker::new(store.clone(), "bench-rate")
        .concurrency(50)
        .handle::<Noop>(move |_j: Noop, _c: JobContext| {
            let (s, d, nt) = (s2.clone(), d2.clone(), n2.clone());
            async move {
                s.lock().unwrap().push(Instant::now());
                if d.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(m) {
                    nt.notify_one();
                }
                Ok::<(), JobError>(())
            }
        })
        .start();
    notify.notified().await;
    let total = f64::from(m) / t.elapsed().as_secs_f64();
    worker.shutdown().await.unwrap();
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    let span = starts[starts.len() - 1] - starts[0];
    let steady = f64::from(m - RATE_MAX) / span.as_secs_f64();
    (steady, total)
}

/// The 1-minute load average (Linux), for the record.
fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn result_line(
    scenario: &str,
    n: u32,
    ours: f64,
    bullmq: Option<f64>,
    rtt: Option<f64>,
    load: Option<f64>,
) -> String {
    let json = serde_json::json!({
        "bench": "redtower-jobs",
        "scenario": scenario,
        "jobs": n,
        "redtower_per_s": ours.round(),
        "bullmq_per_s": bullmq.map(f64::round),
        "ratio": bullmq.map(|b| (ours / b * 100.0).round() / 100.0),
        "round_trips_per_job": rtt.map(|r| (r * 1000.0).round() / 1000.0),
        "load_avg_1m": load,
    });
    format!("RESULT {json}")
}

fn bullmq(port: u16, n: u32) -> Option<serde_json::Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/bench");
    if !std::path::Path::new(dir).join("node_modules").exists() {
        eprintln!("BullMQ skipped: run `npm ci` in {dir}");
        return None;
    }
    let out = std::process::Command::new("node")
        .arg("bullmq-bench.mjs")
        .current_dir(dir)
        .env("REDIS_PORT", port.to_string())
        .env("N", n.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last()?).ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let server = RedisServer::start();
    let redis = Redis::new(RedisConfig::from_url(&server.url()).unwrap()).unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis);

    println!("load average at start: {:?}", load_avg());
    let q = Queue::<Noop>::new(store.clone(), "bench-bulk");
    let rt_bulk = bulk(&q, n).await;
    let q = Queue::<Noop>::new(store.clone(), "bench-single");
    let rt_single = single(&q, n).await;
    let q = Queue::<Noop>::new(store.clone(), "bench-process");
    bulk(&q, n).await;
    let (rt_process, rtt) = processing(&store, &server, n).await;
    let n_sched = (n / 10).max(1);
    let rt_sched = schedulers(&store, n_sched).await;
    let n_rate = (n / 10).max(1000);
    let (rt_rate, rt_rate_total) = rate_limited(&store, n_rate).await;
    let ours_load = load_avg();
    server.cmd(&["FLUSHALL"]);

    println!(
        "redtower-jobs ({n} jobs): bulk {rt_bulk:.0}/s, single {rt_single:.0}/s, processing {rt_process:.0}/s, {rtt:.3} scripts per processed job"
    );
    println!("redtower-jobs ({n_sched} schedulers): created with their first tick {rt_sched:.0}/s");
    let b = bullmq(server.port(), n);
    let load = load_avg().or(ours_load);
    let get = |k: &str| {
        b.as_ref()
            .and_then(|b| b.get(k))
            .and_then(serde_json::Value::as_f64)
    };
    let (ob, os, op) = (get("bulk"), get("single"), get("process"));
    let osched = get("schedulers");
    let (orate, orate_total) = (get("rate_steady"), get("rate_total"));
    let limit = f64::from(RATE_MAX) / RATE_WINDOW.as_secs_f64();
    println!(
        "rate-limited queue ({n_rate} jobs, limit {limit:.0}/s): redtower-jobs steady {rt_rate:.1}/s ({:.2}% of the limit), throughput {rt_rate_total:.1}/s; BullMQ steady {:?}/s, throughput {:?}/s",
        rt_rate / limit * 100.0,
        orate.map(|r| (r * 10.0).round() / 10.0),
        orate_total.map(|r| (r * 10.0).round() / 10.0),
    );
    if let (Some(bb), Some(bs), Some(bp)) = (ob, os, op) {
        println!(
            "BullMQ        ({n} jobs): bulk {bb:.0}/s, single {bs:.0}/s, processing {bp:.0}/s"
        );
        println!(
            "ratio redtower/BullMQ: bulk {:.2}x, single {:.2}x, processing {:.2}x",
            rt_bulk / bb,
            rt_single / bs,
            rt_process / bp
        );
    }
    println!("load average at end: {load:?}");
    println!(
        "{}",
        result_line("bulk_enqueue", n, rt_bulk, ob, None, load)
    );
    println!(
        "{}",
        result_line("single_enqueue", n, rt_single, os, None, load)
    );
    println!(
        "{}",
        result_line("processing_c50", n, rt_process, op, Some(rtt), load)
    );
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let rate_json = serde_json::json!({
        "bench": "redtower-jobs",
        "scenario": "rate_limited_1000_per_s",
        "jobs": n_rate,
        "limit_per_s": limit,
        "redtower_per_s": round2(rt_rate),
        "bullmq_per_s": orate.map(round2),
        "ratio": orate_total.map(|b| round2(rt_rate_total / b)),
        "redtower_accuracy": (rt_rate / limit * 10_000.0).round() / 10_000.0,
        "bullmq_accuracy": orate.map(|b| (b / limit * 10_000.0).round() / 10_000.0),
        "redtower_throughput_per_s": round2(rt_rate_total),
        "bullmq_throughput_per_s": orate_total.map(round2),
        "round_trips_per_job": null,
        "load_avg_1m": load,
    });
    println!("RESULT {rate_json}");
    println!(
        "{}",
        result_line(
            "scheduler_first_tick",
            n_sched,
            rt_sched,
            osched,
            None,
            load
        )
    );
}
