//! `GET /metrics`: traffic through every feature's routes shows up in the Prometheus text,
//! behind the bearer token on the app's address and without it on the admin router; the
//! Grafana dashboard only queries metrics the crates record.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
    response::Response,
};
use http_body_util::BodyExt;
use redtower_example::{Config, Services, app, metrics_router};
use tower::ServiceExt;

const TOKEN: &str = "scrape-token-0123456789";

/// The metrics each crate must show after the traffic of [`every_feature_shows_in_metrics`].
const EXPECTED: &[&str] = &[
    "redtower_ratelimit_allowed_total",
    "redtower_ratelimit_limited_total",
    "redtower_cache_requests_total",
    "redtower_session_store_calls_total",
    "redtower_session_revoked_total",
    "redtower_pubsub_published_total",
    "redtower_pubsub_sse_connections",
    // An order is a flow (the app adds no single job).
    "redtower_jobs_flows_added_total",
    "redtower_jobs_started_total",
    "redtower_jobs_completed_total",
];

fn services(env: &[(&str, &str)]) -> Services {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = Config::from_lookup(|k| {
        env.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    Services::new(config).unwrap()
}

/// `request` from a fixed client address (the rate limits key on it).
async fn send(router: &Router, mut request: Request<Body>) -> Response {
    let peer: SocketAddr = "192.0.2.10:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    router.clone().oneshot(request).await.unwrap()
}

async fn text(response: Response) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post_json(path: &str, cookie: Option<&str>, json: &str) -> Request<Body> {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.body(Body::from(json.to_owned())).unwrap()
}

fn scrape(token: Option<&str>) -> Request<Body> {
    let mut request = Request::get("/metrics");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::empty()).unwrap()
}

/// The metric names (sample lines' names, without labels) of a Prometheus text.
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_shows_in_metrics() {
    let services = services(&[
        ("METRICS_TOKEN", TOKEN),
        ("API_RATE_LIMIT", "2/1m"),
        ("ORDER_SHIP_DELAY_MS", "0"),
        ("FEATURED_DELAY_MS", "0"),
    ]);
    let worker = services.start_worker();
    let router = app(&services).unwrap();

    // Refused without the token, or with another one.
    let refused = send(&router, scrape(None)).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let wrong = send(&router, scrape(Some("scrape-token-wrong-guess"))).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Rate limit: 2 allowed, the third limited.
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(send(&router, get("/api/hello")).await.status(), expected);
    }
    // Cache: a miss, then a hit.
    for expected in ["MISS", "HIT"] {
        let res = send(&router, get("/products/featured")).await;
        assert_eq!(res.headers()["x-cache"], expected);
    }
    // Sessions and pub/sub: log in, open a stream, publish, log out everywhere.
    let login = send(&router, post_json("/login", None, r#"{"user":"alice"}"#)).await;
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = login.headers()[header::SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let stream = send(&router, get("/events/news")).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let published = send(&router, post_json("/events/news", Some(&cookie), "{}")).await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let everywhere = post_json("/logout-everywhere", Some(&cookie), "");
    assert_eq!(
        send(&router, everywhere).await.status(),
        StatusCode::NO_CONTENT
    );
    // Jobs: an order, shipped by the worker.
    let order = r#"{"email":"ada@example.com","item":"mug","fail_times":0}"#;
    let placed = send(&router, post_json("/orders", None, order)).await;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);

    // The job completes in the background: no event reaches this test but the metrics
    // themselves, so they are scraped until they show it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let res = send(&router, scrape(Some(TOKEN))).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let body = text(res).await;
        let names = names(&body);
        let missing: Vec<&str> = EXPECTED
            .iter()
            .copied()
            .filter(|m| !names.contains(*m))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(missing.is_empty(), "missing from /metrics: {missing:?}");
    drop(stream);
    worker.shutdown().await.unwrap();

    // Labels: the policy, the cache route, the session outcome, the queue.
    let body = text(send(&router, scrape(Some(TOKEN))).await).await;
    assert!(
        body.contains(r#"redtower_ratelimit_limited_total{policy="api"} 1"#),
        "{body}"
    );
    assert!(body.contains(r#"outcome="hit""#), "{body}");
    assert!(
        body.contains(r#"redtower_session_revoked_total{scope="all"} 1"#),
        "{body}"
    );
    assert!(body.contains(r#"queue="orders""#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_address_serves_without_a_token_and_the_app_without_either_has_no_route() {
    // Built after (or before) the other test: the recorder is installed once per process.
    let admin = services(&[("METRICS_ADDR", "127.0.0.1:0")]);
    let metrics = metrics_router(&admin).expect("METRICS_ADDR is set");
    let res = send(&metrics, scrape(None)).await;
    assert_eq!(res.status(), StatusCode::OK);
    // No token on the app's own address: no `/metrics` there.
    let router = app(&admin).unwrap();
    assert_eq!(
        send(&router, scrape(None)).await.status(),
        StatusCode::NOT_FOUND
    );

    let plain = services(&[]);
    assert!(metrics_router(&plain).is_none());
    let router = app(&plain).unwrap();
    assert_eq!(
        send(&router, scrape(Some(TOKEN))).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Every metric name the dashboard queries is recorded by a crate (its name is in the
/// crate's source), and every panel has a query.
#[test]
fn grafana_dashboard_queries_only_recorded_metrics() {
    let app = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let mut sources = String::new();
    let crates = app.join("../../crates");
    let mut dirs = vec![crates];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.components().any(|c| c.as_os_str() == "src")
            {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let panels = dashboard["panels"].as_array().unwrap();
    let mut queried = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("redtower_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        // A summary's `_sum` and `_count` series come from the histogram's own name.
        let recorded = |n: &str| sources.contains(&format!("\"{n}\""));
        let base = [name.strip_suffix("_sum"), name.strip_suffix("_count")]
            .into_iter()
            .flatten()
            .find(|base| recorded(base))
            .unwrap_or(name);
        assert!(
            recorded(base),
            "the dashboard queries {name}, which no crate records"
        );
    }
}

/// The binary with `METRICS_ADDR`: `/metrics` on its own listener, without a token, showing
/// the traffic of the app's address; no `/metrics` on the app's address.
#[test]
fn the_binary_serves_metrics_on_the_admin_address() {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::TcpStream,
        process::{Command, Stdio},
    };

    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_redtower-example"))
        .env_remove("REDIS_URL")
        .env_remove("METRICS_TOKEN")
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the app exited early"
        );
    }
    let get = |port: u16, path: &str| {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).unwrap();
        response
    };
    assert!(get(port, "/api/hello").starts_with("HTTP/1.1 200"));
    assert!(get(port, "/metrics").starts_with("HTTP/1.1 404"));
    let scraped = get(admin, "/metrics");
    let _ = child.kill();
    let _ = child.wait();
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(
        scraped.contains(r#"redtower_ratelimit_allowed_total{policy="api"} 1"#),
        "{scraped}"
    );
}
