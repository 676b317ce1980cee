//! A scheduler process for the scheduler chaos test: it upserts the scheduler `chaos` (every
//! 50 ms, 200 runs, every missed tick caught up) at start, as every instance of an app does,
//! then runs scheduler passes until killed.
//!
//! Run with: `REDIS_URL=redis://127.0.0.1:7000 JOBS_PREFIX=test JOBS_QUEUE=q
//! cargo run -p redtower-jobs --example schedule_instance`

use std::time::Duration;

use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{CatchUp, Job, Queue, RedisStore, Schedule};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Tick;

impl Job for Tick {
    const NAME: &'static str = "tick";
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")?;
    let prefix = std::env::var("JOBS_PREFIX").unwrap_or_else(|_| "rt".into());
    let queue = std::env::var("JOBS_QUEUE").unwrap_or_else(|_| "sched".into());
    let redis = Redis::new(RedisConfig::from_url(&url)?.key_prefix(prefix))?;
    redis.wait_ready(Duration::from_secs(10)).await?;
    let queue = Queue::<Tick>::new(RedisStore::new(redis), queue);
    let schedule = Schedule::every(Duration::from_millis(50))
        .limit(200)
        .catch_up(CatchUp::All {
            within: Duration::from_secs(3600),
        });
    queue.schedule("chaos", schedule, Tick).await?;
    println!("ready");
    loop {
        let pause = match queue.run_schedulers().await {
            Ok(pass) => pass.next_due.unwrap_or(Duration::from_millis(20)),
            Err(_) => Duration::from_millis(20),
        };
        tokio::time::sleep(pause.min(Duration::from_millis(20))).await;
    }
}
