//! RFC 9111 (and RFC 9213) behaviours of the response cache, one scenario per behaviour, run on
//! the memory store and on Redis (standalone and Cluster).
//!
//! The scenarios run on the wall clock (the Redis store's time base), so the few that need a
//! stale entry use `max-age=1` and wait for it to pass.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use redtower_cache::{Cache, MemoryStore, RedisStore, ResponseCacheLayer};
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::unique_prefix;
use tower::{Layer, ServiceExt, service_fn};

/// Runs each named scenario against a cache made by `$make(test_name)` (an async fn).
macro_rules! scenarios {
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let cache = $make(stringify!($name)).await;
                super::$name(cache).await;
            }
        )*
    };
}

macro_rules! all_scenarios {
    ($make:path) => {
        scenarios!($make;
            vary_first_response_is_stored_per_variant,
            vary_record_serves_another_instance,
            vary_star_never_matches,
            explicit_freshness_stores_any_understood_status,
            cdn_cache_control_takes_precedence,
            targeted_field_takes_precedence_over_cdn_cache_control,
            stale_entry_is_revalidated_and_a_304_merged,
            a_200_to_a_revalidation_replaces_the_entry,
            origin_age_counts_toward_the_entry_age,
            unknown_unsafe_methods_invalidate,
            single_ranges_are_served_from_a_full_response,
            set_cookie_storing_is_an_option,
            heuristic_freshness_is_an_option,
            authorization_reuses_only_responses_that_allow_it,
            no_cache_responses_are_revalidated_before_each_use,
            expires_dates_are_read_leniently,
            must_understand_overrides_no_store_for_known_statuses,
            unknown_content_codings_are_replayed_as_they_are,
            vary_values_are_normalised,
            stale_if_error_wins_over_a_storable_5xx,
            partial_responses_are_stored_for_their_range,
        );
    };
}

mod memory {
    use super::*;

    async fn make(_test: &str) -> Cache {
        Cache::new(MemoryStore::new())
    }

    all_scenarios!(make);
}

async fn connect(url: &str, test: &str) -> Cache {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    Cache::new(RedisStore::new(redis))
}

mod redis_standalone {
    use super::*;

    async fn make(test: &str) -> Cache {
        connect(&redtower_testkit::shared_url(), test).await
    }

    all_scenarios!(make);
}

mod redis_cluster {
    use super::*;

    async fn make(test: &str) -> Cache {
        connect(&redtower_testkit::shared_cluster().url(), test).await
    }

    all_scenarios!(make);
}

/// What the origin saw: the call count and the last request's headers.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

type Reply = Response<Body>;

