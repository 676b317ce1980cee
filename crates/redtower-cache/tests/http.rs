//! The response cache Layer on the memory backend, with a paused clock.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::RawQuery,
    http::{HeaderMap, HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use redtower_cache::{Cache, Credentials, MemoryStore, QueryKey, ResponseCacheLayer};
use tower::ServiceExt;

const TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn cache() -> Cache {
    Cache::new(MemoryStore::new())
}

/// A router with one cached route whose handler `f` gets the call number.
fn router<F, R>(layer: ResponseCacheLayer, calls: &Counter, f: F) -> Router
where
    F: Fn(usize, HeaderMap, Option<String>) -> R + Clone + Send + Sync + 'static,
    R: IntoResponse,
{
    let calls = calls.clone();
    Router::new().route(
        "/r",
        get(move |headers: HeaderMap, RawQuery(q): RawQuery| {
            let f = f.clone();
            let calls = calls.clone();
            async move { f(calls.next(), headers, q) }
        })
        .post(|| async { StatusCode::CREATED })
        .layer(layer),
    )
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

async fn send(app: &Router, req: Request<Body>) -> Got {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn get_with(uri: &str, name: &str, value: &str) -> Request<Body> {
    Request::get(uri)
        .header(name, value)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn miss_then_hit_with_age_and_status_headers() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        format!("call {n}")
    });
    let first = send(&app, get_req("/r")).await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        first.header("cache-status"),
        "redtower; fwd=uri-miss; stored; ttl=10"
    );
    assert_eq!(first.header("age"), "0");
    tokio::time::advance(Duration::from_secs(4)).await;
    let second = send(&app, get_req("/r")).await;
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.text(), "call 1");
    assert_eq!(second.header("age"), "4");
    assert_eq!(second.header("cache-status"), "redtower; hit; ttl=6");
    assert_eq!(second.header("content-type"), "text/plain; charset=utf-8");
    assert!(second.header("etag").starts_with('"'), "ETag generated");
    assert_eq!(calls.get(), 1);
    tokio::time::advance(Duration::from_secs(7)).await;
    let third = send(&app, get_req("/r")).await;
    assert_eq!((third.x_cache(), third.text().as_str()), ("MISS", "call 2"));
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_background() {
    let calls = Counter::default();
    let layer =
        ResponseCacheLayer::new(cache(), TTL).stale_while_revalidate(Duration::from_secs(60));
    let app = router(layer, &calls, |n, _, _| format!("v{n}"));
    assert_eq!(send(&app, get_req("/r")).await.text(), "v1");
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    let stale: Vec<Got> =
        futures::future::join_all((0..20).map(|_| send(&app, get_req("/r")))).await;
    for got in &stale {
        assert_eq!((got.x_cache(), got.text().as_str()), ("STALE", "v1"));
        assert!(
            got.header("cache-status").contains("ttl=-1"),
            "{}",
            got.header("cache-status")
        );
    }
    // Let the background refresh run.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(calls.get(), 2, "one background refresh for 20 stale hits");
    let fresh = send(&app, get_req("/r")).await;
    assert_eq!((fresh.x_cache(), fresh.text().as_str()), ("HIT", "v2"));
    // A stale HEAD refreshes the GET entry (with its body).
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    let head = send(&app, Request::head("/r").body(Body::empty()).unwrap()).await;
    assert_eq!(head.x_cache(), "STALE");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let fresh = send(&app, get_req("/r")).await;
    assert_eq!((fresh.x_cache(), fresh.text().as_str()), ("HIT", "v3"));
}

