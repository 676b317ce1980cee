//! The carrier's budget is one quota for `GET /carrier/quote` and the `ship-order` jobs: two
//! quotes and one shipped order spend a budget of three, then the route answers 429 and the
//! other order waits (no attempt used) instead of shipping.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use redtower_example::{Config, Services, app};
use tower::ServiceExt;

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let mut req = req;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

fn quote() -> Request<Body> {
    Request::get("/carrier/quote").body(Body::empty()).unwrap()
}

fn order(email: &str) -> Request<Body> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"email":"{email}","item":"book"}}"#
        )))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_and_shipments_share_the_carrier_budget() {
    let config = Config::from_lookup(|k| match k {
        "CARRIER_RATE_LIMIT" => Some("3/1h".into()),
        "ORDER_SHIP_DELAY_MS" => Some("0".into()),
        _ => None,
    })
    .unwrap(); // in process, no Redis
    let services = Services::new(config).unwrap();
    let router = app(&services).unwrap();
    for _ in 0..2 {
        assert_eq!(call(&router, quote()).await.0, StatusCode::OK);
    }
    let mut orders = Vec::new();
    for email in ["ada@example.com", "bob@example.com"] {
        let (status, body) = call(&router, order(email)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        orders.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let worker = services.start_worker();
    let status_of = |id: String| {
        let router = router.clone();
        async move {
            let req = Request::get(format!("/orders/{id}"))
                .body(Body::empty())
                .unwrap();
            call(&router, req).await.1["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let mut shipped = 0;
    for _ in 0..500 {
        shipped = 0;
        for id in &orders {
            if status_of(id.clone()).await == "shipped" {
                shipped += 1;
            }
        }
        if shipped > 0 {
            break;
        }
        // Polls for the worker to ship the order the budget allows.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shipped, 1, "the budget had room for one shipment");
    assert_eq!(
        call(&router, quote()).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "the shipment spent the last unit"
    );
    let mut statuses = Vec::new();
    for id in &orders {
        statuses.push(status_of(id.clone()).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "shipped").count(),
        1,
        "the other order waits for the carrier: {statuses:?}"
    );
    worker.shutdown().await.unwrap();
}
