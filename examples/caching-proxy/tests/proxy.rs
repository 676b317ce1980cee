//! The proxy end to end: an axum origin on a free port, proxies on free ports, a real client.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Request, Response, StatusCode},
    routing::{any, get},
};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use redtower_cache::{Cache, MemoryStore, RedisStore};
use redtower_caching_proxy::{Proxy, cache_layer};
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::{RedisServer, unique_prefix};

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

async fn cacheable(State(o): State<Origin>, headers: HeaderMap) -> Response<Body> {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    o.seen.lock().unwrap().push(headers);
    Response::builder()
        .header("cache-control", "max-age=3600")
        .header("connection", "x-private")
        .header("x-private", "for the next hop only")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic")
        .header("via", "1.1 origin-side")
        .body(Body::from(format!("response {n}")))
        .unwrap()
}

/// 200 with a one-second lifetime the first time, 503 afterwards.
async fn flaky(State(o): State<Origin>) -> Response<Body> {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let builder = Response::builder();
    let builder = if n == 1 {
        builder.header("cache-control", "max-age=1")
    } else {
        builder.status(StatusCode::SERVICE_UNAVAILABLE)
    };
    builder.body(Body::from(format!("response {n}"))).unwrap()
}

async fn echo_method(State(o): State<Origin>, req: Request<Body>) -> String {
    o.calls.fetch_add(1, Ordering::SeqCst);
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    format!("{method} {query} {}", String::from_utf8_lossy(&body))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn origin() -> (Origin, SocketAddr) {
    let o = Origin::default();
    let app = Router::new()
        .route("/cacheable", get(cacheable))
        .route("/echo", any(echo_method))
        .route("/flaky", get(flaky))
        .with_state(o.clone());
    (o, serve(app).await)
}

async fn proxy(origin: SocketAddr, cache: Cache) -> SocketAddr {
    let app = Proxy::new(&format!("http://{origin}"))
        .unwrap()
        .router(cache_layer(cache));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(req: Request<Body>) -> Reply {
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get_via(proxy: SocketAddr, path: &str) -> Reply {
    send(
        Request::get(format!("http://{proxy}{path}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_cacheable_response_is_served_from_the_cache_the_second_time() {
    let (o, origin) = origin().await;
    let p = proxy(origin, Cache::new(MemoryStore::new())).await;

    let first = get_via(p, "/cacheable").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "response 1");
    assert_eq!(first.headers["x-cache"], "MISS");
    let second = get_via(p, "/cacheable").await;
    assert_eq!(second.body, "response 1");
    assert_eq!(second.headers["x-cache"], "HIT");
    assert_eq!(o.calls(), 1);
}

#[tokio::test]
async fn hop_by_hop_fields_are_removed_and_via_is_appended_both_ways() {
    let (o, origin) = origin().await;
    let p = proxy(origin, Cache::new(MemoryStore::new())).await;

    let mut req = Request::get(format!("http://{p}/cacheable"))
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=9")
        .header("proxy-authorization", "Basic eDp5")
        .header("via", "1.0 client-side")
        .header("x-end-to-end", "kept");
    req.headers_mut()
        .unwrap()
        .insert("te", HeaderValue::from_static("trailers"));
    let reply = send(req.body(Body::empty()).unwrap()).await;

    let seen = o.last_request();
    for name in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(!seen.contains_key(name), "{name} reached the origin");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(all(&seen, "via"), ["1.0 client-side", "1.1 redtower"]);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    for r in [reply, get_via(p, "/cacheable").await] {
        for name in ["x-private", "keep-alive", "proxy-authenticate"] {
            assert!(!r.headers.contains_key(name), "{name} reached the client");
        }
        assert_eq!(all(&r.headers, "via"), ["1.1 origin-side", "1.1 redtower"]);
    }
    assert_eq!(o.calls(), 1, "the second request was a hit");
}

#[tokio::test]
async fn any_method_query_and_body_are_forwarded() {
    let (o, origin) = origin().await;
    let p = proxy(origin, Cache::new(MemoryStore::new())).await;

    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "M-SEARCH"] {
        let reply = send(
            Request::builder()
                .method(method)
                .uri(format!("http://{p}/echo?b=2&a=1"))
                .body(Body::from("payload"))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(reply.body, format!("{method} b=2&a=1 payload"));
    }
    assert_eq!(o.calls(), 6);
}

#[tokio::test]
async fn a_stale_response_stands_in_for_an_origin_error_within_the_grace() {
    let (o, origin) = origin().await;
    let p = proxy(origin, Cache::new(MemoryStore::new())).await;

    assert_eq!(get_via(p, "/flaky").await.body, "response 1");
    // The entry turns stale when the wall clock passes its one-second lifetime: there is no
    // event to wait for, only time.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reply = get_via(p, "/flaky").await;
    assert_eq!(o.calls(), 2, "the stale entry was refetched");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "response 1");
    assert_eq!(reply.headers["x-cache"], "STALE");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_bad_gateway() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = proxy(closed, Cache::new(MemoryStore::new())).await;
    let reply = get_via(p, "/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(all(&reply.headers, "via"), ["1.1 redtower"]);
}

#[tokio::test]
async fn two_proxies_on_one_redis_share_the_cache() {
    let server = RedisServer::start();
    let prefix = unique_prefix("caching-proxy");
    let redis_cache = || {
        let config = RedisConfig::from_url(&server.url())
            .unwrap()
            .key_prefix(prefix.clone());
        Cache::new(RedisStore::new(Redis::new(config).unwrap()))
    };
    let (o, origin) = origin().await;
    let a = proxy(origin, redis_cache()).await;
    let b = proxy(origin, redis_cache()).await;

    // Behind a load balancer every instance sees the public host name.
    let get = |p: SocketAddr| {
        send(
            Request::get(format!("http://{p}/cacheable"))
                .header("host", "shop.example")
                .body(Body::empty())
                .unwrap(),
        )
    };
    let first = get(a).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    // The fill is stored before the response is sent, so the other instance finds it.
    let other = get(b).await;
    assert_eq!(other.headers["x-cache"], "HIT");
    assert_eq!(other.body, "response 1");
    assert_eq!(o.calls(), 1);
}