#[tokio::test(start_paused = true)]
async fn set_cookie_responses_are_never_replayed() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        (
            [(header::SET_COOKIE, format!("session=user{n}"))],
            "private",
        )
    });
    let a = send(&app, get_req("/r")).await;
    let b = send(&app, get_req("/r")).await;
    assert_eq!(a.header("set-cookie"), "session=user1");
    assert_eq!(
        b.header("set-cookie"),
        "session=user2",
        "never another client's cookie"
    );
    assert_eq!(b.x_cache(), "MISS");
    assert!(b.header("cache-status").ends_with("detail=SET-COOKIE"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn credentials_bypass_unless_the_route_opts_in() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        format!("{n}")
    });
    assert_eq!(send(&app, get_req("/r")).await.text(), "1");
    // RFC 9111 3.5: a request with `Authorization` is not answered from a response that
    // does not allow it (`public`, `s-maxage`, `must-revalidate`), and its own response is
    // not stored.
    let auth = send(&app, get_with("/r", "authorization", "Bearer alice")).await;
    assert_eq!((auth.x_cache(), auth.text().as_str()), ("MISS", "2"));
    assert!(
        auth.header("cache-status")
            .ends_with("detail=AUTHORIZATION")
    );
    let session = send(&app, get_with("/r", "cookie", "theme=dark; id=abc")).await;
    assert_eq!(
        (session.x_cache(), session.text().as_str()),
        ("BYPASS", "3")
    );
    let other_cookie = send(&app, get_with("/r", "cookie", "theme=dark")).await;
    assert_eq!(
        (other_cookie.x_cache(), other_cookie.text().as_str()),
        ("HIT", "1")
    );

    // Per-user caching keys on the credential.
    let calls = Counter::default();
    let layer = ResponseCacheLayer::new(cache(), TTL).credentials(Credentials::PerUser);
    let app = router(layer, &calls, |_, h: HeaderMap, _| {
        h.get("authorization").unwrap().to_str().unwrap().to_owned()
    });
    for _ in 0..2 {
        assert_eq!(
            send(&app, get_with("/r", "authorization", "alice"))
                .await
                .text(),
            "alice"
        );
        assert_eq!(
            send(&app, get_with("/r", "authorization", "bob"))
                .await
                .text(),
            "bob"
        );
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn private_no_store_and_no_cache_responses_are_not_stored() {
    for cc in ["private, max-age=60", "no-store", "no-cache", "max-age=0"] {
        let calls = Counter::default();
        let app = router(
            ResponseCacheLayer::new(cache(), TTL),
            &calls,
            move |n, _, _| ([(header::CACHE_CONTROL, cc)], format!("{n}")),
        );
        send(&app, get_req("/r")).await;
        let second = send(&app, get_req("/r")).await;
        assert_eq!(
            (second.x_cache(), second.text().as_str()),
            ("MISS", "2"),
            "{cc}"
        );
        assert_eq!(second.header("cache-control"), cc);
    }
}

#[tokio::test(start_paused = true)]
async fn request_no_store_bypasses_and_no_cache_refetches() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        format!("{n}")
    });
    send(&app, get_req("/r")).await;
    let bypass = send(&app, get_with("/r", "cache-control", "no-store")).await;
    assert_eq!((bypass.x_cache(), bypass.text().as_str()), ("BYPASS", "2"));
    let refetch = send(&app, get_with("/r", "cache-control", "no-cache")).await;
    assert_eq!((refetch.x_cache(), refetch.text().as_str()), ("MISS", "3"));
    let hit = send(&app, get_req("/r")).await;
    assert_eq!(
        (hit.x_cache(), hit.text().as_str()),
        ("HIT", "3"),
        "the refetch was stored"
    );
}