/// A service answering with `f(call number, request)`, behind `layer`.
fn app<F>(
    layer: &ResponseCacheLayer,
    origin: &Origin,
    f: F,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<redtower_cache::ResponseBody<Body>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static
where
    F: Fn(usize, &Request<Body>) -> Reply + Clone + Send + Sync + 'static,
{
    let calls = origin.calls.clone();
    layer.layer(service_fn(move |req: Request<Body>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let resp = f(n, &req);
        async move { Ok::<_, Infallible>(resp) }
    }))
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(body.into()).unwrap()
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn x_cache(&self) -> &str {
        self.header("x-cache")
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

async fn send<S>(svc: &S, method: &str, uri: &str, headers: &[(&str, &str)]) -> Got
where
    S: tower::Service<
            Request<Body>,
            Response = Response<redtower_cache::ResponseBody<Body>>,
            Error = Infallible,
        > + Clone,
{
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri)
        .header(header::HOST, "example.test");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = svc
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get<S>(svc: &S, headers: &[(&str, &str)]) -> Got
where
    S: tower::Service<
            Request<Body>,
            Response = Response<redtower_cache::ResponseBody<Body>>,
            Error = Infallible,
        > + Clone,
{
    send(svc, "GET", "/r", headers).await
}

/// A layer with no default freshness: only what responses state counts.
fn layer(cache: &Cache) -> ResponseCacheLayer {
    ResponseCacheLayer::new(cache.clone(), Duration::ZERO)
}

fn by_language(_: usize, req: &Request<Body>) -> Reply {
    let lang = req
        .headers()
        .get("accept-language")
        .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
    reply(
        200,
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        lang,
    )
}

/// RFC 9111 4.1: the first response naming an undeclared header in `Vary` is stored, keyed on
/// that header's value; other values are other variants.
async fn vary_first_response_is_stored_per_variant(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, by_language);
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let first = get(&svc, &en).await;
    assert_eq!((first.x_cache(), first.text()), ("MISS", "en"));
    assert!(first.header("cache-status").contains("stored"));
    let again = get(&svc, &en).await;
    assert_eq!((again.x_cache(), again.text()), ("HIT", "en"));
    let other = get(&svc, &fr).await;
    assert_eq!((other.x_cache(), other.text()), ("MISS", "fr"));
    assert_eq!(get(&svc, &fr).await.text(), "fr");
    assert_eq!(get(&svc, &en).await.x_cache(), "HIT");
    // Without the header: a variant of its own.
    assert_eq!(get(&svc, &[]).await.text(), "none");
    assert_eq!(origin.calls(), 3);
}

/// The URI's Vary record lets an instance that never saw the response find its variant.
async fn vary_record_serves_another_instance(cache: Cache) {
    let origin = Origin::default();
    let one = app(&layer(&cache), &origin, by_language);
    let two = app(&layer(&cache), &origin, by_language);
    let en = [("accept-language", "en")];
    assert_eq!(get(&one, &en).await.x_cache(), "MISS");
    let other = get(&two, &en).await;
    assert_eq!((other.x_cache(), other.text()), ("HIT", "en"));
    let fr = get(&two, &[("accept-language", "fr")]).await;
    assert_eq!((fr.x_cache(), fr.text()), ("MISS", "fr"));
    assert_eq!(
        get(&one, &[("accept-language", "fr")]).await.x_cache(),
        "HIT"
    );
    assert_eq!(origin.calls(), 2);
}

/// RFC 9111 4.1: `Vary: *` never matches.
async fn vary_star_never_matches(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, _| {
        reply(
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
            n.to_string(),
        )
    });
    get(&svc, &[]).await;
    let second = get(&svc, &[]).await;
    assert_eq!((second.x_cache(), second.text()), ("MISS", "2"));
}

/// RFC 9111 3: any final status the cache understands is stored given explicit freshness;
/// without it only the heuristically cacheable ones (and never `206` as a full response).
async fn explicit_freshness_stores_any_understood_status(cache: Cache) {
    for (status, cc, stored) in [
        (500, "max-age=60", true),
        (302, "max-age=60", true),
        (599, "max-age=60", true),
        (400, "s-maxage=60", true),
        (206, "max-age=60", false),
        (500, "", false),
        (404, "", false),
    ] {
        let origin = Origin::default();
        let svc = app(
            &ResponseCacheLayer::new(cache.clone(), Duration::from_secs(60)),
            &origin,
            move |n, _| {
                let headers: &[(&str, &str)] = if cc.is_empty() {
                    &[]
                } else {
                    &[("cache-control", cc)]
                };
                reply(status, headers, n.to_string())
            },
        );
        let uri = format!("/status-{status}-{}", cc.len());
        send(&svc, "GET", &uri, &[]).await;
        let second = send(&svc, "GET", &uri, &[]).await;
        assert_eq!(second.status.as_u16(), status);
        assert_eq!(
            second.text() == "1",
            stored,
            "{status} with {cc:?}: {}",
            second.header("cache-status")
        );
    }
}

