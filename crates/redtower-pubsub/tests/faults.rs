//! Faults on the wire and at boot, on real servers: a publish whose reply is lost (through
//! redtower-testkit's `FaultProxy`) makes one event; a chaos loop of 10,000 publishes with lost
//! replies and connection resets leaves unique ids, no duplicate payloads and a reader that
//! resumes without gaps; and 50 fresh clients publish and subscribe the moment they are built.

mod conformance;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use conformance::{SseClient, WAIT, checks::router, json_n};
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{
    Channel, EventId, PubSub, PublishToken, Received, RedisStore, Replay, SseEndpoint,
};
use redtower_testkit::{FaultProxy, RedisServer, unique_prefix};

/// A client through the proxy that reconnects quickly (the chaos resets often).
async fn client(url: &str, prefix: &str) -> Redis {
    let config = RedisConfig::from_url(url)
        .unwrap()
        .key_prefix(prefix)
        .reconnect_delay(Duration::from_millis(5), Duration::from_millis(100))
        .reconnect_jitter(Duration::from_millis(10));
    let redis = Redis::new(config).unwrap();
    redis.wait_ready(WAIT).await.unwrap();
    redis
}

fn xlen(server: &RedisServer, store: &RedisStore, channel: &Channel) -> i64 {
    let key = store.history_key(channel);
    server.cmd(&["XLEN", key.as_str()]).as_int().unwrap()
}

/// 20 publishes, each with its reply lost once (the script ran; the client re-sent it on a
/// new connection): 20 events in the history, one per publish, at the ids the calls returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_reply_is_lost_makes_one_event() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let store = RedisStore::new(client(&proxy.url(), &unique_prefix("ps-lost")).await);
    let pubsub = PubSub::new(store.clone());
    let channel = Channel::new("lost").unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        proxy.lose_next_reply();
        ids.push(pubsub.publish("lost", &json_n(n)).await.unwrap());
    }
    assert_eq!(proxy.lost_replies(), 20);
    assert_eq!(xlen(&server, &store, &channel), 20, "no duplicate event");
    let offsets: Vec<u64> = ids.iter().map(EventId::offset).collect();
    assert_eq!(
        offsets,
        (1..=20).collect::<Vec<_>>(),
        "each call got its first id"
    );
    let start = EventId::new(ids[0].epoch(), 0).unwrap();
    let Replay::Events(events) = pubsub.replay("lost", &start, 100).await.unwrap() else {
        panic!("history lost");
    };
    for (n, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(event.id(), id);
        assert_eq!(event.json::<serde_json::Value>().unwrap(), json_n(n as i64));
    }
}

const CHAOS_PUBLISHES: i64 = 10_000;
const PUBLISHERS: i64 = 8;

