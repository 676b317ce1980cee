//! Job schedulers under chaos on real Redis: three scheduler processes, killed with SIGKILL
//! and restarted at random (all three at once now and then), fire a 50 ms schedule of 200
//! runs. Exactly one job per tick: 200 consecutive ticks, one job each, no tick twice (the
//! first one's added by the upsert that stored the scheduler).

use std::{collections::HashSet, time::Duration};

use fred::interfaces::KeysInterface;
use futures::TryStreamExt;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Job, JobState, Queue, RedisStore};
use redtower_testkit::unique_prefix;
use serde::{Deserialize, Serialize};
use tokio::process::Child;

mod instance;

#[derive(Serialize, Deserialize)]
struct Tick;

impl Job for Tick {
    const NAME: &'static str = "tick";
}

/// Starts an instance and waits until it has upserted the scheduler (it prints `ready`).
async fn spawn(url: &str, prefix: &str) -> Child {
    instance::spawn("schedule_instance", url, prefix, "sched").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_killed_at_random_fire_each_tick_once() {
    const TICKS: usize = 200;
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("schedchaos");
    let redis = Redis::new(
        RedisConfig::from_url(&url)
            .unwrap()
            .key_prefix(prefix.clone()),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let queue = Queue::<Tick>::new(RedisStore::new(redis.clone()), "sched");

    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(spawn(&url, &prefix).await);
    }
    let mut kills = 0;
    let mut outages = 0;
    loop {
        let s = queue.schedulers().await.unwrap();
        if s.first().is_some_and(|s| s.next.is_none()) {
            break;
        }
        // Random pauses between kills: the chaos is the point, not the timing.
        let pause = rand::random_range(50..250);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if rand::random_range(0..10) == 0 {
            // All three down for a while: the ticks meanwhile are caught up after.
            for c in &mut instances {
                c.kill().await.unwrap();
            }
            kills += 3;
            outages += 1;
            tokio::time::sleep(Duration::from_millis(300)).await; // the outage itself
            for c in &mut instances {
                *c = spawn(&url, &prefix).await;
            }
        } else {
            let i = rand::random_range(0..instances.len());
            instances[i].kill().await.unwrap(); // SIGKILL, at any point of a pass
            kills += 1;
            instances[i] = spawn(&url, &prefix).await;
        }
    }
    for c in &mut instances {
        c.kill().await.unwrap();
    }

    // The tick markers: one per tick, naming its job.
    let pattern = redis.keyspace().namespace("q").tag_pattern("sched");
    let keys: Vec<String> = redis.scan(&pattern).try_collect().await.unwrap();
    let mut ticks = Vec::new();
    for k in keys.iter().filter(|k| k.contains(":tick:")) {
        let tick: u64 = k.rsplit(':').next().unwrap().parse().unwrap();
        let job: String = redis.client().get(k.as_str()).await.unwrap();
        ticks.push((tick, job));
    }
    ticks.sort();
    let jobs = queue.list(JobState::Ready, 0, 1000).await.unwrap();
    eprintln!(
        "scheduler chaos: {kills} kills ({outages} outages of all instances), {} ticks, {} jobs",
        ticks.len(),
        jobs.len()
    );
    assert!(kills >= 10, "instances were killed ({kills})");
    // The first tick is the upsert's own time, and the upsert added its job (no marker): the
    // one job no marker names, created at that tick.
    let marked: HashSet<&str> = ticks.iter().map(|(_, j)| j.as_str()).collect();
    let first: Vec<_> = jobs
        .iter()
        .filter(|j| !marked.contains(j.id.as_str()))
        .collect();
    assert_eq!(first.len(), 1, "one job without a marker: the first tick's");
    ticks.insert(0, (first[0].created_at_ms, first[0].id.to_string()));
    assert_eq!(ticks.len(), TICKS, "every tick fired");
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, 50, "consecutive ticks, none skipped");
    }
    let mut job_ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    let mut tick_jobs: Vec<String> = ticks.into_iter().map(|(_, j)| j).collect();
    job_ids.sort();
    tick_jobs.sort();
    tick_jobs.dedup();
    assert_eq!(job_ids.len(), TICKS, "one job per tick, none twice");
    assert_eq!(job_ids, tick_jobs, "each job is its tick's");
    assert_eq!(queue.schedulers().await.unwrap()[0].count, TICKS as u64);
}
