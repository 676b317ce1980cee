//! Tags from response headers, the HTTP purge router, and write-through / batch reads, each
//! scenario run on the memory store and on Redis (standalone and Cluster) with two `Cache`s
//! over one store: two instances, so purges and writes are checked on the other one.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use redtower_cache::{
    Cache, MemoryStore, RedisStore, ResponseCacheLayer,
    purge::{self, PurgeAuth, PurgeMethodLayer},
};
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::unique_prefix;
use tower::{Layer, ServiceExt, service_fn};

const MIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "purge-token-0123456789";

macro_rules! scenarios {
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (one, two) = $make(stringify!($name)).await;
                super::$name(one, two).await;
            }
        )*
    };
}

macro_rules! all_scenarios {
    ($make:path) => {
        scenarios!($make;
            surrogate_keys_tag_entries_and_never_leave,
            cache_tag_lists_are_comma_separated,
            tag_fields_are_stripped_from_responses_not_stored,
            without_tag_header_the_field_passes_through,
            purge_router_purges_keys_and_tags_on_every_instance,
            purge_router_refuses_bad_tokens_and_bad_bodies,
            purge_router_purges_prefixes_on_every_instance,
            prefixes_need_prefix_purge,
            purge_method_purges_one_path_on_every_instance,
            set_is_read_by_every_instance,
            set_tagged_values_are_purged_by_tag,
            get_many_reads_values_in_order_across_slots,
        );
    };
}

mod memory {
    use super::*;

    async fn make(_test: &str) -> (Cache, Cache) {
        let store = Arc::new(MemoryStore::new());
        (build(store.clone()), build(store))
    }

    all_scenarios!(make);
}

async fn connect(url: &str, prefix: &str) -> Cache {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    // No clock allowance: both instances and Redis share this host's clock.
    build(RedisStore::new(redis).clock_skew(Duration::ZERO))
}

/// A cache with prefix purge on, as each instance of an application using it is built.
fn build(store: impl redtower_cache::CacheStore) -> Cache {
    Cache::builder(store).prefix_purge(true).build()
}

async fn pair(url: &str, test: &str) -> (Cache, Cache) {
    let prefix = unique_prefix(test);
    (connect(url, &prefix).await, connect(url, &prefix).await)
}

mod redis_standalone {
    use super::*;

    async fn make(test: &str) -> (Cache, Cache) {
        pair(&redtower_testkit::shared_url(), test).await
    }

    all_scenarios!(make);
}

mod redis_cluster {
    use super::*;

    async fn make(test: &str) -> (Cache, Cache) {
        pair(&redtower_testkit::shared_cluster().url(), test).await
    }

    all_scenarios!(make);
}

type Reply = Response<Body>;

/// An origin behind `layer` answering `f(request)`, counting its calls in `calls`.
fn app<F>(
    layer: &ResponseCacheLayer,
    calls: &Arc<AtomicUsize>,
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
    F: Fn(&Request<Body>) -> Reply + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    layer.layer(service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let resp = f(&req);
        async move { Ok::<_, Infallible>(resp) }
    }))
}

fn reply(headers: &[(&str, &str)], body: &str) -> Reply {
    let mut b = Response::builder().status(200);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

async fn send<S>(svc: &S, method: &str, uri: &str) -> (HeaderMap, Bytes)
where
    S: tower::Service<
            Request<Body>,
            Response = Response<redtower_cache::ResponseBody<Body>>,
            Error = Infallible,
        > + Clone,
{
    let req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri)
        .header(header::HOST, "shop.test")
        .body(Body::empty())
        .unwrap();
    let (parts, body) = svc.clone().oneshot(req).await.unwrap().into_parts();
    (parts.headers, body.collect().await.unwrap().to_bytes())
}

fn x_cache(h: &HeaderMap) -> &str {
    h.get("x-cache").map_or("", |v| v.to_str().unwrap())
}

fn surrogate(cache: &Cache) -> ResponseCacheLayer {
    ResponseCacheLayer::new(cache.clone(), MIN).tag_header(HeaderName::from_static("surrogate-key"))
}

