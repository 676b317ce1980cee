//! redtower-jobs versus BullMQ and apalis, each on a fresh Redis, in the same run: `N` no-op
//! jobs (default 50,000), bulk enqueue (batches of 1,000), single enqueue (50 in flight) and
//! processing at concurrency 50; and job schedulers (redtower-jobs and BullMQ): `N / 10`
//! schedulers (every hour) created 50 in flight until each one's first tick is a job in the
//! queue, then repeatable jobs: `N / 10` schedulers every second run by one worker at
//! concurrency 50, tick jobs completed per second over 5 s and redis-server's CPU per tick;
//! and flows (redtower-jobs and BullMQ): `N / 100` flows of one parent and 10 children (on
//! another queue), added 50 in flight while workers (concurrency 50 per queue) run, until
//! every parent completed (BullMQ: `FlowProducer.add`).
//! `ROUNDS` rounds (default 3), the systems taking turns, each round starting with the next.
//!
//! Run with: `cargo bench -p redtower-jobs --bench jobs`. BullMQ runs when
//! `crates/redtower-jobs/bench/node_modules` exists (`npm ci` in that folder); apalis when the
//! `apalis-jobs` binary of `benches/baselines` is built (`cargo build --release -p
//! redtower-baselines --bin apalis-jobs`, or its path in `APALIS_BENCH`).
//! `JOBS_COMMANDSTATS=1` prints the commands Redis ran in each redtower-jobs phase.
//!
//! Rate-limited queue: `max(N / 10, 1000)` jobs on a queue limited to 1,000 starts a second
//! (redtower: `QueueLimits::rate(100, 100 ms)`; BullMQ: `limiter: { max: 100, duration: 100 }`),
//! one worker at concurrency 50. Reported: the steady rate (starts after the first burst of
//! 100, over the time from the first start to the last) against the limit (`accuracy`), and
//! the throughput (jobs over the whole run, burst included).
//!
//! Besides the human lines, it prints one machine-readable line per scenario, starting with
//! `RESULT ` and followed by one JSON object: `bench`, `scenario` (`bulk_enqueue`,
//! `single_enqueue`, `processing_c50`, `scheduler_first_tick`, `scheduler_ticks`,
//! `flows_1p10c`), `jobs` (flows for `flows_1p10c`), `rounds`, the medians `redtower_per_s`,
//! `bullmq_per_s`, `apalis_per_s` (`null` when not run), `ratio` (redtower / BullMQ) and
//! `ratio_apalis` (redtower / apalis), each round's numbers (`*_rounds`),
//! `apalis_nolock_per_s` (processing with apalis' per-task locks off), `round_trips_per_job`
//! (processing), `redis_cpu_us_per_job` (redtower's enqueue and ticks),
//! `bullmq_redis_cpu_us_per_job` (ticks) and `load_avg_1m` at the end of the run.
//! The rate-limited scenario (`rate_limited_1000_per_s`) reports the steady rate as
//! `redtower_per_s` / `bullmq_per_s` and adds `limit_per_s`, `redtower_accuracy`,
//! `bullmq_accuracy` (steady rate / limit) and `redtower_throughput_per_s`,
//! `bullmq_throughput_per_s` (medians over the rounds).

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
    Flow, Job, JobContext, JobError, JobOptions, Queue, QueueLimits, RedisStore, Schedule, Worker,
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