/// RFC 9213: a valid `CDN-Cache-Control` replaces `Cache-Control` and `Expires` for this
/// cache (both ways); an invalid one is ignored.
async fn cdn_cache_control_takes_precedence(cache: Cache) {
    for (i, (cc, cdn, stored)) in [
        ("no-store", "max-age=60", true),
        ("max-age=60", "no-store", false),
        ("max-age=60", "private", false),
        ("max-age=60", "max-age=0", false),
        ("max-age=60", "max-age =0", true),
    ]
    .into_iter()
    .enumerate()
    {
        let origin = Origin::default();
        let svc = app(&layer(&cache), &origin, move |n, _| {
            reply(
                200,
                &[("cache-control", cc), ("cdn-cache-control", cdn)],
                n.to_string(),
            )
        });
        let uri = format!("/cdn-{i}");
        send(&svc, "GET", &uri, &[]).await;
        let second = send(&svc, "GET", &uri, &[]).await;
        assert_eq!(second.text() == "1", stored, "{cc} / {cdn}");
        // Passed on to the client.
        assert_eq!(second.header("cdn-cache-control"), cdn);
    }
    // Turned off: `Cache-Control` alone decides.
    let origin = Origin::default();
    let svc = app(&layer(&cache).cdn_cache_control(false), &origin, |n, _| {
        reply(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            n.to_string(),
        )
    });
    send(&svc, "GET", "/cdn-off", &[]).await;
    assert_eq!(send(&svc, "GET", "/cdn-off", &[]).await.text(), "2");
}

/// RFC 9213 2.1: the layer's own targeted field comes first in its target list.
async fn targeted_field_takes_precedence_over_cdn_cache_control(cache: Cache) {
    let field = HeaderName::from_static("redtower-cache-control");
    let origin = Origin::default();
    let svc = app(
        &layer(&cache).targeted_cache_control(field.clone()),
        &origin,
        |n, _| {
            reply(
                200,
                &[
                    ("cache-control", "no-cache"),
                    ("cdn-cache-control", "no-store"),
                    ("redtower-cache-control", "max-age=60"),
                ],
                n.to_string(),
            )
        },
    );
    send(&svc, "GET", "/own", &[]).await;
    let second = send(&svc, "GET", "/own", &[]).await;
    assert_eq!((second.x_cache(), second.text()), ("HIT", "1"));
    // Without the own field present, `CDN-Cache-Control` still applies.
    let origin = Origin::default();
    let svc = app(
        &layer(&cache).targeted_cache_control(field),
        &origin,
        |n, _| {
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("cdn-cache-control", "no-store"),
                ],
                n.to_string(),
            )
        },
    );
    send(&svc, "GET", "/own-absent", &[]).await;
    assert_eq!(send(&svc, "GET", "/own-absent", &[]).await.text(), "2");
}

/// An origin that answers `If-None-Match: "v1"` with a 304 carrying `headers`.
fn validating(
    headers: &'static [(&'static str, &'static str)],
) -> impl Fn(usize, &Request<Body>) -> Reply + Clone {
    move |n, req| {
        if req
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v == "\"v1\"")
        {
            return reply(304, headers, Body::empty());
        }
        reply(
            200,
            &[
                ("cache-control", "max-age=1, must-revalidate"),
                ("etag", "\"v1\""),
                ("test-header", "A"),
            ],
            format!("body {n}"),
        )
    }
}

