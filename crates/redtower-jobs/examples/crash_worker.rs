//! A worker process for the crash test: it takes one job from the queue, prints
//! `started <id> <attempt>` and then hangs, so the test can `SIGKILL` it mid-job.
//!
//! Run with: `REDIS_URL=redis://127.0.0.1:7000 JOBS_PREFIX=test JOBS_QUEUE=q
//! cargo run -p redtower-jobs --example crash_worker`

use std::{io::Write, time::Duration};

use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Job, JobContext, JobError, RedisStore, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Crash {
    n: u32,
}

impl Job for Crash {
    const NAME: &'static str = "crash";
}

async fn hang(_job: Crash, ctx: JobContext) -> Result<(), JobError> {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "started {} {}", ctx.id(), ctx.attempt());
    let _ = out.flush();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")?;
    let prefix = std::env::var("JOBS_PREFIX").unwrap_or_else(|_| "rt".into());
    let queue = std::env::var("JOBS_QUEUE").unwrap_or_else(|_| "crash".into());
    let redis = Redis::new(RedisConfig::from_url(&url)?.key_prefix(prefix))?;
    redis.wait_ready(Duration::from_secs(10)).await?;
    let worker = Worker::new(RedisStore::new(redis), queue)
        .concurrency(1)
        .lease(Duration::from_millis(1_000))
        .poll_interval(Duration::from_millis(100))
        .handle::<Crash>(hang)
        .start();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    worker.shutdown().await?;
    Ok(())
}