/// Tags from `Surrogate-Key` are recorded on the entry; the field never reaches clients (on
/// the storing miss nor on hits); purging a tag on one instance makes the tagged entries a
/// miss on both, and leaves the others alone.
async fn surrogate_keys_tag_entries_and_never_leave(one: Cache, two: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = |req: &Request<Body>| {
        let id = req.uri().path().trim_start_matches("/p/").to_owned();
        reply(&[("surrogate-key", &format!("product:{id} products"))], &id)
    };
    let a = app(&surrogate(&one), &calls, origin);
    let b = app(&surrogate(&two), &calls, origin);
    for (svc, want) in [(&a, "MISS"), (&b, "HIT"), (&a, "HIT")] {
        let (h, body) = send(svc, "GET", "/p/1").await;
        assert_eq!((x_cache(&h), &body[..]), (want, &b"1"[..]));
        assert!(h.get("surrogate-key").is_none(), "{want}: {h:?}");
    }
    assert_eq!(x_cache(&send(&a, "GET", "/p/2").await.0), "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    two.invalidate_tag("product:1").await.unwrap();
    assert_eq!(x_cache(&send(&a, "GET", "/p/1").await.0), "MISS");
    assert_eq!(x_cache(&send(&b, "GET", "/p/1").await.0), "HIT");
    assert_eq!(x_cache(&send(&b, "GET", "/p/2").await.0), "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A tag every entry shares purges both.
    one.invalidate_tag("products").await.unwrap();
    assert_eq!(x_cache(&send(&b, "GET", "/p/1").await.0), "MISS");
    assert_eq!(x_cache(&send(&b, "GET", "/p/2").await.0), "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// `Cache-Tag` (comma separated) works the same, next to the route's own tags; invalid tags
/// are dropped and the valid ones kept.
async fn cache_tag_lists_are_comma_separated(one: Cache, two: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let long = "x".repeat(200);
    let layer = |c: &Cache| {
        ResponseCacheLayer::new(c.clone(), MIN)
            .tags(["route"])
            .tag_header(HeaderName::from_static("cache-tag"))
    };
    let value = format!("a,{long}, b");
    let origin = move |_: &Request<Body>| reply(&[("cache-tag", &value)], "v");
    let a = app(&layer(&one), &calls, origin.clone());
    let b = app(&layer(&two), &calls, origin);
    let (h, _) = send(&a, "GET", "/x").await;
    assert!(h.get("cache-tag").is_none());
    assert_eq!(x_cache(&send(&b, "GET", "/x").await.0), "HIT");
    two.invalidate_tag(&long).await.unwrap(); // dropped: never recorded
    assert_eq!(x_cache(&send(&b, "GET", "/x").await.0), "HIT");
    two.invalidate_tag("b").await.unwrap();
    assert_eq!(x_cache(&send(&b, "GET", "/x").await.0), "MISS");
    assert_eq!(x_cache(&send(&a, "GET", "/x").await.0), "HIT");
    one.invalidate_tag("route").await.unwrap();
    assert_eq!(x_cache(&send(&a, "GET", "/x").await.0), "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Responses the layer does not store (`no-store`, `HEAD`, `POST`) lose the field too.
async fn tag_fields_are_stripped_from_responses_not_stored(one: Cache, _two: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(&surrogate(&one), &calls, |_| {
        reply(
            &[("surrogate-key", "k"), ("cache-control", "no-store")],
            "v",
        )
    });
    for method in ["GET", "HEAD", "POST"] {
        let (h, _) = send(&svc, method, "/n").await;
        assert!(h.get("surrogate-key").is_none(), "{method}: {h:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Without `tag_header` the field is the handler's: stored and replayed, no tags recorded.
async fn without_tag_header_the_field_passes_through(one: Cache, two: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ResponseCacheLayer::new(one.clone(), MIN);
    let svc = app(&layer, &calls, |_| reply(&[("surrogate-key", "k")], "v"));
    assert_eq!(send(&svc, "GET", "/t").await.0["surrogate-key"], "k");
    two.invalidate_tag("k").await.unwrap();
    let (h, _) = send(&svc, "GET", "/t").await;
    assert_eq!(
        (x_cache(&h), h["surrogate-key"].to_str().unwrap()),
        ("HIT", "k")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn call_purge(
    router: &Router,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, String) {
    let mut req = Request::post(purge::PATH).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The router on one instance purges keys and tags that the other instance then misses;
/// exact fetch counts on both.
async fn purge_router_purges_keys_and_tags_on_every_instance(one: Cache, two: Cache) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let read = |c: &Cache, key: &'static str, tag: &'static str| {
        let c = c.clone();
        let fetches = fetches.clone();
        async move {
            c.fetch(key)
                .ttl(MIN)
                .tags([tag])
                .run(move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(key.len())
                })
                .await
                .unwrap()
        }
    };
    for c in [&one, &two] {
        read(c, "a", "t1").await;
        read(c, "bb", "t2").await;
        read(c, "ccc", "t2").await;
        read(c, "dddd", "t3").await;
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4);

    let router: Router = purge::router(one.clone(), PurgeAuth::bearer(TOKEN).unwrap());
    let (status, body) = call_purge(&router, Some(TOKEN), r#"{"keys":["a"],"tags":["t2"]}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"keys":1,"prefixes":0,"tags":1}"#)
    );

    for c in [&two, &one] {
        assert_eq!(read(c, "a", "t1").await, 1);
        assert_eq!(read(c, "bb", "t2").await, 2);
        assert_eq!(read(c, "ccc", "t2").await, 3);
        assert_eq!(read(c, "dddd", "t3").await, 4);
    }
    // a, bb and ccc refetched once each (on the first instance asked); dddd untouched.
    assert_eq!(fetches.load(Ordering::SeqCst), 7);

    // Purging what is not cached is fine (idempotent).
    let (status, _) = call_purge(&router, Some(TOKEN), r#"{"tags":["never-seen"]}"#).await;
    assert_eq!(status, StatusCode::OK);
}

/// 401 without or with a wrong token (nothing purged), 400 for bodies that are not a valid
/// purge, 413 for a body over the limit.
async fn purge_router_refuses_bad_tokens_and_bad_bodies(one: Cache, two: Cache) {
    assert!(PurgeAuth::bearer("short").is_err());
    one.set("k", &1u8, MIN).await.unwrap();
    let router: Router = purge::router(one.clone(), PurgeAuth::bearer(TOKEN).unwrap());
    let purge_k = r#"{"keys":["k"]}"#;
    for token in [
        None,
        Some("purge-token-0123456788"),
        Some(""),
        Some("purge-token-01234567890"),
    ] {
        assert_eq!(
            call_purge(&router, token, purge_k).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(two.get_many::<u8>(&["k"]).await, [Some(1)]);

    let too_many =
        serde_json::json!({ "tags": (0..101).map(|i| i.to_string()).collect::<Vec<_>>() });
    let long_tag = serde_json::json!({ "tags": ["t".repeat(129)] });
    let long_key = serde_json::json!({ "keys": ["k".repeat(1025)] });
    for body in [
        "not json".to_owned(),
        "{}".to_owned(),
        r#"{"keys":[],"tags":[]}"#.to_owned(),
        r#"{"keys":[],"tags":[],"prefixes":[]}"#.to_owned(),
        r#"{"prefixes":[""]}"#.to_owned(),
        r#"{"prefixes":"k"}"#.to_owned(),
        serde_json::json!({ "prefixes": ["k".repeat(1025)] }).to_string(),
        serde_json::json!({ "keys": ["k"], "prefixes": (0..100).map(|i| i.to_string()).collect::<Vec<_>>() }).to_string(),
        r#"{"keys":[""]}"#.to_owned(),
        r#"{"keys":"k"}"#.to_owned(),
        r#"{"keys":["k"],"prefix":"k"}"#.to_owned(),
        too_many.to_string(),
        long_tag.to_string(),
        long_key.to_string(),
    ] {
        let (status, text) = call_purge(&router, Some(TOKEN), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
    }
    let huge = format!(r#"{{"keys":["{}"]}}"#, "k".repeat(purge::MAX_BODY));
    assert_eq!(
        call_purge(&router, Some(TOKEN), huge).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(two.get_many::<u8>(&["k"]).await, [Some(1)]);

    // The bounds themselves are accepted.
    let at_bounds = serde_json::json!({
        "keys": ["k".repeat(1024)],
        "prefixes": ["unused:".repeat(146)],
        "tags": (0..98).map(|i| format!("{i}{}", "t".repeat(100))).collect::<Vec<_>>(),
    });
    assert_eq!(
        call_purge(&router, Some(TOKEN), at_bounds.to_string())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call_purge(&router, Some(TOKEN), purge_k).await.0,
        StatusCode::OK
    );
    assert_eq!(two.get_many::<u8>(&["k"]).await, [None]);
}

/// A value set on one instance is what the other reads (the fetcher never runs), and a
/// second `set` replaces it.
async fn set_is_read_by_every_instance(one: Cache, two: Cache) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let read = |c: &Cache| {
        let c = c.clone();
        let fetches = fetches.clone();
        async move {
            c.get_or_fetch("user:1", MIN, move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>("fetched".to_owned())
            })
            .await
            .unwrap()
        }
    };
    one.set("user:1", "ada", MIN).await.unwrap();
    assert_eq!(read(&two).await, "ada");
    assert_eq!(read(&one).await, "ada");
    two.set("user:1", "grace", MIN).await.unwrap();
    assert_eq!(read(&one).await, "grace");
    assert_eq!(fetches.load(Ordering::SeqCst), 0);
    one.invalidate("user:1").await.unwrap();
    assert_eq!(read(&two).await, "fetched");
    assert_eq!(read(&one).await, "fetched");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

async fn set_tagged_values_are_purged_by_tag(one: Cache, two: Cache) {
    one.set_tagged("a", &1u32, MIN, &["even", "all"])
        .await
        .unwrap();
    one.set_tagged("b", &2u32, MIN, &["odd", "all"])
        .await
        .unwrap();
    one.set("c", &3u32, MIN).await.unwrap();
    assert_eq!(
        two.get_many::<u32>(&["a", "b", "c"]).await,
        [Some(1), Some(2), Some(3)]
    );
    two.invalidate_tag("odd").await.unwrap();
    assert_eq!(
        one.get_many::<u32>(&["a", "b", "c"]).await,
        [Some(1), None, Some(3)]
    );
    one.invalidate_tag("all").await.unwrap();
    assert_eq!(
        two.get_many::<u32>(&["a", "b", "c"]).await,
        [None, None, Some(3)]
    );
}

/// 200 keys (spread over every Cluster node) read back in order, with misses, values of
/// another type, and expired values as `None`.
async fn get_many_reads_values_in_order_across_slots(one: Cache, two: Cache) {
    let keys: Vec<String> = (0..200).map(|i| format!("item:{i}")).collect();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        one.set(k, &i, MIN).await.unwrap();
    }
    one.set("text", "not a number", MIN).await.unwrap();
    one.set("brief", &1usize, Duration::from_millis(1))
        .await
        .unwrap();
    let got: Vec<Option<usize>> = two.get_many(&keys).await;
    let want: Vec<Option<usize>> = (0..200).map(|i| (i % 3 != 0).then_some(i)).collect();
    assert_eq!(got, want);
    // Wall-clock expiry of a 1 ms value on Redis: nothing to wait on but time itself.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        two.get_many::<usize>(&["text", "brief", "item:1"]).await,
        [None, None, Some(1)]
    );
    assert!(two.get_many::<usize>(&[] as &[&str]).await.is_empty());
}

/// A prefix purge through the router on one instance: the responses under the path prefix and
/// the cache-aside values under the key prefix are misses on both instances at once; the
/// others stay hits; refills are served again. Exact origin counts.
async fn purge_router_purges_prefixes_on_every_instance(one: Cache, two: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = |req: &Request<Body>| reply(&[], req.uri().path());
    let layer = |c: &Cache| ResponseCacheLayer::new(c.clone(), MIN);
    let a = app(&layer(&one), &calls, origin);
    let b = app(&layer(&two), &calls, origin);
    let paths = [
        "/products/1",
        "/products/2?page=2",
        "/productsale",
        "/about",
    ];
    for p in paths {
        assert_eq!(x_cache(&send(&a, "GET", p).await.0), "MISS");
        assert_eq!(x_cache(&send(&b, "GET", p).await.0), "HIT");
    }
    one.set("price:tea", &8u32, MIN).await.unwrap();
    one.set("stock:tea", &3u32, MIN).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    let router: Router = purge::router(one.clone(), PurgeAuth::bearer(TOKEN).unwrap());
    let (status, body) = call_purge(
        &router,
        Some(TOKEN),
        r#"{"prefixes":["/products/","price:"]}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"keys":0,"prefixes":2,"tags":0}"#)
    );
    assert_eq!(
        two.get_many::<u32>(&["price:tea", "stock:tea"]).await,
        [None, Some(3)]
    );
    // Entries stored in the ban's own millisecond are banned too: let the clock move on so
    // that the refills below are not.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let want = [
        ("/products/1", "MISS"),
        ("/products/2?page=2", "MISS"),
        ("/productsale", "HIT"),
        ("/about", "HIT"),
    ];
    for (p, x) in want {
        assert_eq!(x_cache(&send(&b, "GET", p).await.0), x, "{p}");
        assert_eq!(x_cache(&send(&a, "GET", p).await.0), "HIT", "{p}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

/// A cache without prefix purge refuses prefixes (its lookups would not honour them) and
/// purges nothing.
async fn prefixes_need_prefix_purge(one: Cache, _two: Cache) {
    let off = Cache::new(MemoryStore::new());
    let router: Router = purge::router(off, PurgeAuth::bearer(TOKEN).unwrap());
    let (status, body) = call_purge(&router, Some(TOKEN), r#"{"prefixes":["/"]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("prefix purge is not turned on"), "{body}");
    assert!(one.prefix_purge());
}

/// `PURGE <path>` (through `PurgeMethodLayer`, with the token) on one instance purges that
/// path's response on both instances and nothing else (not a longer path sharing its
/// prefix); without the token it is refused and purges nothing.
async fn purge_method_purges_one_path_on_every_instance(one: Cache, two: Cache) {
    let calls = Arc::new(AtomicUsize::new(0));
    let router = |c: &Cache| {
        let calls = calls.clone();
        let handler = move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { "product" }
        };
        Router::new()
            .route("/products/{id}", axum::routing::get(handler))
            .layer(ResponseCacheLayer::new(c.clone(), MIN))
            .layer(PurgeMethodLayer::new(
                c.clone(),
                PurgeAuth::bearer(TOKEN).unwrap(),
            ))
    };
    let (a, b) = (router(&one), router(&two));
    let call = |app: &Router, method: &str, uri: &str, token: Option<&str>| {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri)
            .header(header::HOST, "shop.test");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let x = |app: &Router, uri: &'static str| {
        let resp = call(app, "GET", uri, None);
        async move { x_cache(resp.await.unwrap().headers()).to_owned() }
    };
    for p in ["/products/1", "/products/10"] {
        assert_eq!(x(&a, p).await, "MISS");
        assert_eq!(x(&b, p).await, "HIT");
    }
    let refused = call(&a, "PURGE", "/products/1", None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(x(&b, "/products/1").await, "HIT");

    let purged = call(&a, "PURGE", "/products/1", Some(TOKEN)).await.unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    let body = purged.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"purged":"/products/1"}"#);
    // Entries stored in the ban's own millisecond are banned too: let the clock move on so
    // that the refill below is not.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(x(&b, "/products/1").await, "MISS");
    assert_eq!(x(&a, "/products/1").await, "HIT");
    assert_eq!(x(&a, "/products/10").await, "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Other methods pass through to the application (which has no POST route).
    let post = call(&a, "POST", "/products/1", None).await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}
