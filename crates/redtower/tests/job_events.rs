//! The job events adapter on real Redis: a worker's events land on the job's channel, in
//! order, with history a reader resumes from.
#![cfg(all(feature = "jobs", feature = "pubsub"))]

use std::time::Duration;

use redtower::{
    client::{Redis, RedisConfig},
    job_events::PubSubJobEvents,
    jobs::{self, Job, JobContext, JobError},
    pubsub::{EventId, PubSub, Replay},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize)]
struct Ship {
    fail_first: bool,
}

impl Job for Ship {
    const NAME: &'static str = "ship";
}

async fn redis(test: &str) -> Redis {
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(redtower_testkit::unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    redis
}

/// Every event of a job (progress steps, a retry, the completion with its result) is on the
/// job's own channel, in order; a reader that saw the first two resumes after them and gets
/// the rest, none twice; another job's channel holds only its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_are_published_per_job_with_history() {
    let redis = redis("job-events").await;
    let pubsub = PubSub::new(redtower::pubsub::RedisStore::new(redis.clone()));
    let events = PubSubJobEvents::new(pubsub.clone());
    let store = jobs::RedisStore::new(redis);
    let queue = jobs::Queue::<Ship>::new(store.clone(), "ship");
    let worker = jobs::Worker::new(store, "ship")
        .poll_interval(Duration::from_millis(100))
        .events(events.clone())
        .handle::<Ship>(|job: Ship, ctx: JobContext| async move {
            ctx.progress("packed").await?;
            if job.fail_first && ctx.attempt() == 1 {
                // The retry's event is published as the retry is scheduled, well before
                // this delay ends and the next attempt reports.
                return Err(JobError::retry("printer jammed").after(Duration::from_millis(200)));
            }
            ctx.progress("label printed").await?;
            ctx.progress("shipped").await?;
            Ok(json!({ "tracking": format!("T{}", ctx.attempt()) }))
        })
        .start();

    let id = queue
        .add(Ship { fail_first: true })
        .attempts(2)
        .await
        .unwrap();
    let other = queue.add(Ship { fail_first: false }).await.unwrap();
    let result: Value = queue.wait(&id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(result, json!({ "tracking": "T2" }));
    queue
        .wait::<Value>(&other, Duration::from_secs(20))
        .await
        .unwrap();

    let channel = events.channel("ship", &id).unwrap();
    assert_eq!(channel.as_str(), format!("job:ship:{id}"));
    // The completion is published just after the settlement: poll for it.
    let mut latest = None;
    for _ in 0..500 {
        latest = pubsub.latest(channel.as_str()).await.unwrap();
        if latest.as_ref().is_some_and(|l| l.offset() >= 6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latest = latest.expect("events were published");
    let all = replay(
        &pubsub,
        channel.as_str(),
        &EventId::new(latest.epoch(), 0).unwrap(),
    )
    .await;
    let seen: Vec<(String, Value)> = all
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["attempt"].clone()))
        .collect();
    let step = |a: u32| ("progress".to_owned(), json!(a));
    assert_eq!(
        seen,
        vec![
            step(1),
            ("retried".to_owned(), json!(1)),
            step(2),
            step(2),
            step(2),
            ("completed".to_owned(), json!(2)),
        ]
    );
    assert_eq!(all[0]["value"], "packed");
    assert_eq!(all[1]["error"], "printer jammed");
    assert_eq!(all[4]["value"], "shipped");
    assert_eq!(all[5]["result"], json!({ "tracking": "T2" }));
    assert!(all.iter().all(|e| e["id"] == json!(id.as_str())));

    // Resume after the second event: the rest, none twice.
    let rest = replay(
        &pubsub,
        channel.as_str(),
        &EventId::new(latest.epoch(), 2).unwrap(),
    )
    .await;
    assert_eq!(rest, all[2..].to_vec());

    let other_channel = events.channel("ship", &other).unwrap();
    let mut other_events = Vec::new();
    for _ in 0..500 {
        if let Some(l) = pubsub.latest(other_channel.as_str()).await.unwrap()
            && l.offset() >= 4
        {
            other_events = replay(
                &pubsub,
                other_channel.as_str(),
                &EventId::new(l.epoch(), 0).unwrap(),
            )
            .await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(other_events.len(), 4);
    assert!(
        other_events
            .iter()
            .all(|e| e["id"] == json!(other.as_str()))
    );
    worker.shutdown().await.unwrap();
}

async fn replay(pubsub: &PubSub, channel: &str, after: &EventId) -> Vec<Value> {
    match pubsub.replay(channel, after, 100).await.unwrap() {
        Replay::Events(events) => events.iter().map(|e| e.json().unwrap()).collect(),
        _ => panic!("the history covers the job"),
    }
}
