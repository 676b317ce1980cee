//! Hostile input against the Redis backend, measured on a dedicated server: cursors that
//! cannot be resumed cost no history read (`INFO commandstats`), and floods of publishes and
//! random channels leave Redis memory (`INFO memory`, `MEMORY USAGE`) and subscriptions
//! (`PUBSUB CHANNELS`) bounded.

mod conformance;

use std::time::Duration;

use conformance::{SseClient, WAIT, checks::router, json_n};
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{Channel, PubSub, PubSubStore, PublishToken, RedisStore, SseEndpoint};
use redtower_testkit::{RedisServer, unique_prefix};

async fn connect(server: &RedisServer, test: &str) -> Redis {
    let config = RedisConfig::from_url(&server.url())
        .unwrap()
        .key_prefix(unique_prefix(test));
    let redis = Redis::new(config).unwrap();
    redis.wait_ready(WAIT).await.unwrap();
    redis
}

/// A field of `INFO <section>`, e.g. `cmdstat_xrange` (its `calls=`) or `used_memory`.
fn info(server: &RedisServer, section: &str, field: &str) -> u64 {
    let text = server.cmd(&["INFO", section]).as_text().unwrap();
    let Some(line) = text.lines().find(|l| l.starts_with(&format!("{field}:"))) else {
        return 0;
    };
    let value = &line[field.len() + 1..];
    let value = value
        .split(',')
        .find_map(|kv| kv.strip_prefix("calls="))
        .unwrap_or(value);
    value.trim().parse().unwrap()
}

fn xrange_calls(server: &RedisServer) -> u64 {
    info(server, "commandstats", "cmdstat_xrange")
}

/// `Last-Event-ID: x:0` (another epoch), `0` and an old epoch on a channel with more events
/// than `max_replay`, the right epoch too far behind, and offsets beyond the newest: each
/// stream resyncs, and the history stream is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_cursors_cost_no_history_read() {
    let server = RedisServer::start();
    let store = RedisStore::builder(connect(&server, "ps-amp").await)
        .history_len(2000)
        .build();
    let pubsub = PubSub::new(store);
    let mut latest = None;
    for n in 0..1000 {
        latest = Some(pubsub.publish("amp", &json_n(n)).await.unwrap());
    }
    let latest = latest.unwrap();
    let epoch = latest.epoch().to_owned();
    let app = router(SseEndpoint::new(pubsub.clone()).max_replay(500));
    let before = xrange_calls(&server);
    let cursors = [
        "x:0".to_owned(),
        "0".to_owned(),
        "wrongEpoch:999".to_owned(),
        format!("{epoch}:0"),
        format!("{epoch}:499"),
        format!("{epoch}:1001"),
        format!("{epoch}:18446744073709551615"),
        "x:18446744073709551615".to_owned(),
    ];
    for _ in 0..20 {
        for cursor in &cursors {
            let mut client = SseClient::connect(&app, "/events/amp", Some(cursor)).await;
            assert_eq!(client.status, 200);
            let event = client.next().await.unwrap();
            assert_eq!(event.event, "resync", "{cursor}");
            assert_eq!(event.id, latest.to_string());
        }
    }
    let after = xrange_calls(&server);
    eprintln!(
        "resume amplification: {} opens with unusable cursors, {} XRANGE calls",
        20 * cursors.len(),
        after - before
    );
    assert_eq!(after, before, "no history read for an unusable cursor");
    // A valid resume point does read (the counter works).
    let mut client = SseClient::connect(&app, "/events/amp", Some(&format!("{epoch}:995"))).await;
    assert_eq!(client.next_ns(5).await, vec![995, 996, 997, 998, 999]);
    assert!(xrange_calls(&server) > before);
}