#[tokio::test(start_paused = true)]
async fn vary_gives_each_accept_language_its_own_entry() {
    let calls = Counter::default();
    let handler = |_, h: HeaderMap, _| {
        let lang = h
            .get("accept-language")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        ([(header::VARY, "Accept-Language")], lang)
    };
    // Not declared: the first response is stored under its variant (RFC 9111 4.1), the
    // request without the header is a variant of its own.
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, handler);
    let first = send(&app, get_with("/r", "accept-language", "en")).await;
    assert_eq!(first.x_cache(), "MISS");
    assert!(first.header("cache-status").contains("stored"));
    for lang in ["fr", "de"] {
        assert_eq!(
            send(&app, get_with("/r", "accept-language", lang))
                .await
                .text(),
            lang
        );
    }
    for lang in ["en", "fr", "de"] {
        let got = send(&app, get_with("/r", "accept-language", lang)).await;
        assert_eq!((got.x_cache(), got.text().as_str()), ("HIT", lang));
    }
    let none = send(&app, get_req("/r")).await;
    assert_eq!((none.x_cache(), none.text().as_str()), ("MISS", "none"));
    let none = send(&app, get_req("/r")).await;
    assert_eq!((none.x_cache(), none.text().as_str()), ("HIT", "none"));
    assert_eq!(calls.get(), 4);

    // Declared: stored from the first request.
    let calls = Counter::default();
    let layer =
        ResponseCacheLayer::new(cache(), TTL).key_headers([axum::http::header::ACCEPT_LANGUAGE]);
    let app = router(layer, &calls, handler);
    assert_eq!(
        send(&app, get_with("/r", "accept-language", "en"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        send(&app, get_with("/r", "accept-language", "en"))
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(
        send(&app, get_with("/r", "accept-language", "fr"))
            .await
            .text(),
        "fr"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_stored() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        ([(header::VARY, "*")], format!("{n}"))
    });
    send(&app, get_req("/r")).await;
    let second = send(&app, get_req("/r")).await;
    assert_eq!((second.x_cache(), second.text().as_str()), ("MISS", "2"));
}

#[tokio::test(start_paused = true)]
async fn unlisted_query_parameters_cannot_poison_the_entry() {
    let calls = Counter::default();
    let layer = ResponseCacheLayer::new(cache(), TTL).query(QueryKey::allow(["page"]));
    let app = router(layer, &calls, |_, _, q: Option<String>| {
        q.unwrap_or_default()
    });
    let attack = send(&app, get_req("/r?page=1&utm=%3Cscript%3E")).await;
    assert_eq!(
        attack.text(),
        "page=1",
        "the handler never sees the unkeyed parameter"
    );
    let victim = send(&app, get_req("/r?page=1")).await;
    assert_eq!(
        (victim.x_cache(), victim.text().as_str()),
        ("HIT", "page=1")
    );
    let page2 = send(&app, get_req("/r?utm=x&page=2")).await;
    assert_eq!((page2.x_cache(), page2.text().as_str()), ("MISS", "page=2"));

    // Sorted (opted in): order does not matter, values do.
    let calls = Counter::default();
    let app = router(
        ResponseCacheLayer::new(cache(), TTL).query(QueryKey::Sorted),
        &calls,
        |_, _, q: Option<String>| q.unwrap_or_default(),
    );
    send(&app, get_req("/r?a=1&b=2")).await;
    assert_eq!(send(&app, get_req("/r?b=2&a=1")).await.x_cache(), "HIT");
    assert_eq!(send(&app, get_req("/r?b=2&a=2")).await.x_cache(), "MISS");

    // Ignore (the default): no parameter is keyed, and the handler sees none.
    let calls = Counter::default();
    let app = router(
        ResponseCacheLayer::new(cache(), TTL),
        &calls,
        |_, _, q: Option<String>| q.unwrap_or_default(),
    );
    let first = send(&app, get_req("/r?r=1")).await;
    assert_eq!((first.x_cache(), first.text().as_str()), ("MISS", ""));
    let other = send(&app, get_req("/r?r=2&page=9")).await;
    assert_eq!((other.x_cache(), other.text().as_str()), ("HIT", ""));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_gets_304_from_the_cache_without_the_handler() {
    let calls = Counter::default();
    let app = router(
        ResponseCacheLayer::new(cache(), TTL),
        &calls,
        |_, h: HeaderMap, _| {
            assert!(
                !h.contains_key("if-none-match"),
                "conditionals never reach the handler"
            );
            "body"
        },
    );
    let first = send(&app, get_with("/r", "if-none-match", "\"nope\"")).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10);
    let revalidate = send(&app, get_with("/r", "if-none-match", &format!("W/{etag}"))).await;
    assert_eq!(revalidate.status, StatusCode::NOT_MODIFIED);
    assert!(revalidate.body.is_empty());
    assert_eq!(revalidate.header("etag"), etag);
    assert_eq!(revalidate.x_cache(), "HIT");
    assert_eq!(calls.get(), 1);
    // A handler's own ETag is kept.
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |_, _, _| {
        ([(header::ETAG, "\"v7\"")], "body")
    });
    send(&app, get_req("/r")).await;
    let got = send(&app, get_with("/r", "if-none-match", "\"v7\"")).await;
    assert_eq!(got.status, StatusCode::NOT_MODIFIED);
    // A miss whose fresh response matches is a 304 too.
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |_, _, _| {
        ([(header::ETAG, "\"v7\"")], "body")
    });
    let got = send(&app, get_with("/r", "if-none-match", "\"v7\"")).await;
    assert_eq!(
        (got.status, got.x_cache()),
        (StatusCode::NOT_MODIFIED, "MISS")
    );
}

