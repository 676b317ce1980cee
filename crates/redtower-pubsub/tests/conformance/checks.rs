//! Conformance checks: each written once, run on every backend by `conformance!`.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::Router;
use redtower_pubsub::{Access, CancellationToken, Channel, EventId, PubSub, SseEndpoint};

use super::{SseClient, WAIT, json_n};

/// Backend options a check may need.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub capacity: usize,
    pub history_len: usize,
    pub history_bytes: usize,
    pub max_payload: usize,
    pub max_channels: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            capacity: 256,
            history_len: 1000,
            history_bytes: 1024 * 1024,
            max_payload: 64 * 1024,
            max_channels: 10_000,
        }
    }
}

#[allow(unused_imports)]
pub use super::limits::*;

/// Builds a new store (on Redis: a new hub over the same Redis and key prefix).
pub type Make = Arc<dyn Fn(Opts) -> Pin<Box<dyn Future<Output = PubSub> + Send>> + Send + Sync>;

pub fn router(sse: SseEndpoint) -> Router {
    Router::new()
        .route("/events/{channel}", sse.method_router())
        .route("/events", sse.method_router())
}

async fn publish_ns(
    pubsub: &PubSub,
    channel: &str,
    ns: std::ops::RangeInclusive<i64>,
) -> Vec<EventId> {
    let mut ids = Vec::new();
    for n in ns {
        ids.push(pubsub.publish(channel, &json_n(n)).await.unwrap());
    }
    ids
}

/// Waits (bounded) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !f() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events 1..5 published; a client resuming from 2 gets exactly 3, 4, 5, then live 6.
pub async fn resume_replays_exactly_the_missed_events(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let ids = publish_ns(&pubsub, "room", 1..=5).await;
    assert_eq!(ids[1].offset() + 1, ids[2].offset());
    assert!(ids.iter().all(|id| id.epoch() == ids[0].epoch()));

    let mut client = SseClient::connect(&app, "/events/room", Some(&ids[1].to_string())).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.headers["content-type"], "text/event-stream");
    assert_eq!(client.headers["cache-control"], "no-cache");
    assert_eq!(client.headers["x-accel-buffering"], "no");
    let mut got = Vec::new();
    for _ in 0..3 {
        let (v, id) = client.next_json().await;
        got.push((v["n"].as_i64().unwrap(), id));
    }
    assert_eq!(
        got,
        vec![
            (3, ids[2].to_string()),
            (4, ids[3].to_string()),
            (5, ids[4].to_string())
        ]
    );
    let six = pubsub.publish("room", &json_n(6)).await.unwrap();
    let (v, id) = client.next_json().await;
    assert_eq!((v["n"].as_i64(), id), (Some(6), six.to_string()));

    // The query parameter works too (EventSource polyfills, pages that render state).
    let mut client = SseClient::connect(
        &app,
        &format!("/events/room?last_event_id={}", ids[3]),
        None,
    )
    .await;
    assert_eq!(client.next_ns(2).await, vec![5, 6]);
}

/// A client without a cursor gets live events only, with the ids `publish` returned.
pub async fn live_without_cursor(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    publish_ns(&pubsub, "live", 1..=3).await;
    let mut client = SseClient::connect(&app, "/events/live", None).await;
    let id = pubsub.publish("live", &json_n(4)).await.unwrap();
    let (v, got) = client.next_json().await;
    assert_eq!((v["n"].as_i64(), got), (Some(4), id.to_string()));
}

/// A client that connected to an empty channel resumes from its start (`id: 0`).
pub async fn resume_from_an_empty_channel(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    publish_ns(&pubsub, "fresh", 1..=2).await;
    let mut client = SseClient::connect(&app, "/events/fresh", Some("0")).await;
    assert_eq!(client.next_ns(2).await, vec![1, 2]);
}

/// Publishes racing the replay: no duplicate, no gap.
pub async fn publishes_racing_the_replay(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let ids = publish_ns(&pubsub, "race", 1..=50).await;
    let publisher = {
        let pubsub = pubsub.clone();
        tokio::spawn(async move { publish_ns(&pubsub, "race", 51..=150).await })
    };
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(SseClient::connect(&app, "/events/race", Some(&ids[9].to_string())).await);
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    for mut client in clients {
        let got = client.next_ns(140).await;
        assert_eq!(got, (11..=150).collect::<Vec<_>>());
    }
}

/// A cursor from another epoch (history lost) gets `resync` with the newest id, then live.
pub async fn new_epoch_resyncs(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let ids = publish_ns(&pubsub, "ep", 1..=3).await;
    let mut client = SseClient::connect(&app, "/events/ep", Some("otherEpoch:2")).await;
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert_eq!(resync.id, ids[2].to_string());
    let data: serde_json::Value = serde_json::from_str(&resync.data).unwrap();
    assert_eq!(data["reason"], "epoch");
    assert_eq!(data["channel"], "ep");
    publish_ns(&pubsub, "ep", 4..=4).await;
    assert_eq!(client.next_ns(1).await, vec![4]);

    // Garbage in Last-Event-ID: resync too, never an error status.
    let mut client = SseClient::connect(&app, "/events/ep", Some("not an id")).await;
    assert_eq!(client.status, 200);
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert!(resync.data.contains("invalid_id"));
}