/// Waits until an entry stored with `max-age=1` is stale.
async fn until_stale() {
    // The Redis store's clock is the wall clock: only real time makes an entry stale.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// RFC 9111 4.3: a stale entry with a validator is revalidated with a conditional request;
/// a 304 updates its headers (4.3.4, not `Content-Length`) and freshness, and the stored body
/// is served.
async fn stale_entry_is_revalidated_and_a_304_merged(cache: Cache) {
    let origin = Origin::default();
    let svc = app(
        &layer(&cache),
        &origin,
        validating(&[
            ("cache-control", "max-age=60"),
            ("test-header", "B"),
            ("content-length", "0"),
        ]),
    );
    let first = get(&svc, &[]).await;
    assert_eq!((first.text(), first.header("test-header")), ("body 1", "A"));
    until_stale().await;
    let second = get(&svc, &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        (second.text(), second.header("test-header")),
        ("body 1", "B")
    );
    assert_eq!(second.header("content-length"), "");
    let third = get(&svc, &[]).await;
    assert_eq!(third.x_cache(), "HIT");
    assert_eq!((third.text(), third.header("test-header")), ("body 1", "B"));
    assert_eq!(origin.calls(), 2);
    // A client's own conditional request is answered from the refreshed entry.
    let not_modified = get(&svc, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 2);
}

/// A full response to a revalidation replaces the entry.
async fn a_200_to_a_revalidation_replaces_the_entry(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, _| {
        reply(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ],
            format!("body {n}"),
        )
    });
    assert_eq!(get(&svc, &[]).await.text(), "body 1");
    until_stale().await;
    assert_eq!(get(&svc, &[]).await.text(), "body 2");
    let third = get(&svc, &[]).await;
    assert_eq!((third.x_cache(), third.text()), ("HIT", "body 2"));
}

/// RFC 9111 4.2.3: the origin's `Age` counts toward the entry's age (and the `Age` sent
/// back); of `Age: 7200, 0` the first value counts.
async fn origin_age_counts_toward_the_entry_age(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, _| {
        reply(
            200,
            &[("cache-control", "max-age=3600"), ("age", "30")],
            n.to_string(),
        )
    });
    let first = get(&svc, &[]).await;
    assert!(first.header("age").parse::<u64>().unwrap() >= 30);
    let second = get(&svc, &[]).await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(second.header("age").parse::<u64>().unwrap() >= 30);

    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, _| {
        reply(
            200,
            &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
            n.to_string(),
        )
    });
    send(&svc, "GET", "/old", &[]).await;
    assert_eq!(send(&svc, "GET", "/old", &[]).await.text(), "2");
}

/// RFC 9111 4.4: a non-error response to any unsafe method, known or not, invalidates the
/// URI (and a same-host `Location`); an error response does not.
async fn unknown_unsafe_methods_invalidate(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, req| {
        match (req.method().as_str(), req.uri().path()) {
            ("M-SEARCH", "/fail") => reply(500, &[], ""),
            ("M-SEARCH", _) => reply(200, &[("location", "/other")], ""),
            _ => reply(200, &[("cache-control", "max-age=60")], n.to_string()),
        }
    });
    for uri in ["/r", "/other", "/fail"] {
        send(&svc, "GET", uri, &[]).await;
        assert_eq!(send(&svc, "GET", uri, &[]).await.x_cache(), "HIT");
    }
    send(&svc, "M-SEARCH", "/r", &[]).await;
    assert_eq!(send(&svc, "GET", "/r", &[]).await.x_cache(), "MISS");
    assert_eq!(send(&svc, "GET", "/other", &[]).await.x_cache(), "MISS");
    send(&svc, "M-SEARCH", "/fail", &[]).await;
    assert_eq!(send(&svc, "GET", "/fail", &[]).await.x_cache(), "HIT");
    // Safe methods never invalidate.
    send(&svc, "OPTIONS", "/r", &[]).await;
    assert_eq!(send(&svc, "GET", "/r", &[]).await.x_cache(), "HIT");
}

