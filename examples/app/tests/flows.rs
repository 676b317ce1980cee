//! Orders are flows: `ship-order` (the parent, on `orders`) runs once `reserve-stock` and
//! `charge-payment` (its children, on `order-prep`) are done, and its result and the order
//! carry what they gave; a declined payment fails the order without shipping, visible through
//! `GET /orders/{id}`, the order's event stream and `order:updates`; a re-sent placement (same
//! `Idempotency-Key`) adds no second flow. On the in-process backends and on a Redis server of
//! the test's own.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use redtower_example::{
    Config, Services, app,
    orders::{PREP_QUEUE, SHIP_QUEUE},
};
use redtower_testkit::RedisServer;
use serde_json::{Value, json};
use tower::ServiceExt;

fn services(redis_url: Option<&str>) -> Services {
    let mut vars = vec![
        ("ORDER_SHIP_DELAY_MS", "0".to_owned()),
        ("ORDER_STEP_DELAY_MS", "10".to_owned()),
        ("ORDER_RATE_LIMIT", "1000/1m".to_owned()),
    ];
    if let Some(url) = redis_url {
        vars.push(("REDIS_URL", url.to_owned()));
        vars.push(("REDIS_KEY_PREFIX", redtower_testkit::unique_prefix("flows")));
    }
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap();
    Services::new(config).unwrap()
}

/// Services on the in-process backends, or on `server`.
async fn start(server: Option<&RedisServer>) -> (Services, Router) {
    let services = services(server.map(RedisServer::url).as_deref());
    assert!(services.wait_for_redis().await);
    let router = app(&services).unwrap();
    (services, router)
}

fn with_peer(mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    req
}

/// `POST /orders` with `body`, the session `cookie` and an `Idempotency-Key`; returns the
/// status, the body and the session cookie (the one given, or the one set).
async fn place(
    router: &Router,
    body: Value,
    cookie: Option<&str>,
    key: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::post("/orders").header(header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = router
        .clone()
        .oneshot(with_peer(req.body(Body::from(body.to_string())).unwrap()))
        .await
        .unwrap();
    let status = res.status();
    let set = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body, set.or_else(|| cookie.map(str::to_owned)))
}

