//! The tower layer over the memory store: statuses, headers, bodies, keys, routes, failure
//! policies, shadow mode and configuration errors.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Extension, Router, body::Body, extract::ConnectInfo, routing::get};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use redtower_ratelimit::{
    BearerToken, CircuitBreaker, ClientIp, ConfigError, Decision, FailurePolicy, ForwardedHeader,
    FromExtension, Global, Header, KeyExtractorExt, MemoryStore, MissingKey, PeerIp, Policy, Quota,
    RateLimitLayer, RateLimitStore, Subject, nonzero,
};
use tower::ServiceExt;

fn req(peer: &str) -> Request<Body> {
    req_to("/", peer)
}

fn req_to(path: &str, peer: &str) -> Request<Body> {
    let peer: SocketAddr = peer.parse().unwrap();
    Request::get(path)
        .extension(ConnectInfo(peer))
        .body(Body::empty())
        .unwrap()
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/users/{id}",
            get(|Extension(d): Extension<Decision>| async move {
                format!("remaining={}", d.remaining().unwrap())
            }),
        )
        .layer(layer)
}

async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

async fn body(res: Response<Body>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn draft_headers_429_problem_body_and_retry_after() {
    let layer = RateLimitLayer::new(
        MemoryStore::new(),
        Policy::new("api", Quota::per_minute(nonzero!(2))),
    )
    .policy(Policy::new(
        "daily",
        Quota::per_day(nonzero!(100)).fixed_window(),
    ));
    let app = app(layer);
    let res = send(&app, req("192.0.2.1:1000")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["ratelimit-policy"],
        "\"api\";q=2;w=60, \"daily\";q=100;w=86400"
    );
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"api\";r=1;t=30, \"daily\";r=99;t=")
    );
    assert!(
        res.headers().get("x-ratelimit-limit").is_none(),
        "legacy headers are opt-in"
    );
    let _ = send(&app, req("192.0.2.1:1001")).await;
    let res = send(&app, req("192.0.2.1:1002")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "30");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let json: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
    assert_eq!(json["status"], 429);
    assert_eq!(json["violated-policies"], serde_json::json!(["api"]));
    assert_eq!(
        json["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    // A retry at exactly Retry-After succeeds.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        send(&app, req("192.0.2.1:1003")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_rounds_up() {
    // 3 per second: one every 333,334 µs; Retry-After must say 1, not 0.
    let app = app(
        RateLimitLayer::new(MemoryStore::new(), Quota::per_second(nonzero!(3))).denied_cache(0),
    );
    for _ in 0..3 {
        assert_eq!(
            send(&app, req("192.0.2.1:1")).await.status(),
            StatusCode::OK
        );
    }
    let res = send(&app, req("192.0.2.1:1")).await;
    assert_eq!(res.headers()["retry-after"], "1");
    tokio::time::advance(Duration::from_micros(333_333)).await;
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_micros(1)).await;
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn legacy_headers_and_decision_extension() {
    let layer =
        RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(5))).legacy_headers(true);
    let app = app(layer);
    let res = send(&app, req_to("/users/7", "192.0.2.9:1")).await;
    assert_eq!(res.headers()["x-ratelimit-limit"], "5");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "4");
    let reset: u64 = res.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reset > now && reset <= now + 721,
        "reset is a Unix time: {reset} vs {now}"
    );
    assert_eq!(body(res).await, "remaining=4");
}