/// RFC 9110 14.2: one byte range is served from a stored full response; several ranges, or an
/// unsatisfiable one, go to the handler as they are.
async fn single_ranges_are_served_from_a_full_response(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |_, req| {
        if req.headers().contains_key(header::RANGE) {
            return reply(200, &[], "from origin");
        }
        reply(200, &[("cache-control", "max-age=60")], "0123456789")
    });
    get(&svc, &[]).await;
    for (range, part, content_range) in [
        ("bytes=2-4", "234", "bytes 2-4/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-3", "789", "bytes 7-9/10"),
        ("bytes=8-100", "89", "bytes 8-9/10"),
    ] {
        let got = get(&svc, &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            (got.text(), got.header("content-range")),
            (part, content_range)
        );
        assert_eq!(got.header("content-length"), part.len().to_string());
    }
    assert_eq!(origin.calls(), 1);
    for range in ["bytes=0-1,4-5", "bytes=20-", "items=0-1"] {
        assert_eq!(get(&svc, &[("range", range)]).await.text(), "from origin");
    }
    assert_eq!(origin.calls(), 4);
}

/// `Set-Cookie` responses are not stored by default; with the option they are, and only the
/// request that fetched one gets its `Set-Cookie` (RFC 9111 3.1 lets a cache store it).
async fn set_cookie_storing_is_an_option(cache: Cache) {
    let handler = |n: usize, _: &Request<Body>| {
        reply(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
            n.to_string(),
        )
    };
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, handler);
    send(&svc, "GET", "/default", &[]).await;
    let second = send(&svc, "GET", "/default", &[]).await;
    assert_eq!((second.text(), second.header("set-cookie")), ("2", "a=1"));

    let origin = Origin::default();
    let svc = app(&layer(&cache).store_set_cookie(true), &origin, handler);
    let first = send(&svc, "GET", "/stored", &[]).await;
    assert_eq!(first.header("set-cookie"), "a=1");
    let second = send(&svc, "GET", "/stored", &[]).await;
    assert_eq!((second.x_cache(), second.text()), ("HIT", "1"));
    assert!(!second.headers.contains_key(header::SET_COOKIE));
}

/// RFC 9111 4.2.2: with the option, `Last-Modified` gives a response without an explicit
/// lifetime a heuristic one; without it, the route's TTL (zero here) applies.
async fn heuristic_freshness_is_an_option(cache: Cache) {
    let handler = |n: usize, _: &Request<Body>| {
        reply(
            200,
            &[("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT")],
            n.to_string(),
        )
    };
    let origin = Origin::default();
    let svc = app(
        &layer(&cache).revalidate_window(Duration::ZERO),
        &origin,
        handler,
    );
    send(&svc, "GET", "/off", &[]).await;
    assert_eq!(send(&svc, "GET", "/off", &[]).await.text(), "2");
    let origin = Origin::default();
    let svc = app(&layer(&cache).heuristic_freshness(0.1), &origin, handler);
    send(&svc, "GET", "/on", &[]).await;
    let second = send(&svc, "GET", "/on", &[]).await;
    assert_eq!((second.x_cache(), second.text()), ("HIT", "1"));
}

/// RFC 9111 3.5: a request with `Authorization` stores and reuses only responses that are
/// `public` or carry `s-maxage` or `must-revalidate`.
async fn authorization_reuses_only_responses_that_allow_it(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, req| {
        let cc = match req.uri().path() {
            "/public" => "public, max-age=60",
            "/shared" => "s-maxage=60",
            _ => "max-age=60",
        };
        reply(200, &[("cache-control", cc)], n.to_string())
    });
    let auth = [("authorization", "Bearer alice")];
    for uri in ["/public", "/shared"] {
        send(&svc, "GET", uri, &auth).await;
        let second = send(&svc, "GET", uri, &auth).await;
        assert_eq!(second.x_cache(), "HIT", "{uri}");
    }
    assert_eq!(origin.calls(), 2);
    send(&svc, "GET", "/plain", &auth).await;
    let second = send(&svc, "GET", "/plain", &auth).await;
    assert_eq!((second.x_cache(), second.text()), ("MISS", "4"));
    // Stored for requests without `Authorization`, but never reused for one with it.
    send(&svc, "GET", "/plain", &[]).await;
    assert_eq!(send(&svc, "GET", "/plain", &[]).await.x_cache(), "HIT");
    assert_eq!(send(&svc, "GET", "/plain", &auth).await.text(), "6");
}

