//! redtower-jobs versus BullMQ on the same fresh Redis, in the same run: 50,000 no-op jobs,
//! bulk enqueue, single enqueue (50 in flight) and processing at concurrency 50; and job
//! schedulers: `N / 10` schedulers (every hour) created 50 in flight until each one's first
//! tick is a job in the queue (BullMQ: `upsertJobScheduler`, which adds the first job); and
//! flows: `N / 100` flows of one parent and 10 children (on another queue), added 50 in
//! flight while workers (concurrency 50 per queue) run, until every parent completed (BullMQ:
//! `FlowProducer.add`).
//!
//! Run with: `cargo bench -p redtower-jobs --bench jobs` (BullMQ runs too when
//! `crates/redtower-jobs/bench/node_modules` exists: `npm ci` in that folder). `N=...` changes
//! the job count.
//!
//! Besides the human lines, it prints one machine-readable line per scenario, starting with
//! `RESULT ` and followed by one JSON object:
//! `{"bench":"redtower-jobs","scenario":"bulk_enqueue"|"single_enqueue"|"processing_c50"|"scheduler_first_tick"|"flows_1p10c",
//! "jobs":N,"redtower_per_s":..,"bullmq_per_s":..|null,"ratio":..|null,
//! "round_trips_per_job":..|null,"load_avg_1m":..|null}` (`ratio` = redtower / BullMQ, measured
//! in the same run; `load_avg_1m` read when the scenario ended).

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
    Flow, Job, JobContext, JobError, JobOptions, Queue, RedisStore, Schedule, Worker,
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
    let n_flows = (n / 100).max(1);
    let rt_flows = flows(&store, n_flows).await;
    let ours_load = load_avg();
    server.cmd(&["FLUSHALL"]);

    println!(
        "redtower-jobs ({n} jobs): bulk {rt_bulk:.0}/s, single {rt_single:.0}/s, processing {rt_process:.0}/s, {rtt:.3} scripts per processed job"
    );
    println!("redtower-jobs ({n_sched} schedulers): created with their first tick {rt_sched:.0}/s");
    println!("redtower-jobs ({n_flows} flows of 1 parent + 10 children): {rt_flows:.0} flows/s");
    let b = bullmq(server.port(), n);
    let load = load_avg().or(ours_load);
    let get = |k: &str| {
        b.as_ref()
            .and_then(|b| b.get(k))
            .and_then(serde_json::Value::as_f64)
    };
    let (ob, os, op) = (get("bulk"), get("single"), get("process"));
    let osched = get("schedulers");
    let oflows = get("flows");
    if let Some(bf) = oflows {
        println!(
            "BullMQ        ({n_flows} flows): {bf:.0} flows/s; ratio {:.2}x",
            rt_flows / bf
        );
    }
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
    println!(
        "{}",
        result_line("flows_1p10c", n_flows, rt_flows, oflows, None, load)
    );
}