#[tokio::test(start_paused = true)]
async fn head_is_served_from_the_get_entry_and_never_stored() {
    let calls = Counter::default();
    let app = router(
        ResponseCacheLayer::new(cache(), TTL),
        &calls,
        |_, _, _| "0123456789",
    );
    let head = send(&app, Request::head("/r").body(Body::empty()).unwrap()).await;
    assert_eq!(head.x_cache(), "MISS");
    assert_eq!(
        send(&app, get_req("/r")).await.x_cache(),
        "MISS",
        "HEAD stored nothing"
    );
    let head = send(&app, Request::head("/r").body(Body::empty()).unwrap()).await;
    assert_eq!((head.status, head.x_cache()), (StatusCode::OK, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "10");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn oversized_bodies_stream_through_untouched_and_are_not_stored() {
    let big = "x".repeat(4096);
    let calls = Counter::default();
    let layer = ResponseCacheLayer::new(cache(), TTL).max_body(1024);
    let body = big.clone();
    let app = router(layer.clone(), &calls, move |_, _, _| body.clone());
    for _ in 0..2 {
        let got = send(&app, get_req("/r")).await;
        assert_eq!(got.text(), big);
        assert!(got.header("cache-status").ends_with("detail=TOO-LARGE"));
    }
    assert_eq!(calls.get(), 2);
    // Unknown length: read up to the cap, then the rest streams; nothing lost, nothing stored.
    let calls = Counter::default();
    let app = router(layer, &calls, |_, _, _| {
        let chunks = (0..8).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'y'; 512])));
        Body::from_stream(futures::stream::iter(chunks))
    });
    for _ in 0..2 {
        let got = send(&app, get_req("/r")).await;
        assert_eq!(got.body.len(), 4096);
        assert!(got.header("cache-status").ends_with("detail=TOO-LARGE"));
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn event_streams_are_never_buffered() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let calls = Counter::default();
    let app = router(
        ResponseCacheLayer::new(cache(), TTL),
        &calls,
        move |_, _, _| {
            let rx = rx.lock().unwrap().take().unwrap();
            let stream = tokio_stream_from(rx);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        },
    );
    tx.send(Ok(Bytes::from_static(b"data: 1\n\n")))
        .await
        .unwrap();
    // The stream never ends (tx is alive), yet the response arrives: it was not buffered.
    let resp = app.clone().oneshot(get_req("/r")).await.unwrap();
    assert!(
        resp.headers()["cache-status"]
            .to_str()
            .unwrap()
            .ends_with("detail=STREAM")
    );
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");
    drop(tx);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(start_paused = true)]
async fn successful_unsafe_requests_invalidate_their_uri() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        format!("{n}")
    });
    send(&app, get_req("/r")).await;
    assert_eq!(send(&app, get_req("/r")).await.x_cache(), "HIT");
    let post = send(&app, Request::post("/r").body(Body::empty()).unwrap()).await;
    assert_eq!(post.status, StatusCode::CREATED);
    let after = send(&app, get_req("/r")).await;
    assert_eq!((after.x_cache(), after.text().as_str()), ("MISS", "2"));
}

#[tokio::test(start_paused = true)]
async fn response_freshness_overrides_the_route_ttl() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        (
            [(header::CACHE_CONTROL, "public, max-age=100, s-maxage=30")],
            format!("{n}"),
        )
    });
    send(&app, get_req("/r")).await;
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(send(&app, get_req("/r")).await.x_cache(), "HIT");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(send(&app, get_req("/r")).await.x_cache(), "MISS");
    // Expires works too.
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |_, _, _| {
        (
            [
                (header::DATE, "Thu, 01 Jan 2015 00:00:00 GMT"),
                (header::EXPIRES, "Thu, 01 Jan 2015 00:01:00 GMT"),
            ],
            "x",
        )
    });
    send(&app, get_req("/r")).await;
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(send(&app, get_req("/r")).await.x_cache(), "HIT");
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_forbids_stale_serving() {
    let calls = Counter::default();
    let layer =
        ResponseCacheLayer::new(cache(), TTL).stale_while_revalidate(Duration::from_secs(60));
    let app = router(layer, &calls, |n, _, _| {
        (
            [(header::CACHE_CONTROL, "max-age=10, must-revalidate")],
            format!("{n}"),
        )
    });
    send(&app, get_req("/r")).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let got = send(&app, get_req("/r")).await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("MISS", "2"));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_a_failing_handler() {
    let calls = Counter::default();
    let layer = ResponseCacheLayer::new(cache(), TTL).stale_if_error(Duration::from_secs(60));
    let app = router(layer, &calls, |n, _, _| {
        if n == 1 {
            (StatusCode::OK, "good".to_owned())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "down".to_owned())
        }
    });
    send(&app, get_req("/r")).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let got = send(&app, get_req("/r")).await;
    assert_eq!(
        (got.status, got.x_cache(), got.text().as_str()),
        (StatusCode::OK, "STALE", "good")
    );
    assert!(got.header("cache-status").contains("fwd-status=503"));
    tokio::time::advance(Duration::from_secs(60)).await;
    let got = send(&app, get_req("/r")).await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "past the window the error shows"
    );
}