/// RFC 9111 5.2.2.4: a `no-cache` response with a validator is stored, and revalidated before
/// each reuse.
async fn no_cache_responses_are_revalidated_before_each_use(cache: Cache) {
    let origin = Origin::default();
    let conditional = Arc::new(AtomicUsize::new(0));
    let seen = conditional.clone();
    let svc = app(&layer(&cache), &origin, move |n, req| {
        if req.headers().contains_key(header::IF_NONE_MATCH) {
            seen.fetch_add(1, Ordering::SeqCst);
            return reply(304, &[("cache-control", "no-cache")], Body::empty());
        }
        reply(
            200,
            &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
            format!("body {n}"),
        )
    });
    assert_eq!(get(&svc, &[]).await.text(), "body 1");
    for _ in 0..2 {
        let got = get(&svc, &[]).await;
        assert_eq!((got.status, got.text()), (StatusCode::OK, "body 1"));
    }
    assert_eq!(conditional.load(Ordering::SeqCst), 2);
    assert_eq!(origin.calls(), 3);
    // `max-age=0` is not an ask to revalidate: not stored, even with a validator.
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, req| {
        assert!(!req.headers().contains_key(header::IF_NONE_MATCH));
        reply(
            200,
            &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
            n.to_string(),
        )
    });
    send(&svc, "GET", "/zero", &[]).await;
    let second = send(&svc, "GET", "/zero", &[]).await;
    assert_eq!((second.x_cache(), second.text()), ("MISS", "2"));
}

/// RFC 9110 5.6.7: `Expires` dates in any case, or with a wrong weekday, still count.
async fn expires_dates_are_read_leniently(cache: Cache) {
    for (i, expires) in [
        "THU, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18 AUG 2050 02:01:18 gMT",
        "Thu Aug  8 02:01:18 2050",
    ]
    .into_iter()
    .enumerate()
    {
        let origin = Origin::default();
        let svc = app(&layer(&cache), &origin, move |n, _| {
            reply(200, &[("expires", expires)], n.to_string())
        });
        let uri = format!("/expires-{i}");
        send(&svc, "GET", &uri, &[]).await;
        let second = send(&svc, "GET", &uri, &[]).await;
        assert_eq!((second.x_cache(), second.text()), ("HIT", "1"), "{expires}");
    }
}

/// RFC 9111 5.2.2.3: `must-understand` lets a status the cache implements be stored despite
/// `no-store`; an unknown status stays unstored.
async fn must_understand_overrides_no_store_for_known_statuses(cache: Cache) {
    for (status, stored) in [(200, true), (599, false)] {
        let origin = Origin::default();
        let svc = app(&layer(&cache), &origin, move |n, _| {
            reply(
                status,
                &[("cache-control", "max-age=60, no-store, must-understand")],
                n.to_string(),
            )
        });
        let uri = format!("/understood-{status}");
        send(&svc, "GET", &uri, &[]).await;
        assert_eq!(
            send(&svc, "GET", &uri, &[]).await.text() == "1",
            stored,
            "{status}"
        );
    }
}

/// A `Content-Encoding` the cache does not know is stored and replayed as the origin sent it
/// (keyed only on what `Vary` names); a known one is keyed on `Accept-Encoding`.
async fn unknown_content_codings_are_replayed_as_they_are(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, req| {
        let coding = if req.uri().path() == "/gzip" {
            "gzip"
        } else {
            "x-custom"
        };
        reply(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-encoding", coding),
            ],
            n.to_string(),
        )
    });
    send(&svc, "GET", "/custom", &[]).await;
    let second = send(&svc, "GET", "/custom", &[("accept-encoding", "br")]).await;
    assert_eq!(
        (second.text(), second.header("content-encoding")),
        ("1", "x-custom")
    );
    // gzip to a request that does not accept it is never replayed.
    send(&svc, "GET", "/gzip", &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        send(&svc, "GET", "/gzip", &[("accept-encoding", "gzip")])
            .await
            .text(),
        "2"
    );
    assert_eq!(send(&svc, "GET", "/gzip", &[]).await.text(), "3");
}