/// Bounded loops of hostile traffic on a dedicated server:
/// * 3,000 publishes of 1 KB on one channel: its history stays within `history_bytes`
///   (`XLEN`, `MEMORY USAGE`);
/// * 3,000 SSE opens of random channel names (each closed at once) with `max_channels` 100:
///   never more than 100 Redis subscriptions, and no key is written;
/// * 2,000 publishes on random channels: each channel's keys expire, and publish tokens live
///   no longer than two dedup windows;
/// and `used_memory` grows by less than 8 MiB overall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_keep_redis_memory_bounded() {
    let server = RedisServer::start();
    let window = Duration::from_secs(30);
    let store = RedisStore::builder(connect(&server, "ps-flood").await)
        .history_len(1000)
        .history_bytes(64 * 1024)
        .max_channels(100)
        .publish_dedup_window(window)
        .linger(Duration::from_millis(50))
        .build();
    let pubsub = PubSub::new(store.clone());
    let memory_before = info(&server, "memory", "used_memory");

    // One channel, a flood of publishes.
    let big = serde_json::json!({ "p": "x".repeat(1016) }); // 1024 bytes of data
    for _ in 0..3000 {
        pubsub.publish("hot", &big).await.unwrap();
    }
    let hot = Channel::new("hot").unwrap();
    let history = store.history_key(&hot);
    let xlen = server.cmd(&["XLEN", history.as_str()]).as_int().unwrap();
    let usage = server
        .cmd(&["MEMORY", "USAGE", history.as_str()])
        .as_int()
        .unwrap();
    assert_eq!(xlen, 64, "64 KiB of 1 KiB events");
    assert!(usage < 160 * 1024, "history of one channel: {usage} bytes");

    let after_hot = info(&server, "memory", "used_memory");

    // A flood of random channel names through the SSE endpoint.
    let keys_before = server.cmd(&["DBSIZE"]).as_int().unwrap();
    let app = router(SseEndpoint::new(pubsub.clone()));
    let (mut ok, mut refused, mut max_subs) = (0, 0, 0);
    for i in 0..3000 {
        let name = format!("r{i}{}", &PublishToken::random().as_str()[..10]);
        let client = SseClient::connect(&app, &format!("/events/{name}"), None).await;
        match client.status.as_u16() {
            200 => ok += 1,
            503 => refused += 1,
            other => panic!("{other}: {}", client.body_text),
        }
        drop(client);
        if i % 50 == 0 {
            let subs = server.cmd(&["PUBSUB", "CHANNELS"]).into_array().len();
            max_subs = max_subs.max(subs);
            assert!(subs <= 100, "{subs} Redis subscriptions");
            assert!(store.active_channels() <= 100);
        }
    }
    assert_eq!(
        server.cmd(&["DBSIZE"]).as_int().unwrap(),
        keys_before,
        "reading writes no key"
    );

    let after_subs = info(&server, "memory", "used_memory");

    // Publishes on random channels: keys with TTLs, tokens within two windows.
    for i in 0..2000 {
        pubsub.publish(format!("p{i}"), &json_n(i)).await.unwrap();
    }
    let ch = Channel::new("p7").unwrap();
    for key in [store.history_key(&ch), store.meta_key(&ch)] {
        let ttl = server.cmd(&["PTTL", key.as_str()]).as_int().unwrap();
        assert!(ttl > 0, "{key:?} expires");
    }
    // The tokens of the last window: one hash field each, expiring within two windows.
    let tag = store.redis_channel(&hot);
    let window_ms = i64::try_from(window.as_millis()).unwrap();
    let mut fields = 0;
    for generation in ["t", "u"] {
        let key = format!("{}:{generation}", tag.as_str());
        fields += server.cmd(&["HLEN", &key]).as_int().unwrap();
        let ttl = server.cmd(&["PTTL", &key]).as_int().unwrap();
        assert!(
            ttl == -2 || (ttl > 0 && ttl <= 2 * window_ms),
            "{key}: {ttl} ms"
        );
    }
    assert_eq!(fields, 3000, "one token per publish within the window");
    let usage_of = |key: &str| server.cmd(&["MEMORY", "USAGE", key]).as_int().unwrap_or(0);
    let hot_tokens =
        usage_of(&format!("{}:t", tag.as_str())) + usage_of(&format!("{}:u", tag.as_str()));
    let p7 = store.redis_channel(&ch);
    let per_channel: Vec<i64> = ["h", "m", "t"]
        .iter()
        .map(|part| usage_of(&format!("{}:{part}", p7.as_str())))
        .collect();
    eprintln!(
        "tokens of the hot channel: {hot_tokens} B; one new channel's keys (h, m, t): {per_channel:?} B"
    );
    let ttl = server
        .cmd(&["PTTL", &format!("{}:t", store.redis_channel(&ch).as_str())])
        .as_int()
        .unwrap();
    assert!(ttl > 0 && ttl <= 2 * window_ms, "{ttl} ms");

    let memory_after = info(&server, "memory", "used_memory");
    let hot_grown = after_hot.saturating_sub(memory_before);
    let subs_grown = after_subs.saturating_sub(after_hot);
    let random_grown = memory_after.saturating_sub(after_subs);
    eprintln!(
        "floods: hot channel {xlen} entries / {usage} B after 3000 x 1 KiB (used_memory \
         +{hot_grown} B with 3000 tokens); random channels {ok} opened, {refused} refused, \
         at most {max_subs} Redis subscriptions (limit 100), used_memory +{subs_grown} B; \
         2000 publishes on random channels, used_memory +{random_grown} B \
         ({} B per channel)",
        random_grown / 2000
    );
    // 3 MB of data went in; the history keeps 64 KiB, each token a hash field.
    assert!(hot_grown < 1 << 20, "hot channel: {hot_grown} B");
    // Subscribing writes nothing; the subscriptions are bounded.
    assert!(subs_grown < 1 << 20, "random subscriptions: {subs_grown} B");
    // Each new channel costs its three small keys (stream, meta, token).
    assert!(
        random_grown < 2000 * 8 * 1024,
        "random channels: {random_grown} B"
    );
}