#[tokio::test(start_paused = true)]
async fn only_cacheable_statuses_are_stored() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |n, _, _| {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{n}"))
    });
    send(&app, get_req("/r")).await;
    assert_eq!(send(&app, get_req("/r")).await.text(), "2");
    let calls = Counter::default();
    let app404 = |layer| {
        router(layer, &calls, |n, _, _| {
            (StatusCode::NOT_FOUND, format!("{n}"))
        })
    };
    let plain = app404(ResponseCacheLayer::new(cache(), TTL));
    send(&plain, get_req("/r")).await;
    assert_eq!(send(&plain, get_req("/r")).await.x_cache(), "MISS");
    let negative =
        app404(ResponseCacheLayer::new(cache(), TTL).negative_ttl(Duration::from_secs(5)));
    send(&negative, get_req("/r")).await;
    let got = send(&negative, get_req("/r")).await;
    assert_eq!((got.status, got.x_cache()), (StatusCode::NOT_FOUND, "HIT"));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(send(&negative, get_req("/r")).await.x_cache(), "MISS");
}

#[tokio::test(start_paused = true)]
async fn hop_by_hop_and_status_headers_are_not_stored() {
    let calls = Counter::default();
    let app = router(ResponseCacheLayer::new(cache(), TTL), &calls, |_, _, _| {
        (
            [
                (header::CONNECTION, HeaderValue::from_static("close")),
                (
                    header::HeaderName::from_static("x-kept"),
                    HeaderValue::from_static("1"),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=60, no-cache=\"x-secret\""),
                ),
                (
                    header::HeaderName::from_static("x-secret"),
                    HeaderValue::from_static("s"),
                ),
            ],
            "x",
        )
    });
    let miss = send(&app, get_req("/r")).await;
    assert_eq!(miss.x_cache(), "MISS");
    let hit = send(&app, get_req("/r")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-kept"), "1");
    assert_eq!(hit.header("connection"), "");
    assert_eq!(
        hit.header("x-secret"),
        "",
        "no-cache=\"x-secret\" strips it"
    );
}

#[tokio::test(start_paused = true)]
async fn tag_invalidation_drops_tagged_responses() {
    let calls = Counter::default();
    let cache = cache();
    let layer = ResponseCacheLayer::new(cache.clone(), TTL).tags(["products"]);
    let app = router(layer, &calls, |n, _, _| format!("{n}"));
    send(&app, get_req("/r")).await;
    assert_eq!(send(&app, get_req("/r")).await.x_cache(), "HIT");
    cache.invalidate_tag("products").await.unwrap();
    let got = send(&app, get_req("/r")).await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("MISS", "2"));
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_run_the_handler_once() {
    let calls = Counter::default();
    let calls2 = calls.clone();
    let layer = ResponseCacheLayer::new(cache(), TTL);
    let app = Router::new().route(
        "/r",
        get(move || {
            let calls = calls2.clone();
            async move {
                calls.next();
                tokio::time::sleep(Duration::from_millis(200)).await;
                "slow"
            }
        })
        .layer(layer),
    );
    let all = futures::future::join_all((0..100).map(|_| send(&app, get_req("/r")))).await;
    assert!(
        all.iter()
            .all(|g| g.status == StatusCode::OK && g.text() == "slow")
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(all.iter().filter(|g| g.x_cache() == "MISS").count(), 1);
}
