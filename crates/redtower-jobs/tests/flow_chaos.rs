//! Flows under chaos on real Redis: 300 flows of one parent and 6 children on two other
//! queues, run by three worker processes killed with SIGKILL and restarted at random (all
//! three at once now and then). No parent is lost (every one completes), none runs before its
//! children are complete, and none runs more often than its lost leases explain (a release
//! counted twice would run it again without a lost lease).

use std::{collections::HashMap, time::Duration};

use fred::interfaces::{ListInterface, SortedSetsInterface};
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Flow, Job, JobState, Queue, RedisStore};
use redtower_testkit::unique_prefix;
use serde::{Deserialize, Serialize};
use tokio::process::Child;

mod instance;

#[derive(Serialize, Deserialize)]
struct Parent {
    order: u64,
}

impl Job for Parent {
    const NAME: &'static str = "parent";
}

#[derive(Serialize, Deserialize)]
struct Kid {
    n: u64,
}

impl Job for Kid {
    const NAME: &'static str = "child";
}

const FLOWS: u64 = 300;
const CHILDREN: u64 = 6;

/// Starts an instance and waits until its workers run (it prints `ready`).
async fn spawn(url: &str, prefix: &str) -> Child {
    instance::spawn("flow_instance", url, prefix, "flows").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_lose_no_parent_and_run_none_twice() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("flowchaos");
    let redis = Redis::new(
        RedisConfig::from_url(&url)
            .unwrap()
            .key_prefix(prefix.clone()),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis.clone());
    let parents = Queue::<Parent>::new(store.clone(), "flows");
    let (qa, qb) = (
        Queue::<Kid>::new(store.clone(), "flows-a"),
        Queue::<Kid>::new(store.clone(), "flows-b"),
    );

    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(spawn(&url, &prefix).await);
    }
    // Flows are added while the workers are being killed.
    let adder = tokio::spawn(async move {
        let mut ids = Vec::new();
        for order in 0..FLOWS {
            let mut flow = Flow::new(&parents, Parent { order });
            for n in 0..CHILDREN {
                let q = if n % 2 == 0 { &qa } else { &qb };
                flow = flow.child(format!("c{n}"), q, Kid { n });
            }
            ids.push((order, flow.add().await.unwrap().parent));
            // Spread the adds over several seconds of kills.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ids
    });
    let parents = Queue::<Parent>::new(store.clone(), "flows");
    let mut kills = 0;
    let mut outages = 0;
    let mut rounds = 0;
    loop {
        let c = parents.counts().await.unwrap();
        if adder.is_finished() && c.completed == FLOWS {
            break;
        }
        rounds += 1;
        assert!(rounds < 2_000, "flows did not finish: {c:?}");
        // Random pauses between kills: the chaos is the point, not the timing.
        let pause = rand::random_range(100..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if kills > 60 {
            continue; // enough chaos: let the rest finish
        }
        if rand::random_range(0..10) == 0 {
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
            instances[i].kill().await.unwrap(); // SIGKILL, at any point
            kills += 1;
            instances[i] = spawn(&url, &prefix).await;
        }
    }
    let ids = adder.await.unwrap();
    // Messages a killed relay took are delivered again (a no-op) and acknowledged after
    // their outbox lease: wait for both outboxes to drain while workers still run.
    for _ in 0..300 {
        let mut left = 0;
        for q in ["flows-a", "flows-b"] {
            let key = redis.keyspace().namespace("q").key(q).push("fout");
            left += redis.client().zcard::<u64, _>(key.as_str()).await.unwrap();
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polls the outbox size
    }
    for c in &mut instances {
        c.kill().await.unwrap();
    }

    let runs_key = redis.keyspace().namespace("flowchaos").key("runs");
    let lines: Vec<String> = redis
        .client()
        .lrange(runs_key.as_str(), 0, -1)
        .await
        .unwrap();
    let mut runs: HashMap<String, u32> = HashMap::new();
    for l in &lines {
        let mut it = l.split(' ');
        let (_, id, done) = (it.next(), it.next().unwrap(), it.next().unwrap());
        assert_eq!(
            done,
            CHILDREN.to_string(),
            "a parent ran with all its children: {l}"
        );
        *runs.entry(id.to_owned()).or_default() += 1;
    }
    let mut extra = 0;
    for (order, id) in &ids {
        let info = parents.get(id).await.unwrap().expect("parent kept");
        assert_eq!(info.state, JobState::Completed, "parent {order} completed");
        let n = runs.get(id.as_str()).copied().unwrap_or(0);
        assert!(n >= 1, "parent {order} ran");
        assert!(
            n <= 1 + info.stalls,
            "parent {order} ran {n} times with {} lost leases",
            info.stalls
        );
        extra += n - 1;
    }
    let c = parents.counts().await.unwrap();
    assert_eq!((c.waiting_children, c.ready, c.active), (0, 0, 0));
    for q in ["flows-a", "flows-b"] {
        use redtower_jobs::QueueStore;
        let key = redis.keyspace().namespace("q").key(q).push("fout");
        let left: u64 = redis.client().zcard(key.as_str()).await.unwrap();
        assert_eq!(left, 0, "outbox of {q} drained");
        let cc = store.counts(q).await.unwrap();
        assert_eq!(cc.completed, FLOWS * CHILDREN / 2, "children of {q}");
    }
    eprintln!(
        "flow chaos: {kills} kills ({outages} outages of all instances), {FLOWS} flows x {CHILDREN} children, {} parent runs ({extra} after lost leases)",
        lines.len()
    );
    assert!(kills >= 10, "instances were killed ({kills})");
}