/// More missing events than `max_replay`: resync, then live.
pub async fn too_far_behind_resyncs(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()).max_replay(2));
    let ids = publish_ns(&pubsub, "far", 1..=5).await;
    let mut client = SseClient::connect(&app, "/events/far", Some(&ids[0].to_string())).await;
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert_eq!(resync.id, ids[4].to_string());
    // Two missing events are within the limit.
    let mut client = SseClient::connect(&app, "/events/far", Some(&ids[2].to_string())).await;
    assert_eq!(client.next_ns(2).await, vec![4, 5]);
}

/// Several channels on one connection: envelopes, compound ids, compound resume.
pub async fn multi_channel(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut client = SseClient::connect(&app, "/events?channel=a&channel=b", None).await;
    let a1 = pubsub.publish("a", &json_n(1)).await.unwrap();
    let (v, id1) = client.next_json().await;
    assert_eq!(v, serde_json::json!({"channel": "a", "data": {"n": 1}}));
    assert_eq!(id1, format!("{a1},0"));
    let b1 = pubsub.publish("b", &json_n(2)).await.unwrap();
    let (v, id2) = client.next_json().await;
    assert_eq!(v["channel"], "b");
    assert_eq!(id2, format!("{a1},{b1}"));
    drop(client);

    // Missed one event on each; resume with the compound id.
    let a2 = pubsub.publish("a", &json_n(3)).await.unwrap();
    pubsub.publish("b", &json_n(4)).await.unwrap();
    let mut client = SseClient::connect(&app, "/events?channel=a&channel=b", Some(&id1)).await;
    let (v1, _) = client.next_json().await;
    let (v2, _) = client.next_json().await;
    let (v3, last) = client.next_json().await;
    assert_eq!(
        (v1["data"]["n"].as_i64(), v1["channel"].as_str()),
        (Some(3), Some("a"))
    );
    assert_eq!(v2["data"]["n"].as_i64(), Some(2));
    assert_eq!(v3["data"]["n"].as_i64(), Some(4));
    assert!(last.starts_with(&format!("{a2},")));
}

/// Forbidden channel: 403; bad names: 400; and no subscription was created.
pub async fn auth_and_validation(make: Make) {
    let pubsub = make(Opts::default()).await;
    let sse = SseEndpoint::new(pubsub.clone()).authorizer(
        |_: &http::request::Parts, ch: &Channel, access: Access| {
            access == Access::Subscribe && !ch.as_str().starts_with("secret")
        },
    );
    let app = router(sse);
    for (uri, status) in [
        ("/events/secret", 403),
        ("/events?channel=ok&channel=secret2", 403),
        ("/events/a%20b", 400),
        ("/events/a%7Bb%7D", 400),
        (&*format!("/events/{}", "x".repeat(200)), 400),
        ("/events?channel=", 400),
        ("/events", 400),
    ] {
        let client = SseClient::connect(&app, uri, None).await;
        assert_eq!(client.status, status, "{uri}: {}", client.body_text);
    }
    let many: String = (0..20).map(|i| format!("channel=c{i}&")).collect();
    let client = SseClient::connect(&app, &format!("/events?{many}"), None).await;
    assert_eq!(client.status, 400);
    assert_eq!(pubsub.store().active_channels(), 0);
    let ok = SseClient::connect(&app, "/events/public", None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(pubsub.store().active_channels(), 1);
}

/// A client that does not read falls behind the broadcast: the others are not delayed, and it
/// is caught up from the history when it reads again.
pub async fn slow_consumer_is_caught_up(make: Make) {
    let pubsub = make(Opts {
        capacity: 4,
        ..Opts::default()
    })
    .await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut slow = SseClient::connect(&app, "/events/slow", None).await;
    let mut fast = SseClient::connect(&app, "/events/slow", None).await;
    let reader = tokio::spawn(async move { fast.next_ns(30).await });
    publish_ns(&pubsub, "slow", 1..=30).await;
    // The fast client got everything while the slow one read nothing.
    assert_eq!(reader.await.unwrap(), (1..=30).collect::<Vec<_>>());
    assert_eq!(slow.next_ns(30).await, (1..=30).collect::<Vec<_>>());
    publish_ns(&pubsub, "slow", 31..=31).await;
    assert_eq!(slow.next_ns(1).await, vec![31]);
}

/// A slow client further behind than the history can give back: resync, and its stream ends.
pub async fn slow_consumer_beyond_history_resyncs(make: Make) {
    let pubsub = make(Opts {
        capacity: 4,
        ..Opts::default()
    })
    .await;
    let app = router(SseEndpoint::new(pubsub.clone()).max_replay(10));
    let mut slow = SseClient::connect(&app, "/events/slower", None).await;
    publish_ns(&pubsub, "slower", 1..=30).await;
    let events = slow.rest().await;
    let last = events.last().expect("a resync");
    assert_eq!(last.event, "resync", "{events:?}");
    assert!(last.data.contains("gap"));
    let latest = pubsub.latest("slower").await.unwrap().unwrap();
    assert_eq!(last.id, latest.to_string());
}

/// Open streams end promptly when the shutdown token is cancelled.
pub async fn shutdown_ends_streams(make: Make) {
    let pubsub = make(Opts::default()).await;
    let token = CancellationToken::new();
    let app = router(SseEndpoint::new(pubsub.clone()).shutdown(token.clone()));
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(SseClient::connect(&app, &format!("/events/s{}", i % 3), None).await);
    }
    token.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        for client in &mut clients {
            client.rest().await;
        }
    })
    .await;
    assert!(ended.is_ok(), "streams still open 1 s after shutdown");
}

