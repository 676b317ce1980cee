//! `GET /orders/{id}/events`: an order's job events (progress steps, the result) over SSE, to
//! the session that placed the order only, resumable from `Last-Event-ID` on any instance.

use std::time::Duration;

use redtower_testkit::unique_prefix;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod common;

use common::TestApp;

fn browser() -> Client {
    Client::builder().cookie_store(true).build().unwrap()
}

/// One SSE frame: `(id, data)`.
type Frame = (String, Value);

/// The frames of a stream (with their ids) as they arrive; keep-alives are skipped.
async fn stream(req: reqwest::RequestBuilder) -> mpsc::UnboundedReceiver<Frame> {
    use futures::StreamExt;
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let (mut id, mut data) = (String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty()
                    && tx
                        .send((id, serde_json::from_str(&data).unwrap_or(Value::Null)))
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Frame>) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("the stream is open")
}

/// What a frame says: the step of a progress event, or `completed`.
fn what(frame: &Frame) -> String {
    match frame.1["type"].as_str() {
        Some("progress") => frame.1["value"]["step"].as_str().unwrap().to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("not a job event: {frame:?}"),
    }
}

/// An order placed on instance A (no worker) is shipped by B's worker; its session follows
/// the steps live on A, resumes after the first one on B with `Last-Event-ID` (and on A with
/// `?last_event_id=`) and gets exactly the rest; a fresh open replays everything; any other
/// session, logged in or not, gets 404 as for an unknown order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_are_private_and_resume_from_last_event_id() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("order-events");
    let env = [
        ("ORDER_SHIP_DELAY_MS", "300"),
        ("ORDER_STEP_DELAY_MS", "50"),
    ];
    let a = TestApp::spawn(Some(&url), &prefix, &[env[0], env[1], ("WORKER", "off")]).await;
    let b = TestApp::spawn(Some(&url), &prefix, &env).await;
    let owner = browser();

    let res = owner
        .post(a.url("/orders"))
        .json(&json!({"email": "a@example.com", "item": "book"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let order: Value = res.json().await.unwrap();
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    let events = format!("/orders/{order_id}/events");

    // Other sessions: 404, whether anonymous, logged in, or resuming with an id.
    let stranger = browser();
    assert_eq!(
        stranger.get(a.url(&events)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let res = stranger
        .post(b.url("/login"))
        .json(&json!({"user": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        stranger.get(b.url(&events)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        stranger
            .get(b.url(&events))
            .header("last-event-id", "x:1")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // The owner, on an order it did not place: 404 as well.
    assert_eq!(
        owner
            .get(a.url("/orders/ord-0000000000000000/events"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // Live, on A (the worker runs on B).
    let mut live = stream(owner.get(a.url(&events))).await;
    let mut frames = Vec::new();
    while frames.last().is_none_or(|f| what(f) != "completed") {
        frames.push(next(&mut live).await);
    }
    let seen: Vec<String> = frames.iter().map(what).collect();
    assert_eq!(seen, ["packed", "label printed", "shipped", "completed"]);
    assert_eq!(
        frames[3].1["result"]["tracking"],
        format!("TRK-{}", order["job_id"].as_str().unwrap())
    );
    assert!(frames.iter().all(|f| f.1["id"] == order["job_id"]));

    // Resume after "packed" on B with the header: exactly the rest, same ids.
    let mut resumed = stream(
        owner
            .get(b.url(&events))
            .header("last-event-id", frames[0].0.as_str()),
    )
    .await;
    for want in &frames[1..] {
        assert_eq!(&next(&mut resumed).await, want);
    }
    // And with the query parameter (what a new EventSource sends after a reload), on A.
    let mut resumed =
        stream(owner.get(a.url(&format!("{events}?last_event_id={}", frames[1].0)))).await;
    for want in &frames[2..] {
        assert_eq!(&next(&mut resumed).await, want);
    }
    // A first open after the job finished replays its whole history.
    let mut fresh = stream(owner.get(b.url(&events))).await;
    for want in &frames {
        assert_eq!(&next(&mut fresh).await, want);
    }
    // Nothing more was sent on any of them: no duplicates.
    tokio::task::yield_now().await;
    assert!(resumed.try_recv().is_err());
    assert!(fresh.try_recv().is_err());

    a.stop().await;
    b.stop().await;
}
