//! Conformance checks for retry safety, limits and hostile input: each drives the case with a
//! bounded loop and asserts the bound, on every backend.

use std::time::Duration;

use axum::{Router, body::Body, http::Request};
use http::request::Parts;
use redtower_pubsub::{
    AllowAll, Channel, Error, EventId, PubSub, PublishToken, Received, Replay, ReplayLimit,
    ServerOwned, SseEndpoint, StreamOptions,
};
use tower::ServiceExt;

use super::{
    SseClient, WAIT,
    checks::{Make, Opts, eventually, router},
    json_n,
};

async fn recv(sub: &mut redtower_pubsub::Subscription) -> Received {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("no delivery within the wait bound")
}

/// The same publish token twice: one event, and both calls return its id.
pub async fn publish_token_returns_the_first_event(make: Make) {
    let pubsub = make(Opts::default()).await;
    let ch = Channel::new("tok").unwrap();
    let mut sub = pubsub.subscribe("tok").await.unwrap();
    let token = PublishToken::random();
    let first = pubsub
        .publish_json_with(&ch, r#"{"n":1}"#, &token)
        .await
        .unwrap();
    let again = pubsub
        .publish_json_with(&ch, r#"{"n":1}"#, &token)
        .await
        .unwrap();
    assert_eq!(first, again);
    let second = pubsub.publish_json(&ch, r#"{"n":2}"#).await.unwrap();
    assert_eq!(
        second.offset(),
        first.offset() + 1,
        "no event at a new offset"
    );
    for (n, id) in [(1, &first), (2, &second)] {
        match recv(&mut sub).await {
            Received::Event(e) => assert_eq!(
                (e.json::<serde_json::Value>().unwrap(), e.id()),
                (json_n(n), id)
            ),
            other => panic!("{other:?}"),
        }
    }
    let start = EventId::new(first.epoch(), 0).unwrap();
    match pubsub.replay("tok", &start, 100).await.unwrap() {
        Replay::Events(events) => assert_eq!(events.len(), 2),
        gap => panic!("{gap:?}"),
    }
}

/// Offsets whose replay succeeds are exactly the last `n` kept.
async fn kept(pubsub: &PubSub, channel: &str) -> usize {
    let latest = pubsub.latest(channel).await.unwrap().unwrap();
    let mut n = 0;
    while n < latest.offset() {
        let after = EventId::new(latest.epoch(), latest.offset() - n - 1).unwrap();
        match pubsub.replay(channel, &after, usize::MAX).await.unwrap() {
            Replay::Events(events) => assert_eq!(events.len() as u64, n + 1),
            Replay::Gap { .. } => break,
            other => panic!("{other:?}"),
        }
        n += 1;
    }
    usize::try_from(n).unwrap()
}

/// 200 publishes per channel: the history keeps at most `history_len` events and
/// `history_bytes` bytes, the newest ones.
pub async fn history_is_bounded_by_count_and_bytes(make: Make) {
    let pubsub = make(Opts {
        history_len: 10,
        history_bytes: 2000,
        ..Opts::default()
    })
    .await;
    for n in 0..200 {
        pubsub.publish("small", &json_n(n)).await.unwrap();
        // 496 bytes of data each: 4 fit in 2000 bytes.
        pubsub
            .publish("big", &serde_json::json!({ "p": "x".repeat(488) }))
            .await
            .unwrap();
    }
    assert_eq!(kept(&pubsub, "small").await, 10, "bounded by count");
    assert_eq!(kept(&pubsub, "big").await, 4, "bounded by bytes");
    // One event larger than the byte bound still stays (the newest always does).
    pubsub
        .publish("huge", &serde_json::json!({ "p": "x".repeat(3000) }))
        .await
        .unwrap();
    assert_eq!(kept(&pubsub, "huge").await, 1);
}

/// Data over the payload limit is refused (the publish route answers 413); nothing is stored.
pub async fn payload_limit(make: Make) {
    let pubsub = make(Opts {
        max_payload: 100,
        ..Opts::default()
    })
    .await;
    // `"xx..x"`: 98 + 2 quotes = 100 bytes.
    pubsub.publish("p", &"x".repeat(98)).await.unwrap();
    let before = pubsub.latest("p").await.unwrap();
    for _ in 0..50 {
        match pubsub.publish("p", &"x".repeat(99)).await {
            Err(Error::PayloadTooLarge { len: 101, max: 100 }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pubsub.latest("p").await.unwrap(), before);
    let sse = SseEndpoint::new(pubsub.clone());
    let app = Router::new().route("/events/{channel}", sse.publish_method_router());
    let body = serde_json::to_string(&"x".repeat(200)).unwrap();
    let response = app
        .oneshot(
            Request::post("/events/p")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(pubsub.latest("p").await.unwrap(), before);
}

/// At the channel limit a new channel is refused (`503` + `Retry-After` on the endpoint)
/// while held ones go on; a flood of 500 short-lived random channels never holds more than the
/// limit, and a normal reader gets in after it.
pub async fn channel_limit_and_flood(make: Make) {
    const MAX: usize = 8;
    let pubsub = make(Opts {
        max_channels: MAX,
        ..Opts::default()
    })
    .await;
    let mut held = Vec::new();
    for i in 0..MAX {
        held.push(pubsub.subscribe(format!("held{i}")).await.unwrap());
    }
    match pubsub.subscribe("one-more").await {
        Err(Error::TooManyChannels { max: MAX }) => {}
        other => panic!("{other:?}"),
    }
    let app = router(SseEndpoint::new(pubsub.clone()));
    let refused = SseClient::connect(&app, "/events/one-more", None).await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    // Held channels still take more subscribers.
    let _more = pubsub.subscribe("held0").await.unwrap();
    drop((held, _more));

    let mut admitted = 0;
    for i in 0..500 {
        let name = format!("flood-{i}-{}", rand_suffix());
        match pubsub.subscribe(&name).await {
            Ok(sub) => {
                admitted += 1;
                drop(sub);
            }
            Err(Error::TooManyChannels { .. }) => {}
            Err(other) => panic!("{other}"),
        }
        assert!(pubsub.store().active_channels() <= MAX);
    }
    eprintln!("channel flood: 500 random channels, {admitted} admitted, limit {MAX}");
    assert!(
        admitted >= 250,
        "idle channels are released at the limit: {admitted}"
    );
    let started = tokio::time::Instant::now();
    let _normal = loop {
        match pubsub.subscribe("normal").await {
            Ok(sub) => break sub,
            Err(Error::TooManyChannels { .. }) if started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("a normal reader did not get in: {other}"),
        }
    };
    assert!(pubsub.store().active_channels() <= MAX);
}

fn rand_suffix() -> String {
    PublishToken::random().as_str()[..8].to_owned()
}

fn keyed(app: &Router, uri: &str, user: Option<&str>) -> impl Future<Output = SseClient> {
    let mut req = Request::get(uri);
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let app = app.clone();
    async move { SseClient::send(&app, req.body(Body::empty()).unwrap()).await }
}

/// Streams per client key (429 + `Retry-After`) and per process (503 + `Retry-After`); a
/// closed stream frees its place; a flood of 300 opens by one client holds at most its limit.
pub async fn connection_limits(make: Make) {
    let pubsub = make(Opts::default()).await;
    let sse = SseEndpoint::new(pubsub.clone())
        .max_connections(5)
        .max_connections_per_client(2)
        .on_open(
            |req: &Parts, _: &[Channel]| match req.headers.get("x-user") {
                Some(user) => StreamOptions::new().client_key(user.to_str().unwrap_or("?")),
                None => StreamOptions::new(),
            },
        );
    let app = router(sse.clone());
    let a1 = keyed(&app, "/events/c", Some("alice")).await;
    let a2 = keyed(&app, "/events/c", Some("alice")).await;
    assert_eq!((a1.status.as_u16(), a2.status.as_u16()), (200, 200));
    let a3 = keyed(&app, "/events/c", Some("alice")).await;
    assert_eq!(a3.status, 429, "{}", a3.body_text);
    assert_eq!(a3.headers["retry-after"], "5");
    let b1 = keyed(&app, "/events/c", Some("bob")).await;
    let b2 = keyed(&app, "/events/c", Some("bob")).await;
    let anon = keyed(&app, "/events/c", None).await;
    assert_eq!(
        (b1.status.as_u16(), b2.status.as_u16(), anon.status.as_u16()),
        (200, 200, 200)
    );
    assert_eq!(sse.open_connections(), 5);
    let full = keyed(&app, "/events/c", Some("carol")).await;
    assert_eq!(full.status, 503, "{}", full.body_text);
    assert!(full.headers.contains_key("retry-after"));
    drop(a1);
    let a4 = keyed(&app, "/events/c", Some("alice")).await;
    assert_eq!(a4.status, 200);
    drop((a2, a4, b1, b2, anon));
    assert_eq!(sse.open_connections(), 0);

    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let client = keyed(&app, "/events/c", Some("mallory")).await;
        match client.status.as_u16() {
            200 => open.push(client),
            429 => refused += 1,
            other => panic!("{other}"),
        }
        assert!(sse.open_connections() <= 2);
    }
    assert_eq!((open.len(), refused), (2, 298));
    let alice = keyed(&app, "/events/c", Some("alice")).await;
    assert_eq!(alice.status, 200, "others are still served");
}

#[derive(Clone)]
struct Revoke(tokio::sync::watch::Receiver<bool>);

/// A stream whose access ends gets `event: revoked` and ends within 1 s; a stream opened
/// with access that already ended is refused (403).
pub async fn access_ends_revokes_the_stream(make: Make) {
    let pubsub = make(Opts::default()).await;
    let sse = SseEndpoint::new(pubsub.clone()).on_open(|req: &Parts, _: &[Channel]| {
        match req.extensions.get::<Revoke>() {
            Some(Revoke(rx)) => {
                let mut rx = rx.clone();
                StreamOptions::new().access_ends(async move {
                    let _ = rx.wait_for(|revoked| *revoked).await;
                })
            }
            None => StreamOptions::new(),
        }
    });
    let app = router(sse.clone());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let open = |rx: tokio::sync::watch::Receiver<bool>| {
        let req = Request::get("/events/mine")
            .extension(Revoke(rx))
            .body(Body::empty())
            .unwrap();
        SseClient::send(&app, req)
    };
    let mut client = open(rx.clone()).await;
    let mut bystander = SseClient::connect(&app, "/events/mine", None).await;
    let id = pubsub.publish("mine", &json_n(1)).await.unwrap();
    assert_eq!(client.next_json().await, (json_n(1), id.to_string()));
    tx.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        let revoked = client.next().await.expect("a revoked frame");
        assert_eq!(revoked.event, "revoked", "{revoked:?}");
        assert!(client.next().await.is_none(), "the stream ends");
    })
    .await;
    assert!(
        ended.is_ok(),
        "stream still open 1 s after its access ended"
    );
    // Others' streams go on.
    let id = pubsub.publish("mine", &json_n(2)).await.unwrap();
    assert_eq!(
        bystander.next_json().await,
        (json_n(1), {
            let first = EventId::new(id.epoch(), id.offset() - 1).unwrap();
            first.to_string()
        })
    );
    assert_eq!(bystander.next_json().await, (json_n(2), id.to_string()));
    let again = open(rx).await;
    assert_eq!(again.status, 403);
    drop(bystander);
    eventually("streams to close", || sse.open_connections() == 0).await;
}

/// Channels marked server-owned cannot be published over HTTP (403), only by server code;
/// reading them and publishing elsewhere works.
pub async fn server_owned_channels_refuse_http_publish(make: Make) {
    let pubsub = make(Opts::default()).await;
    let sse = SseEndpoint::new(pubsub.clone())
        .authorizer(ServerOwned::new(AllowAll).prefix("order:").channel("news"));
    let app = Router::new().route(
        "/events/{channel}",
        sse.method_router().merge(sse.publish_method_router()),
    );
    let post = |uri: &str| {
        app.clone().oneshot(
            Request::post(uri)
                .header("content-type", "application/json")
                .body(Body::from(r#"{"orderId":"1","status":"shipped"}"#))
                .unwrap(),
        )
    };
    for uri in ["/events/order:updates", "/events/news"] {
        assert_eq!(post(uri).await.unwrap().status(), 403, "{uri}");
    }
    assert_eq!(pubsub.latest("order:updates").await.unwrap(), None);
    assert_eq!(post("/events/chat").await.unwrap().status(), 202);
    let mut reader = SseClient::connect(&app, "/events/order:updates", None).await;
    assert_eq!(reader.status, 200);
    let id = pubsub.publish("order:updates", &json_n(7)).await.unwrap();
    assert_eq!(reader.next_json().await, (json_n(7), id.to_string()));
}

/// Hostile `Last-Event-ID`s never panic or fail the request: each stream opens and resyncs
/// (or resumes when the id is valid).
pub async fn hostile_last_event_ids(make: Make) {
    let pubsub = make(Opts::default()).await;
    let app = router(SseEndpoint::new(pubsub.clone()));
    let last = pubsub.publish("h", &json_n(1)).await.unwrap();
    let epoch = last.epoch().to_owned();
    let max = u64::MAX;
    let ids = [
        format!("x:{max}"),
        format!("{epoch}:{max}"),
        format!("{epoch}:{}", max - 1),
        format!("{epoch}:99999999999999999999999"),
        format!("{epoch}:-1"),
        format!("{}:1", "e".repeat(40)),
        "0".to_owned(),
        "x:0".to_owned(),
        ":".to_owned(),
        ",,,".to_owned(),
        "9".repeat(300),
    ];
    for id in &ids {
        let mut client = SseClient::connect(&app, "/events/h", Some(id)).await;
        assert_eq!(client.status, 200, "{id}");
        if id == "0" {
            assert_eq!(client.next_json().await.1, last.to_string(), "{id}");
        } else {
            let event = client.next().await.expect("a frame");
            assert_eq!(event.event, "resync", "{id}: {event:?}");
            assert_eq!(event.id, last.to_string(), "{id}");
        }
    }
    for id in [format!("x:{max},{epoch}:{max}"), format!("-,{epoch}:{max}")] {
        let mut client = SseClient::connect(&app, "/events?channel=h&channel=h2", Some(&id)).await;
        assert_eq!(client.status, 200, "{id}");
        assert_eq!(
            client.next().await.expect("a frame").event,
            "resync",
            "{id}"
        );
    }
}

/// One open replays at most `max_replay_bytes` of data over all its channels; beyond, resync.
pub async fn replay_byte_cap_per_open(make: Make) {
    let pubsub = make(Opts::default()).await;
    let pad = serde_json::json!({ "p": "x".repeat(992) }); // 1000 bytes of data
    let mut first = Vec::new();
    for ch in ["b1", "b2"] {
        for _ in 0..4 {
            let id = pubsub.publish(ch, &pad).await.unwrap();
            if id.offset() == 1 {
                first.push(EventId::new(id.epoch(), 0).unwrap());
            }
        }
    }
    let app = router(SseEndpoint::new(pubsub.clone()).max_replay_bytes(6000));
    let cursor = format!("{},{}", first[0], first[1]);
    let mut client = SseClient::connect(&app, "/events?channel=b1&channel=b2", Some(&cursor)).await;
    for _ in 0..4 {
        let (v, _) = client.next_json().await;
        assert_eq!(v["channel"], "b1");
    }
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert!(resync.data.contains("b2"), "{resync:?}");
    // Within the budget, everything is replayed.
    let app = router(SseEndpoint::new(pubsub.clone()).max_replay_bytes(4000));
    let mut client = SseClient::connect(&app, "/events/b2", Some(&first[1].to_string())).await;
    assert_eq!(
        client.next_json().await.1,
        format!("{}:1", first[1].epoch())
    );
    let limit = ReplayLimit::new(100, 3999);
    assert!(matches!(
        pubsub.replay("b2", &first[1], limit).await.unwrap(),
        Replay::Gap { .. }
    ));
}