/// 1,000 local clients on one channel share one subscription; it goes away after the last
/// leaves (and the linger).
pub async fn fan_out_shares_one_subscription(make: Make) {
    let pubsub = make(Opts {
        capacity: 1024,
        ..Opts::default()
    })
    .await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(SseClient::connect(&app, "/events/fan", None).await);
    }
    assert_eq!(pubsub.store().active_channels(), 1);
    let id = pubsub.publish("fan", &json_n(1)).await.unwrap();
    for client in &mut clients {
        let (v, got) = client.next_json().await;
        assert_eq!((v["n"].as_i64(), got.as_str()), (Some(1), &*id.to_string()));
    }
    drop(clients);
    let store = pubsub.clone();
    eventually("the subscription to end", || {
        store.store().active_channels() == 0
    })
    .await;
}

/// `POST /events/{channel}` publishes the JSON body: 202 `{"id"}`; 403 when the authorizer
/// refuses publishing, 400 on bad names or bodies; stream clients get the event.
pub async fn publish_route(make: Make) {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    let pubsub = make(Opts::default()).await;
    let sse = SseEndpoint::new(pubsub.clone()).authorizer(
        |_: &http::request::Parts, ch: &Channel, access: Access| {
            access == Access::Subscribe || ch.as_str() != "readonly"
        },
    );
    let app = Router::new().route(
        "/events/{channel}",
        sse.method_router().merge(sse.publish_method_router()),
    );
    let mut client = SseClient::connect(&app, "/events/post", None).await;
    let post = |uri: &str, body: &str| {
        Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let response = app
        .clone()
        .oneshot(post("/events/post", r#"{"n": 1}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = reply["id"].as_str().unwrap().to_owned();
    let (v, got) = client.next_json().await;
    assert_eq!((v, got), (json_n(1), id));
    for (uri, body, status) in [
        ("/events/readonly", r#"{"n": 1}"#, 403),
        ("/events/a%20b", r#"{"n": 1}"#, 400),
        ("/events/post", "not json", 400),
    ] {
        let response = app.clone().oneshot(post(uri, body)).await.unwrap();
        assert_eq!(response.status(), status, "{uri} {body}");
    }
    // The refused publish left nothing behind.
    assert_eq!(pubsub.latest("readonly").await.unwrap(), None);
}

/// A W3C trace context published with an event comes back with it, live and from the
/// history; an event published without one has none.
pub async fn trace_context_travels_with_events(make: Make) {
    use redtower_client::TraceContext;
    use redtower_pubsub::{PublishToken, Received, Replay};

    let pubsub = make(Opts::default()).await;
    let channel = Channel::new("traced-events").unwrap();
    let mut sub = pubsub.subscribe(channel.as_str()).await.unwrap();
    let cx = TraceContext::new(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("rojo=00f067aa0ba902b7,congo=a;b:c"),
    )
    .unwrap();
    let first = pubsub
        .store()
        .publish_traced(&channel, Arc::from("1"), &PublishToken::random(), Some(&cx))
        .await
        .unwrap();
    let second = pubsub.publish(channel.as_str(), &2).await.unwrap();
    for (id, want) in [(&first, Some(&cx)), (&second, None)] {
        match tokio::time::timeout(WAIT, sub.recv()).await.unwrap() {
            Received::Event(event) => {
                assert_eq!(event.id(), id);
                assert_eq!(event.trace_context(), want, "live event {id}");
            }
            other => panic!("{other:?}"),
        }
    }
    let before = EventId::new(first.epoch(), first.offset() - 1).unwrap();
    match pubsub.replay(channel.as_str(), &before, 10).await.unwrap() {
        Replay::Events(events) => {
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].trace_context(), Some(&cx));
            assert_eq!(events[0].data(), "1");
            assert_eq!(events[1].trace_context(), None);
        }
        other => panic!("{other:?}"),
    }
}