/// List members are compared without surrounding space, and `Accept-Language` without case
/// or order, when matching a stored variant.
async fn vary_values_are_normalised(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, _| {
        reply(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language, Foo"),
            ],
            n.to_string(),
        )
    });
    get(&svc, &[("accept-language", "en, de"), ("foo", "1,2")]).await;
    let same = get(&svc, &[("accept-language", "De, EN"), ("foo", " 1, 2 ")]).await;
    assert_eq!((same.x_cache(), same.text()), ("HIT", "1"));
    let other = get(&svc, &[("accept-language", "en, de"), ("foo", "2,1")]).await;
    assert_eq!(other.text(), "2");
}

/// Within a stale-if-error window a 5xx is answered with the stale entry and not stored, even
/// when it states a lifetime of its own.
async fn stale_if_error_wins_over_a_storable_5xx(cache: Cache) {
    let origin = Origin::default();
    let svc = app(
        &layer(&cache).stale_if_error(Duration::from_secs(60)),
        &origin,
        |n, _| {
            if n == 1 {
                reply(200, &[("cache-control", "max-age=1")], "fine")
            } else {
                reply(500, &[("cache-control", "max-age=60")], "broken")
            }
        },
    );
    assert_eq!(get(&svc, &[]).await.text(), "fine");
    until_stale().await;
    for _ in 0..2 {
        let got = get(&svc, &[]).await;
        assert_eq!((got.status, got.text()), (StatusCode::OK, "fine"));
        assert_eq!(got.x_cache(), "STALE");
    }
    assert_eq!(origin.calls(), 3);
}

/// RFC 9111 3.3: a 206 answering a `Range` request is stored as the URI's partial entry and
/// serves every range it covers; a full response stored later serves every range.
async fn partial_responses_are_stored_for_their_range(cache: Cache) {
    let origin = Origin::default();
    let svc = app(&layer(&cache), &origin, |n, req| {
        match req
            .headers()
            .get(header::RANGE)
            .map(|v| v.to_str().unwrap())
        {
            Some("bytes=-5") => reply(
                206,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 5-9/10"),
                ],
                "56789",
            ),
            Some(_) => reply(206, &[("content-range", "bytes 0-1/10")], "01"),
            None => reply(200, &[("cache-control", "max-age=60")], format!("full {n}")),
        }
    });
    let tail = [("range", "bytes=-5")];
    let first = get(&svc, &tail).await;
    assert_eq!(
        (first.status, first.text()),
        (StatusCode::PARTIAL_CONTENT, "56789")
    );
    let second = get(&svc, &tail).await;
    assert_eq!((second.x_cache(), second.text()), ("HIT", "56789"));
    assert_eq!(second.header("content-range"), "bytes 5-9/10");
    for (range, part, content_range) in [
        ("bytes=6-8", "678", "bytes 6-8/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-2", "89", "bytes 8-9/10"),
    ] {
        let got = get(&svc, &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            (got.text(), got.header("content-range")),
            (part, content_range)
        );
        assert_eq!(got.header("content-length"), part.len().to_string());
    }
    assert_eq!(origin.calls(), 1);
    // A range the part does not hold goes to the handler (whose 206 without freshness is not
    // stored: the part stays).
    get(&svc, &[("range", "bytes=0-1")]).await;
    assert_eq!(get(&svc, &[("range", "bytes=0-1")]).await.x_cache(), "MISS");
    assert_eq!(get(&svc, &tail).await.x_cache(), "HIT");
    assert_eq!(origin.calls(), 3);
    // Never served for a request without `Range`.
    assert_eq!(get(&svc, &[]).await.text(), "full 4");
}