/// `n` schedulers created 50 in flight, until each one's first tick is a job in the queue:
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
    // Each upsert adds its first tick's job; a pass fires what is still due (none here), as
    // BullMQ's side polls its counts.
    while queue.counts().await.unwrap().ready < u64::from(n) {
        queue.run_schedulers().await.unwrap();
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

/// Seconds of the measured window of [`ticks`], after [`TICKS_WARMUP`].
const TICKS_SECS: u64 = 5;
const TICKS_WARMUP: Duration = Duration::from_secs(2);

/// Repeatable jobs: `n` schedulers every second (created 50 in flight), one worker at
/// concurrency 50 with a no-op handler firing them; over [`TICKS_SECS`] after a warm-up, the
/// tick jobs completed per second (`n` when every tick is on time) and redis-server's CPU per
/// tick (firing it, adding its job and running it).
async fn ticks(store: &RedisStore, server: &RedisServer, n: u32) -> (f64, f64) {
    let queue = Queue::<Noop>::new(store.clone(), "bench-ticks");
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(50) {
        join_all(chunk.iter().map(|&i| {
            let queue = &queue;
            async move {
                let every = Schedule::every(Duration::from_secs(1));
                queue
                    .schedule(&format!("t{i}"), every, Noop { n: i })
                    .await
                    .unwrap()
            }
        }))
        .await;
    }
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let worker = Worker::new(store.clone(), "bench-ticks")
        .concurrency(50)
        .handle::<Noop>(|_j: Noop, _c: JobContext| async { Ok::<(), JobError>(()) })
        .on_completed(move |_| {
            let d = d2.clone();
            async move {
                d.fetch_add(1, Ordering::Relaxed);
            }
        })
        .start();
    tokio::time::sleep(TICKS_WARMUP).await;
    let (before, cpu, t) = (
        done.load(Ordering::Relaxed),
        redis_cpu(server),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(TICKS_SECS)).await;
    let jobs = (done.load(Ordering::Relaxed) - before).max(1) as f64;
    let rate = jobs / t.elapsed().as_secs_f64();
    let us = (redis_cpu(server) - cpu) * 1e6 / jobs;
    worker.shutdown().await.unwrap();
    (rate, us)
}

/// `nf` flows of one parent and 10 children (another queue), added 50 in flight while a
/// worker per queue (concurrency 50) runs, until every parent completed: flows per second.
async fn flows(store: &RedisStore, nf: u32) -> f64 {
    let parents = Queue::<Noop>::new(store.clone(), "bench-flow");
    let kids = Queue::<Noop>::new(store.clone(), "bench-flow-kids");
    let done = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let (d2, n2) = (done.clone(), notify.clone());
    let kid_worker = Worker::new(store.clone(), "bench-flow-kids")
        .concurrency(50)
        .handle::<Noop>(|_j: Noop, _c: JobContext| async { Ok::<(), JobError>(()) })
        .start();
    let parent_worker = Worker::new(store.clone(), "bench-flow")
        .concurrency(50)
        .handle::<Noop>(|_j: Noop, _c: JobContext| async { Ok::<(), JobError>(()) })
        .on_completed(move |_| {
            let (d, nt) = (d2.clone(), n2.clone());
            async move {
                if d.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(nf) {
                    nt.notify_one();
                }
            }
        })
        .start();
    let t = Instant::now();
    let all: Vec<u32> = (0..nf).collect();
    for chunk in all.chunks(50) {
        join_all(chunk.iter().map(|&i| {
            let (parents, kids) = (&parents, &kids);
            async move {
                let mut flow = Flow::new(parents, Noop { n: i });
                for k in 0..10 {
                    flow = flow.child(format!("c{k}"), kids, Noop { n: k });
                }
                flow.add().await.unwrap()
            }
        }))
        .await;
    }
    notify.notified().await;
    let rate = f64::from(nf) / t.elapsed().as_secs_f64();
    kid_worker.shutdown().await.unwrap();
    parent_worker.shutdown().await.unwrap();
    rate
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

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        f64::midpoint(v[m - 1], v[m])
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One scenario's numbers over all rounds, one entry per round and system.
#[derive(Default)]
struct Scenario {
    ours: Vec<f64>,
    bullmq: Vec<f64>,
    apalis: Vec<f64>,
    apalis_nolock: Vec<f64>,
    rtt: Vec<f64>,
    redis_us: Vec<f64>,
    bullmq_redis_us: Vec<f64>,
    /// The rate-limited scenario's throughput over the whole run (burst included).
    total: Vec<f64>,
    bullmq_total: Vec<f64>,
}

impl Scenario {
    fn result_line(&self, scenario: &str, n: u32, rounds: usize, load: Option<f64>) -> String {
        let ours = median(self.ours.clone()).unwrap_or(0.0);
        let bullmq = median(self.bullmq.clone());
        let apalis = median(self.apalis.clone());
        let json = serde_json::json!({
            "bench": "redtower-jobs",
            "scenario": scenario,
            "jobs": n,
            "rounds": rounds,
            "redtower_per_s": ours.round(),
            "redtower_rounds": self.ours.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "bullmq_rounds": self.bullmq.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "apalis_rounds": self.apalis.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "bullmq_per_s": bullmq.map(f64::round),
            "ratio": bullmq.map(|b| round2(ours / b)),
            "apalis_per_s": apalis.map(f64::round),
            "ratio_apalis": apalis.map(|a| round2(ours / a)),
            "apalis_nolock_per_s": median(self.apalis_nolock.clone()).map(f64::round),
            "round_trips_per_job": median(self.rtt.clone()).map(|r| (r * 1000.0).round() / 1000.0),
            "redis_cpu_us_per_job": median(self.redis_us.clone()).map(|r| (r * 10.0).round() / 10.0),
            "bullmq_redis_cpu_us_per_job": median(self.bullmq_redis_us.clone()).map(|r| (r * 10.0).round() / 10.0),
            "load_avg_1m": load,
        });
        format!("RESULT {json}")
    }
}

fn bullmq(n: u32) -> Option<serde_json::Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/bench");
    if !std::path::Path::new(dir).join("node_modules").exists() {
        eprintln!("BullMQ skipped: run `npm ci` in {dir}");
        return None;
    }
    let server = RedisServer::start();
    let out = std::process::Command::new("node")
        .arg("bullmq-bench.mjs")
        .current_dir(dir)
        .env("REDIS_PORT", server.port().to_string())
        .env("N", n.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last()?).ok()
}

/// The apalis side: the `apalis-jobs` binary of `benches/baselines`, from `APALIS_BENCH` or
/// the workspace's release build.
fn apalis(n: u32) -> Option<serde_json::Value> {
    let exe = std::env::var_os("APALIS_BENCH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")),
                std::path::PathBuf::from,
            );
            target.join("release/apalis-jobs")
        });
    if !exe.exists() {
        eprintln!(
            "apalis skipped: no {} (cargo build --release -p redtower-baselines --bin apalis-jobs, or set APALIS_BENCH)",
            exe.display()
        );
        return None;
    }
    let server = RedisServer::start();
    let out = std::process::Command::new(&exe)
        .env("REDIS_PORT", server.port().to_string())
        .env("N", n.to_string())
        .env("APALIS_LOCKS", "both")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    if parsed.is_none() {
        eprintln!(
            "apalis failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parsed
}

fn reset_stats(server: &RedisServer) {
    if std::env::var_os("JOBS_COMMANDSTATS").is_some() {
        server.cmd(&["CONFIG", "RESETSTAT"]);
    }
}

/// With `JOBS_COMMANDSTATS=1`: the commands Redis ran since [`reset_stats`] (scripts' own
/// commands included).
fn print_stats(server: &RedisServer, what: &str) {
    if std::env::var_os("JOBS_COMMANDSTATS").is_some() {
        let stats = server
            .cmd(&["INFO", "commandstats"])
            .as_text()
            .unwrap_or_default();
        println!("redtower-jobs {what}, INFO commandstats:");
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("  {line}");
        }
    }
}

