//! The Redis backend on real servers: the conformance suite on standalone and Cluster (sharded
//! pub/sub), plus one subscription per channel (`PUBSUB NUMSUB` / `SHARDNUMSUB`), keys and TTLs,
//! two instances, trimmed or lost history, and reconnects (`CLIENT KILL TYPE pubsub`, a killed
//! and restarted server with AOF).

mod conformance;

use std::{sync::Arc, time::Duration};

use conformance::{
    SseClient, WAIT,
    checks::{Make, Opts, eventually, router},
    json_n,
};
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{Channel, PubSub, RedisStore, SseEndpoint};
use redtower_testkit::{RedisServer, unique_prefix};

const LINGER: Duration = Duration::from_millis(100);

async fn connect(url: &str, prefix: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(WAIT).await.unwrap();
    redis
}

async fn store(url: &str, prefix: &str, opts: Opts) -> RedisStore {
    RedisStore::builder(connect(url, prefix).await)
        .channel_capacity(opts.capacity)
        .history_len(opts.history_len as u64)
        .history_bytes(opts.history_bytes as u64)
        .max_payload(opts.max_payload)
        .max_channels(opts.max_channels)
        .linger(LINGER)
        .build()
}

fn make(url: String, test: &str) -> Make {
    let prefix = unique_prefix(test);
    Arc::new(move |opts: Opts| {
        let (url, prefix) = (url.clone(), prefix.clone());
        Box::pin(async move { PubSub::new(store(&url, &prefix, opts).await) })
    })
}

mod standalone {
    use super::*;
    conformance!(make(redtower_testkit::shared_url(), "ps-standalone"));
}

mod cluster {
    use super::*;
    conformance!(make(redtower_testkit::shared_cluster().url(), "ps-cluster"));
}

/// `PUBSUB NUMSUB` (or `SHARDNUMSUB` on the channel's Cluster node) for one channel.
fn numsub(url_is_cluster: bool, store: &RedisStore, channel: &str) -> i64 {
    let name = store.redis_channel(&Channel::new(channel).unwrap());
    let reply = if url_is_cluster {
        let node = redtower_testkit::shared_cluster().node_for_slot(name.slot());
        node.cmd(&["PUBSUB", "SHARDNUMSUB", name.as_str()])
    } else {
        redtower_testkit::shared().cmd(&["PUBSUB", "NUMSUB", name.as_str()])
    };
    reply.into_array()[1].as_int().unwrap()
}

/// The linger of the fan-out test: long enough that "still subscribed right after the last
/// client left" holds on a loaded machine, short enough to wait out.
const FAN_OUT_LINGER: Duration = Duration::from_secs(2);