async fn order(router: &Router, id: &str) -> Value {
    let req = Request::get(format!("/orders/{id}"))
        .body(Body::empty())
        .unwrap();
    let res = router.clone().oneshot(with_peer(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn wait_for_status(router: &Router, id: &str, want: &str) -> Value {
    for _ in 0..1000 {
        let order = order(router, id).await;
        if order["status"] == want {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("order {id} never became {want}");
}

/// An open SSE response: its `data:` payloads as JSON, in order.
struct Stream {
    body: Body,
    buf: String,
}

impl Stream {
    async fn open(router: &Router, path: &str, cookie: Option<&str>) -> Self {
        let mut req = Request::get(path).header(header::ACCEPT, "text/event-stream");
        if let Some(cookie) = cookie {
            req = req.header(header::COOKIE, cookie);
        }
        let res = router
            .clone()
            .oneshot(with_peer(req.body(Body::empty()).unwrap()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        Self {
            body: res.into_body(),
            buf: String::new(),
        }
    }

    /// The next event's data (keep-alives and comments skipped).
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let data: String = frame
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if !data.is_empty() {
                    return serde_json::from_str(&data).unwrap();
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("an event within 20 s")
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

/// Events of an order's job stream up to (and with) its final one (`completed` or `failed`).
async fn job_events(stream: &mut Stream) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = stream.next().await;
        let last = matches!(event["type"].as_str(), Some("completed" | "failed"));
        events.push(event);
        if last {
            return events;
        }
    }
}

/// The next `order:updates` event about an order (the sweep's are skipped).
async fn next_update(updates: &mut Stream) -> Value {
    loop {
        let event = updates.next().await;
        if event.get("orderId").is_some() {
            return event;
        }
    }
}

async fn ships_after_preparation(server: Option<&RedisServer>) {
    let (services, router) = start(server).await;
    let body = json!({"email": "ada@example.com", "item": "book", "fail_times": 1});
    let (status, placed, cookie) = place(&router, body, None, Some("ada-1-7e3f9a0b2c4d")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    let job_id = placed["job_id"].as_str().unwrap().to_owned();
    // Before any worker: the parent waits for its two children.
    let ship = services.queue_counts(SHIP_QUEUE).await.unwrap();
    assert_eq!((ship.waiting_children, ship.ready), (1, 0));
    let prep = services.queue_counts(PREP_QUEUE).await.unwrap();
    assert_eq!(prep.ready + prep.scheduled, 2);
    let pending = order(&router, &order_id).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["job_id"], job_id.as_str());

    let mut events = Stream::open(
        &router,
        &format!("/orders/{order_id}/events"),
        cookie.as_deref(),
    )
    .await;
    let workers = services.start_worker();
    let seen = job_events(&mut events).await;
    let kinds: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["retried", "progress", "progress", "progress", "completed"],
        "{seen:?}"
    );
    assert!(seen.iter().all(|e| e["id"] == job_id.as_str()));
    let result = &seen[4]["result"];
    assert_eq!(result["tracking"], format!("TRK-{job_id}"));
    // The parent ran after both children and read their results.
    let reservation = result["reservation"].as_str().unwrap();
    let payment = result["payment"].as_str().unwrap();
    assert!(reservation.starts_with("RES-"), "{result}");
    assert!(payment.starts_with("PAY-"), "{result}");
    let prep = services.queue_counts(PREP_QUEUE).await.unwrap();
    assert_eq!((prep.completed, prep.dead), (2, 0));

    let shipped = wait_for_status(&router, &order_id, "shipped").await;
    assert_eq!(shipped["attempts"], 2);
    assert_eq!(shipped["reservation"], reservation);
    assert_eq!(shipped["payment"], payment);
    assert_eq!(shipped["tracking"], result["tracking"]);
    assert_eq!(shipped["job_id"], job_id.as_str());
    assert!(shipped.get("error").is_none(), "{shipped}");
    workers.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_ships_after_its_preparation_in_memory() {
    ships_after_preparation(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_ships_after_its_preparation_on_redis() {
    let server = RedisServer::start();
    ships_after_preparation(Some(&server)).await;
}

async fn declined_payment_fails(server: Option<&RedisServer>) {
    let (services, router) = start(server).await;
    let mut updates = Stream::open(&router, "/events/order:updates", None).await;
    let body = json!({"email": "bob@example.com", "item": "lamp", "decline_payment": true});
    let (status, placed, cookie) = place(&router, body, None, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    let job_id = placed["job_id"].as_str().unwrap().to_owned();
    let mut events = Stream::open(
        &router,
        &format!("/orders/{order_id}/events"),
        cookie.as_deref(),
    )
    .await;
    let workers = services.start_worker();

    // The order's stream: one failed event of the parent, no step (nothing shipped).
    let seen = job_events(&mut events).await;
    assert_eq!(seen.len(), 1, "no retry, no step: {seen:?}");
    let failed = &seen[0];
    assert_eq!(failed["type"], "failed");
    assert_eq!(failed["id"], job_id.as_str());
    assert_eq!(failed["attempt"], 1);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("payment failed: card declined"), "{error}");
    // The reservation that went through is released.
    assert!(error.contains("reservation RES-"), "{error}");
    assert!(error.contains("released"), "{error}");

    assert_eq!(
        next_update(&mut updates).await,
        json!({"orderId": order_id, "status": "failed"})
    );
    let order = wait_for_status(&router, &order_id, "failed").await;
    assert_eq!(order["attempts"], 1);
    assert_eq!(order["error"], error);
    assert!(order.get("tracking").is_none(), "{order}");
    assert!(order.get("payment").is_none(), "{order}");

    let ship = services.queue_counts(SHIP_QUEUE).await.unwrap();
    assert_eq!(ship.dead, 1);
    let prep = services.queue_counts(PREP_QUEUE).await.unwrap();
    assert_eq!(
        (prep.completed, prep.dead),
        (1, 1),
        "stock reserved, payment dead"
    );
    workers.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_fails_the_order_without_shipping_in_memory() {
    declined_payment_fails(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_fails_the_order_without_shipping_on_redis() {
    let server = RedisServer::start();
    declined_payment_fails(Some(&server)).await;
}

async fn resent_adds_nothing(server: Option<&RedisServer>) {
    let (services, router) = start(server).await;
    let body = json!({"email": "cy@example.com", "item": "mug"});
    let (status, first, cookie) =
        place(&router, body.clone(), None, Some("cart-7-5b0e1c2d3f4a")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let order_id = first["order_id"].as_str().unwrap().to_owned();
    // The same placement again: from the same session, and from a client whose first
    // response (and its cookie) was lost.
    let (status, again, _) = place(
        &router,
        body.clone(),
        cookie.as_deref(),
        Some("cart-7-5b0e1c2d3f4a"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again, first);
    let (status, lost, other) =
        place(&router, body.clone(), None, Some("cart-7-5b0e1c2d3f4a")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(lost, first);
    let one_flow = |ship: redtower_jobs::Counts, prep: redtower_jobs::Counts, n: u64| {
        assert_eq!(ship.waiting_children, n, "{ship:?}");
        assert_eq!(prep.ready + prep.scheduled, 2 * n, "{prep:?}");
    };
    one_flow(
        services.queue_counts(SHIP_QUEUE).await.unwrap(),
        services.queue_counts(PREP_QUEUE).await.unwrap(),
        1,
    );

    // The first request stopped between adding the flow and recording it with the order:
    // the re-send finds the same flow by its id (the order id) and records it.
    if let Some(server) = server {
        let pattern = format!("*:orders:{{{order_id}}}");
        let (mut keys, mut cursor) = (Vec::new(), "0".to_owned());
        loop {
            let mut reply = server
                .cmd(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
                .into_array()
                .into_iter();
            cursor = reply.next().and_then(|c| c.as_text()).unwrap();
            keys.extend(reply.next().unwrap().into_array());
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(keys.len(), 1, "{keys:?}");
        let key = keys[0].as_text().unwrap();
        assert_eq!(server.cmd(&["HDEL", &key, "job_id"]).as_int(), Some(1));
        assert!(order(&router, &order_id).await.get("job_id").is_none());
        let (status, resumed, _) =
            place(&router, body.clone(), None, Some("cart-7-5b0e1c2d3f4a")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(resumed, first);
        assert_eq!(order(&router, &order_id).await["job_id"], first["job_id"]);
        one_flow(
            services.queue_counts(SHIP_QUEUE).await.unwrap(),
            services.queue_counts(PREP_QUEUE).await.unwrap(),
            1,
        );
    }

    // Another key is another order; a bad key is refused.
    let (_, second, _) = place(&router, body.clone(), None, Some("cart-8-5b0e1c2d3f4a")).await;
    assert_ne!(second["order_id"], first["order_id"]);
    let (status, _, _) = place(&router, body.clone(), None, Some("no spaces in a key")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A key short enough to guess would let others follow the order: refused.
    let (status, _, _) = place(&router, body.clone(), None, Some("cart-9")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    one_flow(
        services.queue_counts(SHIP_QUEUE).await.unwrap(),
        services.queue_counts(PREP_QUEUE).await.unwrap(),
        2,
    );

    // Both sessions that placed it follow the one job, which ships once.
    let mut streams = Vec::new();
    for cookie in [&cookie, &other] {
        let path = format!("/orders/{order_id}/events");
        streams.push(Stream::open(&router, &path, cookie.as_deref()).await);
    }
    let workers = services.start_worker();
    for events in &mut streams {
        let seen = job_events(events).await;
        assert_eq!(seen.last().unwrap()["type"], "completed", "{seen:?}");
        assert!(seen.iter().all(|e| e["id"] == first["job_id"]));
    }
    wait_for_status(&router, &order_id, "shipped").await;
    wait_for_status(&router, second["order_id"].as_str().unwrap(), "shipped").await;
    let prep = services.queue_counts(PREP_QUEUE).await.unwrap();
    assert_eq!((prep.completed, prep.ready + prep.scheduled), (4, 0));
    workers.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_placement_adds_no_second_flow_in_memory() {
    resent_adds_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_placement_adds_no_second_flow_on_redis() {
    let server = RedisServer::start();
    resent_adds_nothing(Some(&server)).await;
}
