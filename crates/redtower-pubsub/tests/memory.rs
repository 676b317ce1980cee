//! The memory backend: the conformance suite, plus history bounds, expiry, keep-alive, lifetime
//! and shutdown of a real server, with tokio's clock paused where time matters.

mod conformance;

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body, http::Request};
use bytes::Bytes;
use conformance::{
    SseClient,
    checks::{Make, Opts, router},
    json_n,
};
use http_body_util::BodyExt;
use redtower_pubsub::{CancellationToken, MemoryStore, PubSub, Replay, SseEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn memory() -> Make {
    Arc::new(|opts: Opts| {
        Box::pin(async move {
            PubSub::new(
                MemoryStore::new()
                    .channel_capacity(opts.capacity)
                    .history_len(opts.history_len)
                    .history_bytes(opts.history_bytes)
                    .max_payload(opts.max_payload)
                    .max_channels(opts.max_channels),
            )
        })
    })
}

conformance!(memory());

#[tokio::test]
async fn trimmed_history_resyncs() {
    let pubsub = PubSub::new(MemoryStore::new().history_len(3));
    let app = router(SseEndpoint::new(pubsub.clone()));
    let mut ids = Vec::new();
    for n in 1..=6 {
        ids.push(pubsub.publish("t", &json_n(n)).await.unwrap());
    }
    // 4, 5, 6 are kept: resuming after 3 works, after 2 does not.
    assert!(
        matches!(pubsub.replay("t", &ids[2], 100).await.unwrap(), Replay::Events(e) if e.len() == 3)
    );
    let mut client = SseClient::connect(&app, "/events/t", Some(&ids[1].to_string())).await;
    let resync = client.next().await.unwrap();
    assert_eq!(resync.event, "resync");
    assert!(resync.data.contains(r#""reason":"gap""#));
    assert_eq!(resync.id, ids[5].to_string());
}

#[tokio::test(start_paused = true)]
async fn history_expires_into_a_new_epoch() {
    let pubsub = PubSub::new(MemoryStore::new().history_ttl(Duration::from_secs(60)));
    let old = pubsub.publish("x", &1).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    let same = pubsub.publish("x", &2).await.unwrap();
    assert_eq!((same.epoch(), same.offset()), (old.epoch(), 2));
    tokio::time::advance(Duration::from_secs(61)).await;
    let new = pubsub.publish("x", &3).await.unwrap();
    assert_ne!(new.epoch(), old.epoch());
    assert_eq!(new.offset(), 1);
    assert!(matches!(
        pubsub.replay("x", &same, 10).await.unwrap(),
        Replay::Gap { latest: Some(l) } if l == new
    ));
}

async fn open_raw(app: &Router, uri: &str) -> axum::body::Body {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

async fn chunk(body: &mut axum::body::Body) -> Option<Bytes> {
    body.frame().await.map(|f| f.unwrap().into_data().unwrap())
}

#[tokio::test(start_paused = true)]
async fn first_frame_keep_alive_and_lifetime() {
    let pubsub = PubSub::memory();
    let sse = SseEndpoint::new(pubsub.clone())
        .keep_alive(Duration::from_secs(15))
        .max_lifetime(Duration::from_secs(600));
    let app = router(sse);
    let started = tokio::time::Instant::now();
    let mut body = open_raw(&app, "/events/ka").await;

    // First: a comment, the retry hint (2..5 s) and the position (an empty channel: 0).
    let first = chunk(&mut body).await.unwrap();
    let text = std::str::from_utf8(&first).unwrap();
    assert!(text.starts_with(": ok\nretry: "), "{text:?}");
    let retry: u64 = text["': ok\nretry: ".len() - 1..]
        .split('\n')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2000..=5000).contains(&retry), "{retry}");
    assert!(text.ends_with("id: 0\n\n"), "{text:?}");

    // Silence: a keep-alive comment every 15 s.
    for _ in 0..3 {
        let before = tokio::time::Instant::now();
        assert_eq!(
            chunk(&mut body).await.unwrap(),
            Bytes::from_static(b":\n\n")
        );
        assert_eq!(before.elapsed(), Duration::from_secs(15));
    }
    // An event resets the keep-alive: the next comment comes 15 s after it.
    tokio::time::advance(Duration::from_secs(5)).await;
    pubsub.publish("ka", &1).await.unwrap();
    assert!(chunk(&mut body).await.unwrap().starts_with(b"id: "));
    let after_event = tokio::time::Instant::now();
    assert_eq!(
        chunk(&mut body).await.unwrap(),
        Bytes::from_static(b":\n\n")
    );
    assert_eq!(after_event.elapsed(), Duration::from_secs(15));

    // The stream ends between 2/3 of the lifetime and all of it.
    while chunk(&mut body).await.is_some() {}
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_secs(400) && lived <= Duration::from_secs(615),
        "{lived:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_hints_are_randomized() {
    let app = router(SseEndpoint::new(PubSub::memory()));
    let mut hints = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut body = open_raw(&app, "/events/r").await;
        let first = chunk(&mut body).await.unwrap();
        hints.insert(first);
    }
    assert!(hints.len() > 1, "every connection got the same retry hint");
}

/// A real server: open streams end within 1 s of the shutdown signal and `serve` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_streams_and_the_server() {
    let token = CancellationToken::new();
    let pubsub = PubSub::memory();
    let app = router(SseEndpoint::new(pubsub.clone()).shutdown(token.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = token.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /events/bye HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        conns.push(conn);
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(1), async {
        server.await.unwrap();
        for mut conn in conns {
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.unwrap();
        }
    })
    .await
    .expect("server still running 1 s after shutdown");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any `Last-Event-ID` a client can send (printable header text, or `<epoch>:<any u64>` for
    /// the channel's own epoch and others, on one channel or two): the stream opens (200) and
    /// its first frame is a resync or the replay, never a panic or an error.
    #[test]
    fn hostile_last_event_ids_never_fail(
        raw in "[ -~]{0,60}",
        offset: u64,
        own_epoch: bool,
        multi: bool,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let pubsub = PubSub::memory();
            let app = router(SseEndpoint::new(pubsub.clone()));
            let last = pubsub.publish("c", &json_n(1)).await.unwrap();
            let epoch = if own_epoch { last.epoch().to_owned() } else { "other".to_owned() };
            let uri = if multi { "/events?channel=c&channel=d" } else { "/events/c" };
            for cursor in [raw.clone(), format!("{epoch}:{offset}"), format!("{epoch}:{offset},{raw}")] {
                let mut client = SseClient::connect(&app, uri, Some(&cursor)).await;
                assert_eq!(client.status, 200, "{cursor:?}");
                // A blank or current cursor starts live: publish, so a frame always comes.
                pubsub.publish("c", &json_n(2)).await.unwrap();
                let first = tokio::time::timeout(Duration::from_secs(5), client.next())
                    .await
                    .expect("a first frame")
                    .expect("the stream is open");
                assert!(first.event == "resync" || first.event == "message", "{cursor:?}: {first:?}");
            }
        });
    }
}
