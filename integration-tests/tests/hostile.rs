//! The example app under hostile input: logins and publishes are rate limited, server-owned
//! channels cannot be published over HTTP. On the in-process backends and on Redis.

use redtower_testkit::unique_prefix;
use reqwest::{Client, StatusCode};
use serde_json::json;

mod common;

use common::TestApp;

fn browser() -> Client {
    Client::builder().cookie_store(true).build().unwrap()
}

async fn login(client: &Client, app: &TestApp, user: &str) -> StatusCode {
    client
        .post(app.url("/login"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap()
        .status()
}

async fn logins_are_limited_per_user_and_per_ip(redis: Option<&str>) {
    let app = TestApp::spawn(
        redis,
        &unique_prefix("login-limit"),
        &[
            ("LOGIN_USER_RATE_LIMIT", "3/1h"),
            ("LOGIN_RATE_LIMIT", "5/1h"),
        ],
    )
    .await;
    // One user name: three logins, then 429 with Retry-After, from fresh clients each time.
    for i in 0..3 {
        assert_eq!(
            login(&browser(), &app, "alice").await,
            StatusCode::OK,
            "login {i}"
        );
    }
    let res = browser()
        .post(app.url("/login"))
        .json(&json!({ "user": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");
    // Another user from the same IP: the per-IP limit (5) has 1 left, then 429.
    assert_eq!(login(&browser(), &app, "bob").await, StatusCode::OK);
    assert_eq!(
        login(&browser(), &app, "carol").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_user_and_per_ip_in_memory() {
    logins_are_limited_per_user_and_per_ip(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_user_and_per_ip_on_redis() {
    logins_are_limited_per_user_and_per_ip(Some(&redtower_testkit::shared_url())).await;
}

/// Only failed logins count toward `LOGIN_FAILURE_RATE_LIMIT`: successful ones are given
/// back, so any number of them pass; past the failures, even a good login is refused.
async fn only_failed_logins_count(redis: Option<&str>) {
    let app = TestApp::spawn(
        redis,
        &unique_prefix("login-failures"),
        &[
            ("LOGIN_FAILURE_RATE_LIMIT", "2/1h"),
            ("LOGIN_RATE_LIMIT", "100/1h"),
        ],
    )
    .await;
    for i in 0..6 {
        assert_eq!(
            login(&browser(), &app, &format!("user{i}")).await,
            StatusCode::OK,
            "successful login {i}"
        );
    }
    for _ in 0..2 {
        assert_eq!(
            login(&browser(), &app, "no spaces allowed").await,
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(
        login(&browser(), &app, "no spaces allowed").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login(&browser(), &app, "alice").await,
        StatusCode::TOO_MANY_REQUESTS,
        "locked after two failures"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_in_memory() {
    only_failed_logins_count(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_on_redis() {
    only_failed_logins_count(Some(&redtower_testkit::shared_url())).await;
}

async fn a_publish_with_an_idempotency_key_happens_once(redis: Option<&str>) {
    let app = TestApp::spawn(redis, &unique_prefix("publish-key"), &[]).await;
    let alice = browser();
    assert_eq!(login(&alice, &app, "alice").await, StatusCode::OK);
    let publish = |key: &'static str| {
        alice
            .post(app.url("/events/news"))
            .header("idempotency-key", key)
            .json(&json!({ "n": 1 }))
            .send()
    };
    let first: serde_json::Value = publish("order-42-paid")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again: serde_json::Value = publish("order-42-paid")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["id"], again["id"],
        "a retried publish returns the first event"
    );
    let other: serde_json::Value = publish("order-43-paid")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(first["id"], other["id"]);
    let res = publish("not a token!").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_an_idempotency_key_happens_once_in_memory() {
    a_publish_with_an_idempotency_key_happens_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_an_idempotency_key_happens_once_on_redis() {
    a_publish_with_an_idempotency_key_happens_once(Some(&redtower_testkit::shared_url())).await;
}

async fn streams_are_limited_per_client_network(redis: Option<&str>) {
    let app = TestApp::spawn(redis, &unique_prefix("stream-cap"), &[]).await;
    // 32 streams from one address, logged in as many users or none: the 33rd is refused.
    let mut open = Vec::new();
    for i in 0..32 {
        let client = browser();
        if i % 2 == 0 {
            assert_eq!(login(&client, &app, &format!("u{i}")).await, StatusCode::OK);
        }
        let res = client.get(app.url("/events/news")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "stream {i}");
        open.push(res);
    }
    let fresh = browser();
    assert_eq!(login(&fresh, &app, "newcomer").await, StatusCode::OK);
    let res = fresh.get(app.url("/events/news")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    // Closing one makes room again.
    drop(open.pop());
    let mut admitted = false;
    for _ in 0..100 {
        let res = fresh.get(app.url("/events/news")).send().await.unwrap();
        if res.status() == StatusCode::OK {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed stream never made room");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited_per_client_network_in_memory() {
    streams_are_limited_per_client_network(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited_per_client_network_on_redis() {
    streams_are_limited_per_client_network(Some(&redtower_testkit::shared_url())).await;
}

async fn publishing_is_limited_and_server_channels_are_closed(redis: Option<&str>) {
    let app = TestApp::spawn(
        redis,
        &unique_prefix("publish-limit"),
        &[("PUBLISH_RATE_LIMIT", "3/1h")],
    )
    .await;
    let alice = browser();
    assert_eq!(login(&alice, &app, "alice").await, StatusCode::OK);
    // The order channel is the server's: a forged "shipped" update is refused.
    let res = alice
        .post(app.url("/events/order:updates"))
        .json(&json!({"orderId": "forged", "status": "shipped"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    for i in 0..3 {
        let res = alice
            .post(app.url("/events/news"))
            .json(&json!({ "n": i }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED, "publish {i}");
    }
    let res = alice
        .post(app.url("/events/news"))
        .json(&json!({ "n": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    // The limit is per user: bob still publishes.
    let bob = browser();
    assert_eq!(login(&bob, &app, "bob").await, StatusCode::OK);
    let res = bob
        .post(app.url("/events/news"))
        .json(&json!({ "n": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_limited_and_server_channels_are_closed_in_memory() {
    publishing_is_limited_and_server_channels_are_closed(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_limited_and_server_channels_are_closed_on_redis() {
    publishing_is_limited_and_server_channels_are_closed(Some(&redtower_testkit::shared_url()))
        .await;
}

async fn me(client: &Client, app: &TestApp) -> (StatusCode, serde_json::Value) {
    let res = client.get(app.url("/me")).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or_default())
}

async fn logout_others_keeps_only_this_session(redis: Option<&str>) {
    let prefix = unique_prefix("logout-others");
    let a = TestApp::spawn(redis, &prefix, &[]).await;
    // Over Redis a second instance shares the sessions; in memory there is one instance.
    let second = match redis {
        Some(_) => Some(TestApp::spawn(redis, &prefix, &[]).await),
        None => None,
    };
    let b = second.as_ref().unwrap_or(&a);
    let (laptop, phone, tablet) = (browser(), browser(), browser());
    assert_eq!(login(&laptop, &a, "alice").await, StatusCode::OK);
    assert_eq!(login(&phone, b, "alice").await, StatusCode::OK);
    assert_eq!(login(&tablet, &a, "alice").await, StatusCode::OK);
    let res = laptop.post(a.url("/logout-others")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(me(&laptop, b).await.0, StatusCode::OK, "this session stays");
    assert_eq!(me(&phone, b).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&tablet, &a).await.0, StatusCode::UNAUTHORIZED);
    // Without a login there is nothing to keep.
    let res = browser()
        .post(a.url("/logout-others"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    a.stop().await;
    if let Some(b) = second {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_others_keeps_only_this_session_in_memory() {
    logout_others_keeps_only_this_session(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_others_keeps_only_this_session_on_redis() {
    logout_others_keeps_only_this_session(Some(&redtower_testkit::shared_url())).await;
}

async fn logging_in_as_another_user_starts_from_empty_data(redis: Option<&str>) {
    let app = TestApp::spawn(redis, &unique_prefix("rebind"), &[]).await;
    let c = browser();
    assert_eq!(login(&c, &app, "alice").await, StatusCode::OK);
    assert_eq!(me(&c, &app).await.1["visits"], 1);
    assert_eq!(me(&c, &app).await.1["visits"], 2);
    // The same user again keeps the data.
    assert_eq!(login(&c, &app, "alice").await, StatusCode::OK);
    assert_eq!(me(&c, &app).await.1["visits"], 3);
    // Another user on the same browser does not see alice's data.
    assert_eq!(login(&c, &app, "bob").await, StatusCode::OK);
    let (status, body) = me(&c, &app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["user"].as_str(), body["visits"].as_u64()),
        (Some("bob"), Some(1))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_as_another_user_starts_from_empty_data_in_memory() {
    logging_in_as_another_user_starts_from_empty_data(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_as_another_user_starts_from_empty_data_on_redis() {
    logging_in_as_another_user_starts_from_empty_data(Some(&redtower_testkit::shared_url())).await;
}

/// Reads an SSE response's frames as `(event, data)` until it ends.
fn frames(res: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    common::sse_frames(res, str::to_owned)
}

/// Waits for the next frame named `event`, skipping others; `None` when the stream ended first.
async fn next_named(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    event: &str,
) -> Option<String> {
    while let Some((name, data)) = rx.recv().await {
        if name == event {
            return Some(data);
        }
    }
    None
}

/// The promise: a stream on a user's channel ends within 1 s of its session's end on any
/// instance, with an `event: revoked` frame, and the old cookie cannot open it again.
const REVOKED_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

async fn streams_end_when_their_session_does(redis: Option<&str>) {
    use std::time::Instant;
    let prefix = unique_prefix("stream-revoke");
    let a = TestApp::spawn(redis, &prefix, &[]).await;
    let second = match redis {
        Some(_) => Some(TestApp::spawn(redis, &prefix, &[]).await),
        None => None,
    };
    let b = second.as_ref().unwrap_or(&a);
    // For each way a session ends: open a user's stream on B, end the session through A.
    for how in ["logout-everywhere", "logout", "revoke", "logout-others"] {
        let user = format!("user-{how}");
        let inbox = &format!("/events/user:{user}:inbox");
        let (laptop, phone) = (browser(), browser());
        assert_eq!(login(&laptop, &a, &user).await, StatusCode::OK);
        assert_eq!(login(&phone, &a, &user).await, StatusCode::OK);
        let res = laptop.get(b.url(inbox)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{how}");
        let mut stream = frames(res);
        // A live event first, so the stream is known to be subscribed.
        let res = phone
            .post(a.url(inbox))
            .json(&json!({ "hello": how }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert!(next_named(&mut stream, "message").await.is_some(), "{how}");

        let ended = Instant::now();
        let status = match how {
            "logout-everywhere" | "logout" => laptop.post(a.url(&format!("/{how}"))).send().await,
            // The phone ends the laptop's session: by its handle, or by keeping only itself.
            "revoke" => {
                let sessions: serde_json::Value = phone
                    .get(a.url("/me/sessions"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let handle = sessions
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["current"] == false)
                    .and_then(|s| s["handle"].as_str())
                    .unwrap()
                    .to_owned();
                phone
                    .delete(a.url(&format!("/me/sessions/{handle}")))
                    .send()
                    .await
            }
            _ => phone.post(a.url("/logout-others")).send().await,
        }
        .unwrap()
        .status();
        assert_eq!(status, StatusCode::NO_CONTENT, "{how}");
        let frame = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            next_named(&mut stream, "revoked"),
        )
        .await
        .unwrap_or_else(|_| panic!("{how}: the stream was never revoked"));
        let took = ended.elapsed();
        assert!(
            frame.is_some(),
            "{how}: the stream ended without a revoked frame"
        );
        assert!(took < REVOKED_WITHIN, "{how}: revoked after {took:?}");
        // Then the stream ends.
        assert!(
            stream.recv().await.is_none(),
            "{how}: the stream stayed open"
        );
        // The old cookie cannot open it again, on either instance.
        for app in [&a, b] {
            let res = laptop.get(app.url(inbox)).send().await.unwrap();
            assert!(
                res.status() == StatusCode::FORBIDDEN || res.status() == StatusCode::UNAUTHORIZED,
                "{how}: reopened with {}",
                res.status()
            );
        }
        eprintln!("stream revoked {took:?} after {how}");
    }
    a.stop().await;
    if let Some(b) = second {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_session_does_in_memory() {
    streams_end_when_their_session_does(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_session_does_on_redis() {
    streams_end_when_their_session_does(Some(&redtower_testkit::shared_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_session_does_on_a_cluster() {
    streams_end_when_their_session_does(Some(&redtower_testkit::shared_cluster().url())).await;
}
