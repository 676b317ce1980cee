//! The example app over HTTP: every route on the in-process backends and on Redis, and two
//! instances sharing one Redis.

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

async fn json_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads (and `event:` names) of an SSE stream, as they arrive.
async fn sse(client: &Client, url: &str) -> mpsc::UnboundedReceiver<(String, Value)> {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    common::sse_frames(res, |data| {
        serde_json::from_str(data).unwrap_or(Value::Null)
    })
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
}

/// The next `order:updates` event about an order. The scheduled sweep announces itself on the
/// same channel (`{"sweep": ...}`, at start and then every minute); its events are skipped, as
/// in the example's own flow tests.
async fn next_order_update(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> Value {
    loop {
        let (_, update) = next_event(rx).await;
        if update.get("orderId").is_some() {
            return update;
        }
    }
}

async fn wait_for_order(client: &Client, app: &TestApp, id: &str, want: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = json_of(
            client
                .get(app.url(&format!("/orders/{id}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        if body["status"] == want {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("order {id} never became {want}");
}

/// Every route, as a user drives it.
async fn check_routes(app: &TestApp, backend: &str) {
    let c = browser();

    // Health.
    let (status, body) = json_of(c.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "backend": backend}));

    // Cache: the slow handler runs once; the second request is a hit.
    let first = c.get(app.url("/products/featured")).send().await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let products = first.json::<Value>().await.unwrap();
    assert_eq!(products.as_array().unwrap().len(), 3);
    let second = c.get(app.url("/products/featured")).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert!(second.headers().contains_key("age"));
    assert_eq!(second.json::<Value>().await.unwrap(), products);
    let (_, stats) = json_of(c.get(app.url("/stats")).send().await.unwrap()).await;
    assert_eq!(stats, json!({"featured_db_calls": 1}));

    // Rate limit (API_RATE_LIMIT=3/1h): three pass with headers, the fourth is refused.
    for remaining in (0..3).rev() {
        let res = c.get(app.url("/api/hello")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(
            res.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .contains("q=3")
        );
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            json!({"hello": "world", "plan": "free"})
        );
    }
    let limited = c.get(app.url("/api/hello")).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1200).contains(&retry_after), "{retry_after}");
    assert!(
        limited.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
    // The pro plan (from a header the stand-in authentication layer reads) has its own,
    // 100 times larger, allowance.
    let pro = c
        .get(app.url("/api/hello"))
        .header("x-demo-plan", "pro")
        .send()
        .await
        .unwrap();
    assert_eq!(pro.status(), StatusCode::OK);
    assert_eq!(pro.headers()["x-ratelimit-limit"], "300");
    assert_eq!(pro.headers()["x-ratelimit-remaining"], "299");

    // Sessions.
    let (status, _) = json_of(c.get(app.url("/me")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = json_of(
        c.post(app.url("/login"))
            .json(&json!({"user": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"user": "alice"})));
    for visits in 1..=2 {
        let (status, body) = json_of(c.get(app.url("/me")).send().await.unwrap()).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"user": "alice", "visits": visits}))
        );
    }
    let other = browser();
    other
        .post(app.url("/login"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    let (_, list) = json_of(c.get(app.url("/me/sessions")).send().await.unwrap()).await;
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    for field in [
        "handle",
        "created_at",
        "last_seen_at",
        "user_agent",
        "ip",
        "current",
    ] {
        assert!(list[0].get(field).is_some(), "{field} in {list:?}");
    }
    let theirs = list.iter().find(|s| s["current"] == false).unwrap();
    let res = c
        .delete(app.url(&format!(
            "/me/sessions/{}",
            theirs["handle"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        other.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Pub/sub: reading is public, publishing needs a login, user channels are private.
    let mut events = sse(&c, &app.url("/events/news")).await;
    let anon = browser();
    let (status, _) = json_of(
        anon.post(app.url("/events/news"))
            .json(&json!({"n": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = json_of(
        c.post(app.url("/events/news"))
            .json(&json!({"n": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(body["id"].as_str().unwrap().contains(':'));
    assert_eq!(
        next_event(&mut events).await,
        ("message".to_owned(), json!({"n": 1}))
    );
    let (status, _) = json_of(
        c.post(app.url("/events/user:bob:inbox"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = json_of(
        anon.get(app.url("/events/user:alice:inbox"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"].is_string(), "{body}");
    let mut mine = sse(&c, &app.url("/events/user:alice:inbox")).await;
    let (status, _) = json_of(
        c.post(app.url("/events/user:alice:inbox"))
            .json(&json!({"hi": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(next_event(&mut mine).await.1, json!({"hi": true}));
    let (status, _) = json_of(
        c.post(app.url("/events/bad%20name"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = json_of(c.get(app.url("/events/bad%7Bname")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].is_string(), "{body}");
    let huge = "x".repeat(70 * 1024);
    let res = c
        .post(app.url("/events/news"))
        .header("content-type", "application/json")
        .body(format!("\"{huge}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = c
        .post(app.url("/events/news"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Orders: shipped after a failed attempt, announced live; too many failures → failed.
    let mut updates = sse(&c, &app.url("/events/order:updates")).await;
    let (status, body) = json_of(
        c.post(app.url("/orders"))
            .json(&json!({"email": "a@example.com", "item": "book", "fail_times": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    assert!(body["job_id"].is_string());
    let (_, pending) = json_of(
        c.get(app.url(&format!("/orders/{order_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(pending["status"], "pending");
    let shipped = wait_for_order(&c, app, &order_id, "shipped").await;
    assert_eq!(shipped["attempts"], 2);
    assert_eq!(
        next_order_update(&mut updates).await,
        json!({"orderId": order_id, "status": "shipped"})
    );
    let (_, body) = json_of(
        c.post(app.url("/orders"))
            .json(&json!({"email": "a@example.com", "item": "pen", "fail_times": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let doomed = body["order_id"].as_str().unwrap().to_owned();
    let failed = wait_for_order(&c, app, &doomed, "failed").await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(
        next_order_update(&mut updates).await,
        json!({"orderId": doomed, "status": "failed"})
    );

    // Bad input: clear 4xx JSON errors.
    let cases: &[(&str, &str, Option<&str>, StatusCode)] = &[
        (
            "/login",
            "{\"user\":\"alice\"}",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/login",
            "{\"user\":",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            "{\"name\":\"x\"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/login",
            "{\"user\":\"a b\"}",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/orders",
            "{\"email\":\"nope\",\"item\":\"x\"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/orders",
            "[]",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    let fresh = browser();
    for (path, body, content_type, want) in cases {
        let mut req = fresh.post(app.url(path)).body(*body);
        if let Some(ct) = content_type {
            req = req.header("content-type", *ct);
        }
        let (status, body) = json_of(req.send().await.unwrap()).await;
        assert_eq!(status, *want, "{path} {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let res = fresh
        .get(app.url("/me"))
        .header("cookie", "id=garbage; other=%%%")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = json_of(fresh.get(app.url("/orders/nope")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = json_of(fresh.get(app.url("/no/such/route")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Log out everywhere: the session is dead.
    assert_eq!(
        c.post(app.url("/logout-everywhere"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    c.post(app.url("/login"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.post(app.url("/logout")).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_memory() {
    let app = TestApp::spawn(None, "", &[("API_RATE_LIMIT", "3/1h")]).await;
    check_routes(&app, "memory").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_redis() {
    let url = redtower_testkit::shared_url();
    let app = TestApp::spawn(
        Some(&url),
        &unique_prefix("app"),
        &[("API_RATE_LIMIT", "3/1h")],
    )
    .await;
    check_routes(&app, "redis").await;
    app.stop().await;
}

/// `/products/featured` names its products in `Surrogate-Key` (stripped before it leaves);
/// `POST /cache/purge` (only with `CACHE_PURGE_TOKEN`, only with the token) purges it by tag
/// on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_purge_by_surrogate_key_on_two_instances() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("purge");
    let token = "purge-token-for-tests";
    // The near-cache tier sees another instance's purge one invalidation push later; off
    // here so B's next read after A's purge is decided by Redis alone.
    let a = TestApp::spawn(
        Some(&url),
        &prefix,
        &[
            ("CACHE_PURGE_TOKEN", token),
            ("WORKER", "off"),
            ("NEAR_CACHE", "off"),
        ],
    )
    .await;
    let b = TestApp::spawn(Some(&url), &prefix, &[("NEAR_CACHE", "off")]).await;
    let c = browser();
    let featured = |app: &TestApp| {
        c.get(app.url("/products/featured"))
            .header("host", "shop.example")
            .send()
    };
    let first = featured(&a).await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert!(first.headers().get("surrogate-key").is_none());
    let hit = featured(&b).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert!(hit.headers().get("surrogate-key").is_none());

    let purge = |app: &TestApp, auth: Option<&str>| {
        let mut req = c
            .post(app.url("/cache/purge"))
            .json(&json!({"tags": ["product:2"]}));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(
        purge(&a, None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        purge(&a, Some("purge-token-for-test"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // B has no token configured: no purge endpoint at all.
    assert_eq!(
        purge(&b, Some(token)).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(featured(&b).await.unwrap().headers()["x-cache"], "HIT");

    let (status, body) = json_of(purge(&a, Some(token)).await.unwrap()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"keys": 0, "prefixes": 0, "tags": 1}))
    );
    assert_eq!(featured(&b).await.unwrap().headers()["x-cache"], "MISS");
    assert_eq!(featured(&a).await.unwrap().headers()["x-cache"], "HIT");
    let (_, stats) = json_of(c.get(b.url("/stats")).send().await.unwrap()).await;
    assert_eq!(stats, json!({"featured_db_calls": 1}));

    // By path prefix: every response under `/products/`, on every instance.
    let by_prefix = c
        .post(a.url("/cache/purge"))
        .bearer_auth(token)
        .json(&json!({"prefixes": ["/products/"]}))
        .send();
    let (status, body) = json_of(by_prefix.await.unwrap()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"keys": 0, "prefixes": 1, "tags": 0}))
    );
    assert_eq!(featured(&b).await.unwrap().headers()["x-cache"], "MISS");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_everything_through_redis() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("two");
    let env = [("API_RATE_LIMIT", "5/1h")];
    let a = TestApp::spawn(Some(&url), &prefix, &[env[0], ("WORKER", "off")]).await;
    let b = TestApp::spawn(Some(&url), &prefix, &env).await;
    let c = browser();

    // The rate limit is shared: exactly 5 across both.
    let mut allowed = 0;
    for i in 0..8 {
        let app = if i % 2 == 0 { &a } else { &b };
        if c.get(app.url("/api/hello")).send().await.unwrap().status() == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5);

    // A cache fill on A is a hit on B, which never calls its handler. (Behind a load balancer
    // both see the same Host; the cache key includes it.)
    let featured = |app: &TestApp| {
        c.get(app.url("/products/featured"))
            .header("host", "shop.example")
            .send()
    };
    assert_eq!(featured(&a).await.unwrap().headers()["x-cache"], "MISS");
    assert_eq!(featured(&b).await.unwrap().headers()["x-cache"], "HIT");
    let (_, stats) = json_of(c.get(b.url("/stats")).send().await.unwrap()).await;
    assert_eq!(stats, json!({"featured_db_calls": 0}));

    // A session made on A works on B; revoked through B, A refuses it at once.
    c.post(a.url("/login"))
        .json(&json!({"user": "carol"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(c.get(b.url("/me")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["user"].clone()),
        (StatusCode::OK, json!("carol"))
    );
    let phone = browser();
    phone
        .post(b.url("/login"))
        .json(&json!({"user": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        phone
            .post(b.url("/logout-everywhere"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get(a.url("/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    c.post(a.url("/login"))
        .json(&json!({"user": "carol"}))
        .send()
        .await
        .unwrap();

    // A publish on A reaches an SSE client on B.
    let mut on_b = sse(&c, &b.url("/events/lobby")).await;
    let (status, _) = json_of(
        c.post(a.url("/events/lobby"))
            .json(&json!({"from": "a"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(next_event(&mut on_b).await.1, json!({"from": "a"}));

    // An order placed on A (no worker) is shipped by B's worker and announced on both.
    let mut updates_a = sse(&c, &a.url("/events/order:updates")).await;
    let mut updates_b = sse(&c, &b.url("/events/order:updates")).await;
    let (status, body) = json_of(
        c.post(a.url("/orders"))
            .json(&json!({"email": "c@example.com", "item": "lamp", "fail_times": 0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    let want = json!({"orderId": order_id, "status": "shipped"});
    assert_eq!(next_order_update(&mut updates_a).await, want);
    assert_eq!(next_order_update(&mut updates_b).await, want);
    let shipped = wait_for_order(&c, &a, &order_id, "shipped").await;
    assert_eq!(shipped["attempts"], 1);

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_each_failure_policy() {
    let mut server = redtower_testkit::RedisServer::start();
    let app = TestApp::spawn(
        Some(&server.url()),
        &unique_prefix("outage"),
        &[("REDIS_COMMAND_TIMEOUT_MS", "300")],
    )
    .await;
    let c = browser();
    c.post(app.url("/login"))
        .json(&json!({"user": "erin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::OK
    );

    server.kill();
    let (status, body) = json_of(c.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"status": "degraded", "backend": "redis"}));
    // The rate limit fails open, the cache calls the handler, sessions answer 503.
    let res = c.get(app.url("/api/hello")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = c.get(app.url("/products/featured")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap().as_array().unwrap().len(),
        3
    );
    assert_eq!(
        c.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    server.restart();
    let mut healthy = false;
    for _ in 0..300 {
        if c.get(app.url("/health")).send().await.unwrap().status() == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "healthy again after Redis returns");
    // The restarted server kept nothing: the session is gone, so 401, not a crash.
    assert_eq!(
        c.get(app.url("/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

/// The routes the load harness measures: `/plain` (no layer), `/whoami` (a session read) and
/// `/api/stacked` (rate limit, then login check, then per-user cache). Run with
/// `API_RATE_LIMIT=4/1h`.
async fn check_probe_routes(app: &TestApp) {
    let c = browser();

    let res = c.get(app.url("/plain")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key("set-cookie"));
    assert!(!res.headers().contains_key("x-ratelimit-limit"));
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"hello": "world"})
    );

    let (status, body) = json_of(c.get(app.url("/whoami")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string(), "{body}");

    // 1 of 4: rate limited first, then refused for want of a login.
    let res = c.get(app.url("/api/stacked")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "3");

    let carol = browser();
    for (client, user) in [(&c, "bob"), (&carol, "carol")] {
        let res = client
            .post(app.url("/login"))
            .json(&json!({ "user": user }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let (status, body) = json_of(client.get(app.url("/whoami")).send().await.unwrap()).await;
        assert_eq!((status, body), (StatusCode::OK, json!({ "user": user })));
    }

    // 2 and 3 of 4: bob's entry is filled, then hit.
    let first = c.get(app.url("/api/stacked")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "MISS");
    let body = first.json::<Value>().await.unwrap();
    assert_eq!(body["user"], "bob");
    assert_eq!(body["featured"].as_array().unwrap().len(), 2);
    let second = c.get(app.url("/api/stacked")).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(second.json::<Value>().await.unwrap(), body);

    // 4 of 4: another user does not get bob's entry.
    let res = carol.get(app.url("/api/stacked")).send().await.unwrap();
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert_eq!(res.json::<Value>().await.unwrap()["user"], "carol");

    // Same client IP, fifth request: the rate limit answers before anything else.
    let res = c.get(app.url("/api/stacked")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // `/plain` and `/whoami` are not limited.
    assert_eq!(
        c.get(app.url("/plain")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(app.url("/whoami")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_routes_on_memory() {
    let app = TestApp::spawn(None, "", &[("API_RATE_LIMIT", "4/1h"), ("WORKER", "off")]).await;
    check_probe_routes(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_routes_on_redis_without_l1() {
    let url = redtower_testkit::shared_url();
    let app = TestApp::spawn(
        Some(&url),
        &unique_prefix("probes"),
        &[
            ("API_RATE_LIMIT", "4/1h"),
            ("WORKER", "off"),
            ("CACHE_L1", "off"),
            ("NEAR_CACHE", "off"),
        ],
    )
    .await;
    check_probe_routes(&app).await;
    app.stop().await;
}
