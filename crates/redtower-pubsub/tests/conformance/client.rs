//! An SSE client over an axum `Router`, parsed by `eventsource-stream` (an independent
//! parser).

use std::{pin::Pin, time::Duration};

use axum::{Router, body::Body, http::Request};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use http::{HeaderMap, StatusCode};
use tower::ServiceExt;

/// How long a test waits for something that should happen at once. Generous: it only
/// bounds a hang.
pub const WAIT: Duration = Duration::from_secs(10);

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

pub struct SseClient {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body_text: String,
    events: Option<Events>,
}

impl SseClient {
    pub async fn connect(app: &Router, uri: &str, last_event_id: Option<&str>) -> Self {
        let mut req = Request::get(uri);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Self::send(app, req.body(Body::empty()).unwrap()).await
    }

    /// Sends `req` (headers and extensions of the test's choosing).
    pub async fn send(app: &Router, req: Request<Body>) -> Self {
        let response = app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::OK {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            return Self {
                status,
                headers,
                body_text: String::from_utf8_lossy(&bytes).into_owned(),
                events: None,
            };
        }
        let stream = response
            .into_body()
            .into_data_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Self {
            status,
            headers,
            body_text: String::new(),
            events: Some(Box::pin(stream)),
        }
    }

    /// The next event with data (id-only frames set the id but fire nothing, as in browsers);
    /// `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        let Some(events) = self.events.as_mut() else {
            panic!("not an event stream: {} {:?}", self.status, self.body_text);
        };
        loop {
            let next = tokio::time::timeout(WAIT, events.next())
                .await
                .expect("no event within the wait bound");
            match next {
                None => return None,
                Some(Err(e)) => panic!("SSE parse error: {e}"),
                Some(Ok(event)) if event.data.is_empty() => continue,
                Some(Ok(event)) => return Some(event),
            }
        }
    }

    /// The next `message` event's data as JSON, and its id.
    pub async fn next_json(&mut self) -> (serde_json::Value, String) {
        let event = self.next().await.expect("stream ended");
        assert_eq!(event.event, "message", "unexpected event: {event:?}");
        (serde_json::from_str(&event.data).unwrap(), event.id)
    }

    /// The next `n` data values (`{"n": k}` payloads give `k`).
    pub async fn next_ns(&mut self, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (v, _) = self.next_json().await;
            out.push(v["n"].as_i64().expect("payload {n}"));
        }
        out
    }

    /// Reads until the stream ends; returns every event.
    pub async fn rest(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

pub fn json_n(n: i64) -> serde_json::Value {
    serde_json::json!({ "n": n })
}