/// One round of redtower-jobs on a fresh redis-server.
async fn ours(n: u32, s: &mut [Scenario; 7]) {
    let server = RedisServer::start();
    let redis = Redis::new(RedisConfig::from_url(&server.url()).unwrap()).unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis);
    let per_job = |cpu: f64| cpu * 1e6 / f64::from(n);

    let q = Queue::<Noop>::new(store.clone(), "bench-bulk");
    reset_stats(&server);
    let cpu = redis_cpu(&server);
    let rt_bulk = bulk(&q, n).await;
    s[0].redis_us.push(per_job(redis_cpu(&server) - cpu));
    print_stats(&server, "bulk enqueue");
    let q = Queue::<Noop>::new(store.clone(), "bench-single");
    reset_stats(&server);
    let cpu = redis_cpu(&server);
    let rt_single = single(&q, n).await;
    s[1].redis_us.push(per_job(redis_cpu(&server) - cpu));
    print_stats(&server, "single enqueue");
    let q = Queue::<Noop>::new(store.clone(), "bench-process");
    bulk(&q, n).await;
    let (rt_process, rtt) = processing(&store, &server, n).await;
    let n_sched = (n / 10).max(1);
    let rt_sched = schedulers(&store, n_sched).await;
    let (rt_ticks, ticks_us) = ticks(&store, &server, n_sched).await;
    s[4].ours.push(rt_ticks);
    s[4].redis_us.push(ticks_us);
    println!(
        "redtower-jobs ({n_sched} schedulers every 1 s): {rt_ticks:.0} tick jobs/s, redis-server CPU {ticks_us:.1} µs per tick"
    );
    println!(
        "redtower-jobs ({n} jobs): bulk {rt_bulk:.0}/s, single {rt_single:.0}/s, processing {rt_process:.0}/s, {rtt:.3} scripts per processed job; {n_sched} schedulers with their first tick {rt_sched:.0}/s"
    );
    s[0].ours.push(rt_bulk);
    s[1].ours.push(rt_single);
    s[2].ours.push(rt_process);
    s[2].rtt.push(rtt);
    s[3].ours.push(rt_sched);
    let n_flows = (n / 100).max(1);
    let rt_flows = flows(&store, n_flows).await;
    s[5].ours.push(rt_flows);
    println!("redtower-jobs ({n_flows} flows of 1 parent + 10 children): {rt_flows:.0} flows/s");
    let n_rate = (n / 10).max(1000);
    let (rt_rate, rt_rate_total) = rate_limited(&store, n_rate).await;
    s[6].ours.push(rt_rate);
    s[6].total.push(rt_rate_total);
    let limit = f64::from(RATE_MAX) / RATE_WINDOW.as_secs_f64();
    println!(
        "redtower-jobs rate-limited queue ({n_rate} jobs, limit {limit:.0}/s): steady {rt_rate:.1}/s ({:.2}% of the limit), throughput {rt_rate_total:.1}/s",
        rt_rate / limit * 100.0,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!("load average at start: {:?}", load_avg());
    let mut s: [Scenario; 7] = Default::default();
    let get = |v: &Option<serde_json::Value>, k: &str| {
        v.as_ref()
            .and_then(|b| b.get(k))
            .and_then(serde_json::Value::as_f64)
    };
    for round in 0..rounds {
        // The systems take turns, each round starting with the next one.
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => ours(n, &mut s).await,
                1 => {
                    let b = bullmq(n);
                    for (i, k) in ["bulk", "single", "process", "schedulers", "ticks", "flows"]
                        .iter()
                        .enumerate()
                    {
                        s[i].bullmq.extend(get(&b, k));
                    }
                    s[4].bullmq_redis_us.extend(get(&b, "ticks_redis_us"));
                    s[6].bullmq.extend(get(&b, "rate_steady"));
                    s[6].bullmq_total.extend(get(&b, "rate_total"));
                    if let Some(b) = b {
                        println!("BullMQ        ({n} jobs): {b}");
                    }
                }
                _ => {
                    let a = apalis(n);
                    for (i, k) in ["bulk", "single", "process"].iter().enumerate() {
                        s[i].apalis.extend(get(&a, k));
                    }
                    s[2].apalis_nolock.extend(get(&a, "process_nolock"));
                    if let Some(a) = a {
                        println!("apalis        ({n} jobs): {a}");
                    }
                }
            }
        }
    }
    let load = load_avg();
    println!("load average at end: {load:?}");
    let (n_sched, n_flows) = ((n / 10).max(1), (n / 100).max(1));
    for (i, name) in [
        "bulk_enqueue",
        "single_enqueue",
        "processing_c50",
        "scheduler_first_tick",
        "scheduler_ticks",
        "flows_1p10c",
    ]
    .iter()
    .enumerate()
    {
        let jobs = match i {
            0..3 => n,
            3 | 4 => n_sched,
            _ => n_flows,
        };
        println!("{}", s[i].result_line(name, jobs, rounds, load));
    }
    let n_rate = (n / 10).max(1000);
    let limit = f64::from(RATE_MAX) / RATE_WINDOW.as_secs_f64();
    let (rate, bullmq_rate) = (median(s[6].ours.clone()), median(s[6].bullmq.clone()));
    let (total, bullmq_total) = (
        median(s[6].total.clone()),
        median(s[6].bullmq_total.clone()),
    );
    let rate_json = serde_json::json!({
        "bench": "redtower-jobs",
        "scenario": "rate_limited_1000_per_s",
        "jobs": n_rate,
        "rounds": rounds,
        "limit_per_s": limit,
        "redtower_per_s": rate.map(round2),
        "bullmq_per_s": bullmq_rate.map(round2),
        "ratio": total.zip(bullmq_total).map(|(r, b)| round2(r / b)),
        "redtower_accuracy": rate.map(|r| (r / limit * 10_000.0).round() / 10_000.0),
        "bullmq_accuracy": bullmq_rate.map(|b| (b / limit * 10_000.0).round() / 10_000.0),
        "redtower_throughput_per_s": total.map(round2),
        "bullmq_throughput_per_s": bullmq_total.map(round2),
        "round_trips_per_job": null,
        "load_avg_1m": load,
    });
    println!("RESULT {rate_json}");
}