/// 10,000 publishes from 8 tasks through a proxy that loses one reply in 50 and resets every
/// connection every ~300 ms; each failed publish is retried by the caller with its token. An
/// SSE reader on another store (also through the proxy; its streams end every second and
/// resume from `Last-Event-ID`) reads along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_publishes_stay_unique_and_readers_resume_without_gaps() {
    let server = RedisServer::start();
    let proxy = Arc::new(FaultProxy::start(server.port()).unwrap());
    let prefix = unique_prefix("ps-chaos");
    let build = |redis| {
        RedisStore::builder(redis)
            .history_len(20_000)
            .history_bytes(64 << 20)
            .channel_capacity(4096)
            .build()
    };
    let store = build(client(&proxy.url(), &prefix).await);
    let reader_store = build(client(&proxy.url(), &prefix).await);
    let pubsub = PubSub::new(store.clone());
    let channel = Channel::new("chaos").unwrap();
    let started = Instant::now();

    // The reader: from the start of the channel, resuming after every end of stream.
    let sse = SseEndpoint::new(PubSub::new(reader_store.clone()))
        .max_lifetime(Duration::from_secs(1))
        .max_replay(20_000)
        .max_replay_bytes(64 << 20);
    let app = router(sse);
    let reader = tokio::spawn(async move {
        let mut last = "0".to_owned();
        let mut seen: Vec<(u64, i64)> = Vec::new();
        let (mut opens, mut refused) = (0u64, 0u64);
        while (seen.len() as i64) < CHAOS_PUBLISHES {
            let mut client = SseClient::connect(&app, "/events/chaos", Some(&last)).await;
            opens += 1;
            if client.status != 200 {
                assert_eq!(client.status, 503, "{}", client.body_text);
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            while let Some(event) = client.next().await {
                assert_eq!(event.event, "message", "a gap: {event:?} after {last}");
                let id: EventId = event.id.parse().unwrap();
                let expected = seen.last().map_or(1, |(o, _)| o + 1);
                assert_eq!(id.offset(), expected, "in order, without gaps");
                let v: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                seen.push((id.offset(), v["n"].as_i64().unwrap()));
                last = event.id;
            }
        }
        (seen, opens, refused)
    });

    let resets = proxy.reset_every(Duration::from_millis(300));
    proxy.lose_replies(1, 50);
    let retries = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (pubsub, channel, retries) = (pubsub.clone(), channel.clone(), retries.clone());
        publishers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (p..CHAOS_PUBLISHES).step_by(PUBLISHERS as usize) {
                let token = PublishToken::random();
                let data = json_n(n).to_string();
                let mut attempt = 0;
                let id = loop {
                    match pubsub
                        .publish_json_with(&channel, data.clone(), &token)
                        .await
                    {
                        Ok(id) => break id,
                        Err(error) => {
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            assert!(attempt < 100, "publish keeps failing: {error}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                };
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for publisher in publishers {
        ids.extend(publisher.await.unwrap());
    }
    let published_in = started.elapsed();
    resets.stop();
    proxy.lose_replies(0, 0);
    let (lost, resets) = (proxy.lost_replies(), proxy.resets());

    let unique: BTreeSet<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        unique.len(),
        CHAOS_PUBLISHES as usize,
        "every event id is unique"
    );
    assert_eq!(
        xlen(&server, &store, &channel),
        CHAOS_PUBLISHES,
        "no duplicate event"
    );
    let key = store.history_key(&channel);
    let entries = server.cmd(&["XRANGE", key.as_str(), "-", "+"]).into_array();
    let payloads: BTreeSet<String> = entries
        .into_iter()
        .map(|e| e.into_array()[1].clone().into_array()[1].as_text().unwrap())
        .collect();
    let expected: BTreeSet<String> = (0..CHAOS_PUBLISHES)
        .map(|n| json_n(n).to_string())
        .collect();
    assert_eq!(payloads, expected, "each payload exactly once");

    let (seen, opens, refused) = tokio::time::timeout(Duration::from_secs(40), reader)
        .await
        .expect("the reader caught up")
        .unwrap();
    let got: BTreeSet<i64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        got.len(),
        CHAOS_PUBLISHES as usize,
        "the reader saw every event once"
    );
    let stats = reader_store.stats();
    eprintln!(
        "chaos: {CHAOS_PUBLISHES} publishes by {PUBLISHERS} tasks in {published_in:?}; \
         {lost} replies lost, {resets} resets, {} caller retries; duplicates 0, losses 0; \
         reader: {} events over {opens} opens ({refused} refused while Redis was away), \
         hub {stats:?}; total {:?}",
        retries.load(Ordering::Relaxed),
        seen.len(),
        started.elapsed()
    );
    assert!(lost > 50, "the chaos happened: {lost} lost replies");
}

/// A fresh `Redis` handle and store, used at once (no wait for the connection): the first
/// subscribe, publish and SSE open work, 50 times in a row.
async fn boot_window(url: String) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("redtower=warn")
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    for n in 0..50 {
        let prefix = unique_prefix("ps-boot");
        let redis = Redis::new(RedisConfig::from_url(&url).unwrap().key_prefix(prefix)).unwrap();
        let pubsub = PubSub::new(RedisStore::new(redis.clone()));
        let mut sub = pubsub.subscribe("boot").await.expect("first subscribe");
        let id = pubsub
            .publish("boot", &json_n(n))
            .await
            .expect("first publish");
        assert_eq!(id.offset(), 1);
        match tokio::time::timeout(WAIT, sub.recv()).await.unwrap() {
            Received::Event(event) => assert_eq!(event.id(), &id),
            other => panic!("{other:?}"),
        }
        // And a stream opened on another fresh handle resumes from the start.
        let redis2 = Redis::new(
            RedisConfig::from_url(&url)
                .unwrap()
                .key_prefix(redis.keyspace().prefix()),
        )
        .unwrap();
        let app = router(SseEndpoint::new(PubSub::new(RedisStore::new(
            redis2.clone(),
        ))));
        let mut client = SseClient::connect(&app, "/events/boot", Some("0")).await;
        assert_eq!(client.status, 200, "{}", client.body_text);
        assert_eq!(client.next_json().await, (json_n(n), id.to_string()));
        drop((sub, pubsub, client, app));
        redis.quit().await;
        redis2.quit().await;
    }
    eprintln!("boot window: 50 fresh clients in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clients_publish_and_subscribe_at_once_standalone() {
    boot_window(redtower_testkit::shared_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clients_publish_and_subscribe_at_once_cluster() {
    boot_window(redtower_testkit::shared_cluster().url()).await;
}

/// New-channel subscriptions do not wait for each other's Redis round trips: with 200 ms
/// added each way on every connection, 20 subscriptions to new channels at once finish in
/// a few round trips, not 20 x 2 (subscribe, then read the newest id) in a row (>= 16 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_channels_subscribe_concurrently() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let store = RedisStore::new(client(&proxy.url(), &unique_prefix("ps-concurrent")).await);
    let pubsub = PubSub::new(store);
    // Connect the subscriber before the latency starts.
    drop(pubsub.subscribe("warm").await.unwrap());
    proxy.set(redtower_testkit::Fault::Latency(Duration::from_millis(200)));
    let started = Instant::now();
    let subs = futures::future::join_all((0..20).map(|i| {
        let pubsub = pubsub.clone();
        async move { pubsub.subscribe(format!("new{i}")).await.unwrap() }
    }))
    .await;
    let took = started.elapsed();
    proxy.set(redtower_testkit::Fault::PassThrough);
    eprintln!("20 new channels subscribed at once through 200 ms latency in {took:?}");
    assert_eq!(subs.len(), 20);
    assert!(
        took < Duration::from_secs(8),
        "subscriptions were serialized: {took:?}"
    );
}
