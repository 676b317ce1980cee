//! A worker process for the flow chaos test: runs the workers of a flow's three queues
//! (parents on `<q>`, children on `<q>-a` and `<q>-b`) until killed. Each run of a parent is
//! recorded in the list `flowruns` (the parent's order and the outcomes it saw) so the test can
//! check that no parent ran before its children or more often than its lost leases explain.
//!
//! Run with: `REDIS_URL=redis://127.0.0.1:7000 JOBS_PREFIX=test JOBS_QUEUE=q
//! cargo run -p redtower-jobs --example flow_instance`

use std::time::Duration;

use fred::interfaces::ListInterface;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{ChildOutcome, Job, JobContext, JobError, RedisStore, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Parent {
    order: u64,
}

impl Job for Parent {
    const NAME: &'static str = "parent";
}

#[derive(Serialize, Deserialize)]
struct Child {
    n: u64,
}

impl Job for Child {
    const NAME: &'static str = "child";
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")?;
    let prefix = std::env::var("JOBS_PREFIX").unwrap_or_else(|_| "rt".into());
    let queue = std::env::var("JOBS_QUEUE").unwrap_or_else(|_| "flows".into());
    let redis = Redis::new(RedisConfig::from_url(&url)?.key_prefix(prefix))?;
    redis.wait_ready(Duration::from_secs(10)).await?;
    let store = RedisStore::new(redis.clone());
    let runs = redis.keyspace().namespace("flowchaos").key("runs");
    let mut workers = Vec::new();
    for q in [format!("{queue}-a"), format!("{queue}-b")] {
        workers.push(
            Worker::new(store.clone(), q)
                .lease(Duration::from_millis(1500))
                .poll_interval(Duration::from_millis(100))
                .concurrency(20)
                .handle::<Child>(|c: Child, ctx: JobContext| async move {
                    // Long enough for kills to land inside handlers now and then.
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..10))).await;
                    ctx.set_flow_result(&c.n)?;
                    Ok::<_, JobError>(())
                })
                .start(),
        );
    }
    workers.push(
        Worker::new(store, queue)
            .lease(Duration::from_millis(1500))
            .poll_interval(Duration::from_millis(100))
            .concurrency(20)
            .handle::<Parent>(move |p: Parent, ctx: JobContext| {
                let (redis, runs) = (redis.clone(), runs.clone());
                async move {
                    let done = ctx
                        .children()
                        .iter()
                        .filter(|c| {
                            matches!(c.outcome, ChildOutcome::Completed { result: Some(_) })
                        })
                        .count();
                    let line = format!("{} {} {}", p.order, ctx.id(), done);
                    redis
                        .client()
                        .rpush::<(), _, _>(runs.as_str(), line)
                        .await
                        .map_err(JobError::retry)?;
                    Ok::<_, JobError>(())
                }
            })
            .start(),
    );
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