#[tokio::test(start_paused = true)]
async fn custom_limited_response() {
    let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1)))
        .limited_response(|d| {
            let mut res = Response::new(bytes::Bytes::from(format!(
                "slow down ({} policies)",
                d.violated().count()
            )));
            *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            res
        });
    let app = app(layer);
    let _ = send(&app, req("192.0.2.1:1")).await;
    let res = send(&app, req("192.0.2.1:1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "3600");
    assert!(res.headers().contains_key("ratelimit"));
    assert_eq!(body(res).await, "slow down (1 policies)");
}

#[tokio::test(start_paused = true)]
async fn matched_path_selects_route_policies() {
    let layer = RateLimitLayer::new(
        MemoryStore::new(),
        Policy::new("default", Quota::per_hour(nonzero!(100))),
    )
    .route(
        "/users/{id}",
        [Policy::new("users", Quota::per_hour(nonzero!(1)))],
    );
    let app = app(layer);
    let res = send(&app, req_to("/users/1", "192.0.2.1:1")).await;
    assert_eq!(res.headers()["ratelimit-policy"], "\"users\";q=1;w=3600");
    // Another raw path of the same route shares the route's budget.
    let res = send(&app, req_to("/users/2", "192.0.2.1:1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let res = send(&app, req_to("/", "192.0.2.1:1")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["ratelimit-policy"],
        "\"default\";q=100;w=3600"
    );
}

#[tokio::test(start_paused = true)]
async fn per_route_layers_the_tower_way() {
    let store = MemoryStore::new();
    let login = RateLimitLayer::new(
        store.clone(),
        Policy::new("login", Quota::per_minute(nonzero!(1))),
    );
    let app = Router::new()
        .route("/login", get(|| async { "login" }).layer(login))
        .route("/free", get(|| async { "free" }));
    assert_eq!(
        send(&app, req_to("/login", "192.0.2.1:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req_to("/login", "192.0.2.1:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..5 {
        let res = send(&app, req_to("/free", "192.0.2.1:1")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key("ratelimit"));
    }
}

#[tokio::test(start_paused = true)]
async fn forged_forwarded_for_is_ignored_without_trusted_proxy() {
    let app = app(RateLimitLayer::new(
        MemoryStore::new(),
        Quota::per_hour(nonzero!(1)),
    ));
    let forged = |ip: &str| {
        let mut r = req("198.51.100.1:1");
        r.headers_mut()
            .insert("x-forwarded-for", ip.parse().unwrap());
        r
    };
    assert_eq!(send(&app, forged("1.1.1.1")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&app, forged("2.2.2.2")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn trusted_proxy_uses_rightmost_untrusted_address() {
    let key = ClientIp::trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
    let app =
        app(RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1))).key(key.clone()));
    let via_proxy = |xff: &str| {
        let mut r = req("10.0.0.2:1");
        r.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    // The client forges a left-most entry; its real address was appended by the proxy.
    assert_eq!(
        send(&app, via_proxy("6.6.6.6, 203.0.113.5, 10.1.1.1"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, via_proxy("7.7.7.7, 203.0.113.5, 10.1.1.1"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS,
        "same right-most untrusted address, same key"
    );
    assert_eq!(
        send(&app, via_proxy("203.0.113.6")).await.status(),
        StatusCode::OK
    );

    let parts = |peer: &str, header: (&'static str, &str)| {
        let mut r = req(peer);
        r.headers_mut().insert(header.0, header.1.parse().unwrap());
        r.into_parts().0
    };
    // An untrusted peer's headers are ignored.
    let p = parts("198.51.100.1:1", ("x-forwarded-for", "203.0.113.5"));
    assert_eq!(key.client_addr(&p), Some("198.51.100.1".parse().unwrap()));
    // Garbage stops the walk at the last trusted hop.
    let p = parts(
        "10.0.0.2:1",
        ("x-forwarded-for", "203.0.113.5, garbage, 10.0.0.3"),
    );
    assert_eq!(key.client_addr(&p), Some("10.0.0.3".parse().unwrap()));
    // RFC 7239, with ports and IPv6, when configured.
    let fwd = key.clone().header(ForwardedHeader::Forwarded);
    let p = parts(
        "10.0.0.2:1",
        (
            "forwarded",
            "for=1.2.3.4, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.9",
        ),
    );
    assert_eq!(fwd.client_addr(&p), Some("2001:db8::1".parse().unwrap()));
    // ... and then X-Forwarded-For is not read at all.
    let p = parts("10.0.0.2:1", ("x-forwarded-for", "203.0.113.5"));
    assert_eq!(fwd.client_addr(&p), Some("10.0.0.2".parse().unwrap()));
}

/// Bytes a client writes into its own `X-Forwarded-For` (non-ASCII included) are left of what
/// the trusted proxy appends: they never change the key, and never move the client into the
/// proxy's bucket.
#[tokio::test(start_paused = true)]
async fn non_ascii_forwarded_for_keeps_the_clients_own_bucket() {
    let key = ClientIp::trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
    let app =
        app(RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1))).key(key.clone()));
    let via_proxy = |xff: &[u8]| {
        let mut r = req("10.0.0.2:1");
        r.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(xff).unwrap(),
        );
        r
    };
    let hostile: &[u8] = b"\xc3\xa9vil\xff, 203.0.113.5";
    assert_eq!(
        key.client_addr(&via_proxy(hostile).into_parts().0),
        Some("203.0.113.5".parse().unwrap())
    );
    // Also when the client's bytes come as a header line of their own.
    let mut two_lines = via_proxy(b"\xff\xfe");
    two_lines
        .headers_mut()
        .append("x-forwarded-for", "203.0.113.5".parse().unwrap());
    assert_eq!(
        key.client_addr(&two_lines.into_parts().0),
        Some("203.0.113.5".parse().unwrap())
    );
    assert_eq!(
        send(&app, via_proxy(hostile)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, via_proxy(b"203.0.113.5")).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the client's own bucket, with or without the hostile bytes"
    );
    assert_eq!(
        send(&app, via_proxy(hostile)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The proxy's bucket was never used: another client through it is served.
    assert_eq!(
        send(&app, via_proxy(b"203.0.113.6")).await.status(),
        StatusCode::OK
    );
    // A hostile entry the walk does reach (written by a trusted hop) stops it at that hop.
    let p = via_proxy(b"203.0.113.5, \xff, 10.0.0.3").into_parts().0;
    assert_eq!(key.client_addr(&p), Some("10.0.0.3".parse().unwrap()));
}

/// `TRUSTED_PROXIES=::ffff:10.0.0.0/104` means the IPv4 network 10.0.0.0/8, for IPv4 peers
/// and for IPv4-mapped IPv6 peers (a dual-stack listener).
#[tokio::test(start_paused = true)]
async fn ipv4_mapped_trusted_proxies_match() {
    for net in ["::ffff:10.0.0.0/104", "10.0.0.0/8", "::/0"] {
        let key = ClientIp::trusted_proxies([net.parse().unwrap()]);
        for peer in ["10.0.0.2:1", "[::ffff:10.0.0.2]:1"] {
            let mut r = req(peer);
            r.headers_mut()
                .insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
            assert_eq!(
                key.client_addr(&r.into_parts().0),
                Some("203.0.113.5".parse().unwrap()),
                "{net} trusts {peer}"
            );
        }
    }
    let key = ClientIp::trusted_proxies(["::ffff:10.0.0.0/104".parse().unwrap()]);
    let mut r = req("[::ffff:11.0.0.2]:1");
    r.headers_mut()
        .insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
    assert_eq!(
        key.client_addr(&r.into_parts().0),
        Some("11.0.0.2".parse().unwrap()),
        "outside the network: the peer itself"
    );
}

#[tokio::test(start_paused = true)]
async fn rotating_ipv6_within_a_64_share_a_limit() {
    let app = app(RateLimitLayer::new(
        MemoryStore::new(),
        Quota::per_hour(nonzero!(2)),
    ));
    assert_eq!(
        send(&app, req("[2001:db8:1:2::1]:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("[2001:db8:1:2:ffff::9]:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("[2001:db8:1:2:abcd::]:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&app, req("[2001:db8:1:3::1]:1")).await.status(),
        StatusCode::OK,
        "another /64"
    );
    // With /56 the next /64 is the same client too.
    let app56 = app_with(PeerIp.ipv6_prefix(56));
    assert_eq!(
        send(&app56, req("[2001:db8:1:2::1]:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app56, req("[2001:db8:1:3::1]:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // IPv4-mapped IPv6 is the IPv4 address.
    let app4 = app_with(PeerIp);
    assert_eq!(
        send(&app4, req("192.0.2.55:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app4, req("[::ffff:192.0.2.55]:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

fn app_with(key: impl redtower_ratelimit::KeyExtractor) -> Router {
    app(RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1))).key(key))
}

#[tokio::test(start_paused = true)]
async fn header_bearer_extension_global_and_closure_keys() {
    let with = |name: &str, value: &str| {
        let mut r = req("192.0.2.1:1");
        r.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        r
    };
    let app = app_with(Header::api_key());
    assert_eq!(
        send(&app, with("x-api-key", "k1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, with("x-api-key", "k1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&app, with("x-api-key", "k2")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::UNAUTHORIZED,
        "missing key"
    );

    let app = app_with(BearerToken.or(PeerIp));
    assert_eq!(
        send(&app, with("authorization", "Bearer abc"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, with("authorization", "bearer abc"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::OK,
        "falls back to the IP"
    );
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    #[derive(Clone)]
    struct User(u32);
    impl std::fmt::Display for User {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }
    let app = app_with(FromExtension::<User>::new());
    let as_user = |id| {
        let mut r = req("192.0.2.1:1");
        r.extensions_mut().insert(User(id));
        r
    };
    assert_eq!(send(&app, as_user(1)).await.status(), StatusCode::OK);
    assert_eq!(
        send(&app, as_user(1)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&app, as_user(2)).await.status(), StatusCode::OK);
    let res = send(&app, req("192.0.2.1:1")).await;
    assert_eq!(
        res.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "auth layer missing"
    );

    let app = app_with(Global);
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("192.0.2.2:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // A closure; None skips the limit (an allow-list).
    let app = app_with(|parts: &http::request::Parts| {
        (parts.headers.get("x-internal").is_none()).then(|| Subject::new("everyone"))
    });
    for _ in 0..3 {
        assert_eq!(
            send(&app, with("x-internal", "1")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn missing_connect_info_is_a_500_or_allowed() {
    let no_peer = || Request::get("/").body(Body::empty()).unwrap();
    let router = app(RateLimitLayer::new(
        MemoryStore::new(),
        Quota::per_hour(nonzero!(1)),
    ));
    let res = send(&router, no_peer()).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body(res)
            .await
            .contains("into_make_service_with_connect_info")
    );
    let router = app(
        RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1)))
            .on_missing_key(MissingKey::Allow),
    );
    for _ in 0..3 {
        assert_eq!(send(&router, no_peer()).await.status(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_records_but_never_rejects() {
    let app =
        app(RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1))).shadow(true));
    for _ in 0..3 {
        let res = send(&app, req("192.0.2.1:1")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key("ratelimit"));
    }
}

#[tokio::test(start_paused = true)]
async fn cost_is_applied_and_checked() {
    let router =
        app(RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(10))).cost(4));
    let res = send(&router, req("192.0.2.1:1")).await;
    assert!(res.headers()["ratelimit"].to_str().unwrap().contains("r=6"));
    let dynamic = RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(10)))
        .cost_fn(|p| if p.uri.path() == "/" { 20 } else { 1 });
    let router = app(dynamic);
    let res = send(&router, req("192.0.2.1:1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        !res.headers().contains_key("retry-after"),
        "it can never pass"
    );
}

#[test]
fn bad_config_is_a_typed_error_at_build_time() {
    let store = MemoryStore::new();
    assert_eq!(
        Quota::new(0, Duration::from_secs(1)),
        Err(ConfigError::ZeroRate)
    );
    assert_eq!(Quota::new(1, Duration::ZERO), Err(ConfigError::ZeroPeriod));
    assert_eq!(
        Quota::new(1, Duration::from_nanos(999)),
        Err(ConfigError::ZeroPeriod)
    );
    let err = RateLimitLayer::new(
        store.clone(),
        Quota::per_second(nonzero!(5)).burst(nonzero!(3)),
    )
    .cost(4)
    .build()
    .unwrap_err();
    assert_eq!(
        err,
        ConfigError::CostAboveCapacity {
            policy: "default",
            cost: 4,
            capacity: 3
        }
    );
    let err = RateLimitLayer::new(store.clone(), Quota::per_second(nonzero!(5)))
        .cost(0)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::ZeroCost);
    let err = RateLimitLayer::new(
        store.clone(),
        Policy::new("a b", Quota::per_second(nonzero!(5))),
    )
    .build()
    .unwrap_err();
    assert_eq!(err, ConfigError::InvalidName("a b"));
    let err = RateLimitLayer::new(
        store.clone(),
        Policy::new("x", Quota::per_second(nonzero!(5))),
    )
    .policy(Policy::new("x", Quota::per_hour(nonzero!(5))))
    .build()
    .unwrap_err();
    assert_eq!(err, ConfigError::DuplicateName("x"));
    let err = RateLimitLayer::with_store(store.clone())
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::NoPolicy);
    let err = RateLimitLayer::new(
        store.clone(),
        Quota::per_day(nonzero!(4_000_000_000)).sliding_window(),
    )
    .build()
    .unwrap_err();
    assert_eq!(err, ConfigError::QuotaTooLarge("default"));
    // An IP prefix out of range is an error at build time, never a panic in the setter, and
    // is found through `or` too.
    let err = RateLimitLayer::new(store.clone(), Quota::per_hour(nonzero!(5)))
        .key(ClientIp::peer().ipv4_prefix(33))
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::InvalidPrefix(33));
    let err = RateLimitLayer::new(store.clone(), Quota::per_hour(nonzero!(5)))
        .key(BearerToken.or(PeerIp.ipv6_prefix(129)))
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::InvalidPrefix(129));
    assert!(
        RateLimitLayer::new(store.clone(), Quota::per_hour(nonzero!(5)))
            .key(ClientIp::peer().ipv4_prefix(32).ipv6_prefix(128))
            .build()
            .is_ok()
    );
    let route_err = RateLimitLayer::new(store, Quota::per_hour(nonzero!(5)))
        .route(
            "/x",
            [Policy::new(
                "r",
                Quota::per_hour(nonzero!(1)).fixed_window(),
            )],
        )
        .cost(2)
        .build()
        .unwrap_err();
    assert_eq!(
        route_err,
        ConfigError::CostAboveCapacity {
            policy: "r",
            cost: 2,
            capacity: 1
        }
    );
}

/// A store that fails (or hangs) on demand and counts its calls.
#[derive(Debug, Clone, Default)]
struct Flaky {
    down: Arc<std::sync::atomic::AtomicBool>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<AtomicUsize>,
    memory: MemoryStore,
}

#[async_trait::async_trait]
impl RateLimitStore for Flaky {
    async fn check(
        &self,
        subject: &Subject,
        policies: &[Policy],
        cost: u32,
    ) -> redtower_ratelimit::Result<Decision> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(redtower_ratelimit::Error::Reply("down".into()));
        }
        self.memory.check(subject, policies, cost).await
    }
}

#[tokio::test(start_paused = true)]
async fn failure_policies_timeout_and_breaker() {
    let flaky = Flaky::default();
    flaky.hang.store(true, Ordering::SeqCst);
    let layer = |policy| {
        RateLimitLayer::new(flaky.clone(), Quota::per_hour(nonzero!(1)))
            .on_store_error(policy)
            .timeout(Duration::from_millis(50))
            .circuit_breaker(CircuitBreaker {
                failures: 2,
                cool_down: Duration::from_secs(5),
            })
    };

    // Fail open: let through, no headers; the first 2 pay the timeout, then the breaker opens.
    let open = app(layer(FailurePolicy::FailOpen));
    for i in 0..5 {
        let started = tokio::time::Instant::now();
        let res = send(&open, req("192.0.2.1:1")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key("ratelimit"));
        let waited = started.elapsed();
        if i < 2 {
            assert_eq!(
                waited,
                Duration::from_millis(50),
                "request {i} bounded by the timeout"
            );
        } else {
            assert_eq!(waited, Duration::ZERO, "request {i}: breaker open, no wait");
        }
    }
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);

    // Recovery: after the cool-down one probe goes through and closes the breaker.
    flaky.hang.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    let res = send(&open, req("192.0.2.1:1")).await;
    assert!(res.headers().contains_key("ratelimit"), "limited again");
    assert_eq!(
        send(&open, req("192.0.2.1:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Fail closed: 503 with Retry-After.
    flaky.down.store(true, Ordering::SeqCst);
    let closed = app(layer(FailurePolicy::FailClosed));
    let res = send(&closed, req("192.0.2.2:1")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");

    // Local fallback: limits still apply, per instance.
    let local = app(layer(FailurePolicy::LocalFallback));
    let res = send(&local, req("192.0.2.3:1")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("ratelimit"));
    assert_eq!(
        send(&local, req("192.0.2.3:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn denied_subjects_are_answered_locally_until_their_retry_time() {
    let flaky = Flaky::default();
    let app = app(RateLimitLayer::new(
        flaky.clone(),
        Quota::per_minute(nonzero!(1)),
    ));
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(20)).await;
    for _ in 0..10 {
        let res = send(&app, req("192.0.2.1:1")).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "40", "aged by the time spent");
    }
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        2,
        "no store call for a cached denial"
    );
    tokio::time::advance(Duration::from_secs(40)).await;
    assert_eq!(
        send(&app, req("192.0.2.1:1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn poll_ready_only_forwards_and_call_uses_the_ready_service() {
    use tower::{Service, ServiceBuilder};
    let ready = Arc::new(AtomicUsize::new(0));
    let r = ready.clone();
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
    });
    let inner = ServiceBuilder::new()
        .map_request(move |req| {
            r.fetch_add(1, Ordering::SeqCst);
            req
        })
        .service(inner);
    let mut svc = RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(5)))
        .key(Global)
        .build()
        .unwrap()
        .layer_service(inner);
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let res = svc.call(Request::new(Body::empty())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(ready.load(Ordering::SeqCst), 1);
}

trait LayerService {
    fn layer_service<S>(&self, s: S) -> redtower_ratelimit::RateLimit<S>;
}

impl LayerService for RateLimitLayer {
    fn layer_service<S>(&self, s: S) -> redtower_ratelimit::RateLimit<S> {
        tower::Layer::layer(self, s)
    }
}
