//! The abandoned-orders sweep: the worker stores its job scheduler at start and the first
//! tick's job runs at once, publishing `{"sweep": ...}` on `order:updates`, where the page's
//! stream shows it.

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use redtower_example::{Config, Services, app};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_scheduler_runs_and_shows_on_the_stream() {
    let config = Config::from_lookup(|_| None).unwrap(); // in process, no Redis
    let services = Services::new(config).unwrap();
    let router = app(&services).unwrap();
    let mut request = Request::get("/events/order:updates")
        .header("accept", "text/event-stream")
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    let worker = services.start_worker();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
                if seen.contains("\"sweep\"") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "a sweep event on the stream: {seen}");
    worker.shutdown().await.unwrap();
}