async fn fan_out_numsub(url: String, cluster: bool) {
    let prefix = unique_prefix("ps-numsub");
    let store = RedisStore::builder(connect(&url, &prefix).await)
        .channel_capacity(1024)
        .linger(FAN_OUT_LINGER)
        .build();
    assert_eq!(store.is_sharded(), cluster);
    let pubsub = PubSub::new(store.clone());
    let app = router(SseEndpoint::new(pubsub.clone()));
    assert_eq!(numsub(cluster, &store, "crowd"), 0);
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(SseClient::connect(&app, "/events/crowd", None).await);
    }
    assert_eq!(numsub(cluster, &store, "crowd"), 1);
    let id = pubsub.publish("crowd", &json_n(7)).await.unwrap();
    for client in &mut clients {
        let (v, got) = client.next_json().await;
        assert_eq!((v["n"].as_i64(), got), (Some(7), id.to_string()));
    }
    // Still subscribed during the linger after the last client left, then not.
    drop(clients);
    assert_eq!(numsub(cluster, &store, "crowd"), 1);
    let s = store.clone();
    eventually("UNSUBSCRIBE after the linger", || {
        numsub(cluster, &s, "crowd") == 0
    })
    .await;
    assert_eq!(pubsub.store().active_channels(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_for_1000_clients_standalone() {
    fan_out_numsub(redtower_testkit::shared_url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sharded_subscription_for_1000_clients_cluster() {
    fan_out_numsub(redtower_testkit::shared_cluster().url(), true).await;
}

async fn keys_and_ttls(url: String, cluster: bool) {
    let prefix = unique_prefix("ps-keys");
    let store = RedisStore::builder(connect(&url, &prefix).await)
        .history_ttl(Duration::from_secs(120))
        .history_len(5)
        .build();
    let pubsub = PubSub::new(store.clone());
    for n in 1..=300 {
        pubsub
            .publish("user:alice:inbox", &json_n(n))
            .await
            .unwrap();
    }
    let ch = Channel::new("user:alice:inbox").unwrap();
    let (h, m) = (store.history_key(&ch), store.meta_key(&ch));
    assert_eq!(
        h.as_str(),
        format!("{prefix}:ps:{{user%3Aalice%3Ainbox}}:h")
    );
    assert_eq!(
        m.as_str(),
        format!("{prefix}:ps:{{user%3Aalice%3Ainbox}}:m")
    );
    assert_eq!(h.slot(), m.slot());
    assert_eq!(h.slot(), store.redis_channel(&ch).slot());
    let server = |key: &redtower_client::Key| {
        if cluster {
            redtower_testkit::shared_cluster().node_for_slot(key.slot())
        } else {
            redtower_testkit::shared()
        }
    };
    let node = server(&h);
    assert_eq!(
        node.cmd(&["TYPE", h.as_str()]).as_text().as_deref(),
        Some("stream")
    );
    for key in [&h, &m] {
        let ttl = node.cmd(&["PTTL", key.as_str()]).as_int().unwrap();
        assert!(ttl > 100_000 && ttl <= 120_000, "{key}: {ttl}");
    }
    // MAXLEN ~ 5: trimmed in whole macro nodes, so far fewer than 300 stay.
    let len = node.cmd(&["XLEN", h.as_str()]).as_int().unwrap();
    assert!((5..=205).contains(&len), "{len}");
    assert_eq!(
        node.cmd(&["HGET", m.as_str(), "o"]).as_text().as_deref(),
        Some("300")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keys_share_a_slot_and_expire_standalone() {
    keys_and_ttls(redtower_testkit::shared_url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keys_share_a_slot_and_expire_cluster() {
    keys_and_ttls(redtower_testkit::shared_cluster().url(), true).await;
}

async fn cross_instance(url: String) {
    let prefix = unique_prefix("ps-cross");
    let a = PubSub::new(store(&url, &prefix, Opts::default()).await);
    let b = PubSub::new(store(&url, &prefix, Opts::default()).await);
    let app_a = router(SseEndpoint::new(a.clone()));
    let app_b = router(SseEndpoint::new(b.clone()));
    let mut on_b = SseClient::connect(&app_b, "/events/shared", None).await;
    let mut on_a = SseClient::connect(&app_a, "/events/shared", None).await;
    let id = a.publish("shared", &json_n(1)).await.unwrap();
    assert_eq!(on_b.next_json().await.1, id.to_string());
    assert_eq!(on_a.next_json().await.1, id.to_string());
    let id = b.publish("shared", &json_n(2)).await.unwrap();
    assert_eq!(on_a.next_json().await.1, id.to_string());
    assert_eq!(on_b.next_json().await.1, id.to_string());
    // A client of B resumes from an id A handed out.
    let first = a.publish("shared", &json_n(3)).await.unwrap();
    a.publish("shared", &json_n(4)).await.unwrap();
    let mut resumed = SseClient::connect(&app_b, "/events/shared", Some(&first.to_string())).await;
    assert_eq!(resumed.next_ns(1).await, vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_instance_reaches_clients_of_another_standalone() {
    cross_instance(redtower_testkit::shared_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_instance_reaches_clients_of_another_cluster() {
    cross_instance(redtower_testkit::shared_cluster().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_or_lost_history_resyncs() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("ps-trim");
    let store = store(&url, &prefix, Opts::default()).await;
    let pubsub = PubSub::new(store.clone());
    let app = router(SseEndpoint::new(pubsub.clone()));
    let ch = Channel::new("t").unwrap();
    let server = redtower_testkit::shared();

    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(pubsub.publish("t", &json_n(n)).await.unwrap());
    }
    // Trimmed: the history lost 1..5.
    server.cmd(&["XTRIM", store.history_key(&ch).as_str(), "MAXLEN", "0"]);
    let mut client = SseClient::connect(&app, "/events/t", Some(&ids[1].to_string())).await;
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert!(resync.data.contains(r#""reason":"gap""#), "{}", resync.data);
    assert_eq!(resync.id, ids[4].to_string());
    // After the resync the stream goes on live.
    let six = pubsub.publish("t", &json_n(6)).await.unwrap();
    assert_eq!(client.next_json().await.1, six.to_string());

    // Lost: the whole history is gone, the next publish starts a new epoch.
    server.cmd(&[
        "DEL",
        store.meta_key(&ch).as_str(),
        store.history_key(&ch).as_str(),
    ]);
    let fresh = pubsub.publish("t", &json_n(7)).await.unwrap();
    assert_ne!(fresh.epoch(), six.epoch());
    assert_eq!(fresh.offset(), 1);
    // The live client sees the epoch change as a resync.
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert!(
        resync.data.contains(r#""reason":"epoch""#),
        "{}",
        resync.data
    );
    assert_eq!(resync.id, fresh.to_string());
    // And a reconnect with an id of the old epoch too.
    let mut client = SseClient::connect(&app, "/events/t", Some(&six.to_string())).await;
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert_eq!(resync.id, fresh.to_string());
}

/// The subscriber connection is killed: the hub resubscribes, and what was published while it
/// was down is replayed from the history, in order, without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_and_replays_after_client_kill() {
    let server = RedisServer::start();
    let prefix = unique_prefix("ps-kill");
    let hub = store(&server.url(), &prefix, Opts::default()).await;
    let pubsub = PubSub::new(hub.clone());
    let publisher = PubSub::new(store(&server.url(), &prefix, Opts::default()).await);
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut a = SseClient::connect(&app, "/events/k", None).await;
    let mut b = SseClient::connect(&app, "/events/k?channel=x", None).await;
    publisher.publish("k", &json_n(1)).await.unwrap();
    assert_eq!(a.next_ns(1).await, vec![1]);
    assert_eq!(b.next_ns(1).await, vec![1]);
    for round in 0..3 {
        let killed = server
            .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .as_int()
            .unwrap();
        assert!(killed >= 1);
        // Published at once, most likely before the subscriber is back.
        let base = 2 + round * 5;
        for n in base..base + 5 {
            publisher.publish("k", &json_n(n)).await.unwrap();
        }
        let want: Vec<i64> = (base..base + 5).collect();
        assert_eq!(a.next_ns(5).await, want);
        assert_eq!(b.next_ns(5).await, want);
    }
    let stats = hub.stats();
    assert!(stats.resubscribes >= 3, "{stats:?}");
    assert!(
        stats.repaired_events > 0,
        "nothing came from the history: {stats:?}"
    );
    assert_eq!(stats.lost, 0);
}

/// redis-server killed and restarted (AOF keeps the history): open streams stay open and get
/// later events, and the ones published before the hub resubscribed are replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_server_restart_with_aof() {
    let mut server = RedisServer::options().aof(true).start();
    let prefix = unique_prefix("ps-restart");
    let pubsub = PubSub::new(store(&server.url(), &prefix, Opts::default()).await);
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut client = SseClient::connect(&app, "/events/r", None).await;
    let first = pubsub.publish("r", &json_n(1)).await.unwrap();
    assert_eq!(client.next_ns(1).await, vec![1]);

    server.restart();
    // A second handle publishes as soon as Redis is back, racing the hub's resubscription.
    let publisher = PubSub::new(store(&server.url(), &prefix, Opts::default()).await);
    for n in 2..=4 {
        let id = publisher.publish("r", &json_n(n)).await.unwrap();
        assert_eq!(id.epoch(), first.epoch(), "AOF kept the history");
    }
    assert_eq!(client.next_ns(3).await, vec![2, 3, 4]);
    pubsub.publish("r", &json_n(5)).await.unwrap();
    assert_eq!(client.next_ns(1).await, vec![5]);
}

/// A new stream while Redis is down gets 503 with Retry-After, not a hung request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_redis_answers_503() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("ps-down");
    let redis = Redis::new(
        RedisConfig::from_url(&server.url())
            .unwrap()
            .key_prefix(prefix)
            .command_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    redis.wait_ready(WAIT).await.unwrap();
    let pubsub = PubSub::new(RedisStore::new(redis));
    let app = router(SseEndpoint::new(pubsub.clone()));
    server.kill();
    let client = SseClient::connect(&app, "/events/d", None).await;
    assert_eq!(client.status, 503);
    assert_eq!(client.headers["retry-after"], "5");
    let err = pubsub.publish("d", &1).await.unwrap_err();
    assert!(err.is_outage(), "{err}");
}

/// fred's pub/sub buffer overflows (a burst larger than `pubsub_buffer`): the hub notices the
/// `Lagged` and repairs the gap from the history, so clients still get every event in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_buffer_overflow_is_repaired_from_history() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("ps-lag");
    let redis = Redis::new(
        RedisConfig::from_url(&url)
            .unwrap()
            .key_prefix(&prefix)
            .pubsub_buffer(2),
    )
    .unwrap();
    redis.wait_ready(WAIT).await.unwrap();
    let lagging = RedisStore::builder(redis).linger(LINGER).build();
    let hub = PubSub::new(lagging.clone());
    let publisher = PubSub::new(store(&url, &prefix, Opts::default()).await);
    let app = router(SseEndpoint::new(hub.clone()));
    let mut client = SseClient::connect(&app, "/events/burst", None).await;
    // Concurrent publishes are pipelined, so their messages reach the subscriber in one burst.
    let publishes = (1..=300).map(|n| {
        let p = publisher.clone();
        async move { p.publish("burst", &json_n(n)).await.unwrap() }
    });
    let mut ids = futures::future::join_all(publishes).await;
    ids.sort_by_key(|id| id.offset());
    let mut offsets = Vec::new();
    for _ in 0..300 {
        let (_, id) = client.next_json().await;
        offsets.push(id.parse::<redtower_pubsub::EventId>().unwrap().offset());
    }
    assert_eq!(offsets, (1..=300).collect::<Vec<u64>>());
    let stats = lagging.stats();
    assert!(
        stats.lagged_messages > 0,
        "the burst did not overflow: {stats:?}"
    );
    assert!(stats.repaired_events > 0, "{stats:?}");
    assert_eq!(stats.lost, 0);
}

/// On a Cluster, the node holding the channel's slot kills the sharded subscription: the hub
/// subscribes again (`SSUBSCRIBE` to that node) and replays what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resubscribes_and_replays_after_client_kill() {
    let cluster = redtower_testkit::RedisCluster::start();
    let prefix = unique_prefix("ps-cluster-kill");
    let hub = store(&cluster.url(), &prefix, Opts::default()).await;
    assert!(hub.is_sharded());
    let pubsub = PubSub::new(hub.clone());
    let publisher = PubSub::new(store(&cluster.url(), &prefix, Opts::default()).await);
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut client = SseClient::connect(&app, "/events/ck", None).await;
    publisher.publish("ck", &json_n(1)).await.unwrap();
    assert_eq!(client.next_ns(1).await, vec![1]);
    let slot = hub.redis_channel(&Channel::new("ck").unwrap()).slot();
    for round in 0..2 {
        let killed = cluster
            .node_for_slot(slot)
            .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .as_int()
            .unwrap();
        assert!(killed >= 1);
        let base = 2 + round * 5;
        for n in base..base + 5 {
            publisher.publish("ck", &json_n(n)).await.unwrap();
        }
        assert_eq!(
            client.next_ns(5).await,
            (base..base + 5).collect::<Vec<_>>()
        );
    }
    let stats = hub.stats();
    assert!(stats.resubscribes >= 2, "{stats:?}");
    assert_eq!(stats.lost, 0);
}
