//! A caching reverse proxy on [`ResponseCacheLayer`]: a Varnish-style front cache for any HTTP
//! origin, shared by every instance of the proxy through Redis.
//!
//! Every request, whatever its method, path and query, is forwarded to one upstream origin;
//! the responses the origin marks cacheable (`Cache-Control`, `Expires`) are stored in a
//! [`Cache`] and served from it while fresh. With a Redis store, a response one instance
//! stored is served by all of them.
//!
//! As a proxy it follows RFC 9110 7.6: hop-by-hop fields (`Connection` and the fields it lists,
//! `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are removed in both
//! directions, and `Via` gets this hop appended in both directions. The `Host` the client sent
//! is passed on (the cache keys on it), like Varnish does; when the router is served with
//! connection info (`into_make_service_with_connect_info::<SocketAddr>()`), the client's address
//! is appended to `X-Forwarded-For`.
//!
//! ```no_run
//! # async fn run() -> Result<(), redtower_caching_proxy::ProxyError> {
//! use redtower_cache::{Cache, MemoryStore};
//! use redtower_caching_proxy::{Proxy, cache_layer};
//!
//! let cache = Cache::new(MemoryStore::new());
//! let app = Proxy::new("http://127.0.0.1:8000")?.router(cache_layer(cache));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA},
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use redtower_cache::{Cache, QueryKey, ResponseCacheLayer};
use tower::ServiceBuilder;

/// The errors of setting the proxy up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The upstream is not an absolute `http://` URL.
    #[error("invalid upstream {0:?}: expected an absolute http:// URL")]
    Upstream(String),
    /// A command-line argument or environment variable is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Connecting the Redis store failed.
    #[error(transparent)]
    Redis(#[from] redtower_client::Error),
    /// Binding or serving the listener failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How long after its freshness ends [`cache_layer`] serves a response when the origin fails:
/// 10 s.
pub const GRACE: Duration = Duration::from_secs(10);

/// The response cache configured for a shared proxy cache:
///
/// * only the origin's freshness counts (`Cache-Control: s-maxage`/`max-age`, `Expires`): the
///   default lifetime is zero, so a response without one is not served from the cache;
/// * the whole query string is part of the key ([`QueryKey::Sorted`]) and reaches the origin;
/// * no cookie marks a session (the origin says with `private` / `no-store` what is personal);
/// * error statuses the RFC lets a cache store (404, 405, 410, 414, 501) are stored when the
///   origin gives them a lifetime, with no default lifetime of their own.
///
/// * a stale response is served for up to [`GRACE`] when the origin cannot be reached, times out
///   or answers 5xx (like Varnish's grace), unless the response forbids it (`must-revalidate`,
///   `proxy-revalidate`, `s-maxage`) or states its own `stale-if-error`.
///
/// `Authorization` requests keep the layer's default ([`redtower_cache::Credentials::Bypass`]),
/// as RFC 9111 3.5 asks of a shared cache. Adjust further with the layer's own setters.
pub fn cache_layer(cache: Cache) -> ResponseCacheLayer {
    ResponseCacheLayer::new(cache, Duration::ZERO)
        .stale_if_error(GRACE)
        .query(QueryKey::Sorted)
        .session_cookies(Vec::<String>::new())
        .negative_ttl(Duration::ZERO)
        .store_set_cookie(true)
        .heuristic_freshness(0.1)
        .route_name("proxy")
}

/// A reverse proxy to one upstream origin, with a response cache in front.
#[derive(Debug, Clone)]
#[must_use]
pub struct Proxy {
    scheme: Scheme,
    authority: Authority,
    /// The upstream's path prefix, without a trailing `/` (empty for none).
    base: String,
    timeout: Duration,
    pool_idle: Duration,
}

impl Proxy {
    /// The default time an upstream has to send its response head: 60 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// A proxy to `upstream` (`http://host:port`, optionally with a path prefix that every
    /// forwarded path is appended to).
    pub fn new(upstream: &str) -> Result<Self, ProxyError> {
        let bad = || ProxyError::Upstream(upstream.to_owned());
        let uri: Uri = upstream.parse().map_err(|_| bad())?;
        let scheme = uri.scheme().cloned().ok_or_else(bad)?;
        if scheme != Scheme::HTTP {
            return Err(bad());
        }
        let authority = uri.authority().cloned().ok_or_else(bad)?;
        if uri.query().is_some() {
            return Err(bad());
        }
        Ok(Self {
            scheme,
            authority,
            base: uri.path().trim_end_matches('/').to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
            pool_idle: Duration::from_secs(4),
        })
    }

    /// How long the upstream has to answer with a response head before the proxy answers
    /// `504 Gateway Timeout` (which the cache may replace with a stale response). Defaults to
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an idle upstream connection is kept for reuse. Keep it below the upstream's
    /// own keep-alive timeout (5 s for Node.js), so a request is never sent on a connection
    /// the upstream is closing. Defaults to 4 s.
    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.pool_idle = idle;
        self
    }

    /// The proxy as an axum [`Router`]: every method and path goes through `layer` to the
    /// upstream. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` to pass
    /// the client's address on in `X-Forwarded-For`.
    pub fn router(self, layer: ResponseCacheLayer) -> Router {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle)
            .build(connector);
        let forward = Forward {
            proxy: self,
            client,
        };
        let service = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req| forward.clone().call(req));
        Router::new().fallback_service(service)
    }

    /// The upstream URI of a request to `uri`.
    fn target(&self, uri: &Uri) -> Uri {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if self.base.is_empty() {
            pq.parse::<PathAndQuery>()
        } else {
            format!("{}{pq}", self.base).parse()
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq.unwrap_or_else(|_| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }
}

/// The service below the cache: forwards one request upstream.
#[derive(Debug, Clone)]
struct Forward {
    proxy: Proxy,
    client: Client<HttpConnector, Body>,
}

impl Forward {
    async fn call(self, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let received = parts.version;
        parts.uri = self.proxy.target(&parts.uri);
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers, received);
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            append_forwarded_for(&mut parts.headers, *peer);
        }
        let method = parts.method.clone();
        let upstream = Request::from_parts(parts, body);
        let res = match tokio::time::timeout(self.proxy.timeout, self.client.request(upstream))
            .await
        {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                tracing::warn!(target: "redtower::proxy", %method, error = %e, "upstream request failed");
                return Ok(error_response(StatusCode::BAD_GATEWAY));
            }
            Err(_) => {
                tracing::warn!(target: "redtower::proxy", %method, "upstream timed out");
                return Ok(error_response(StatusCode::GATEWAY_TIMEOUT));
            }
        };
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers, parts.version);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

fn error_response(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::from(status.canonical_reason().unwrap_or("error")));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    append_via(res.headers_mut(), Version::HTTP_11);
    res
}

/// Removes the hop-by-hop fields of RFC 9110 7.6.1: the fields `Connection` lists, then
/// `Connection`, `Keep-Alive`, `Proxy-Connection` and every other `Proxy-*` field, `TE`,
/// `Trailer`, `Transfer-Encoding` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For`, as Varnish and nginx do.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    const XFF: &str = "x-forwarded-for";
    let ip = peer.ip().to_string();
    let value = match headers.get(XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(XFF, value);
    }
}

/// Appends this hop (`<received protocol version> redtower`) to `Via` (RFC 9110 7.6.3).
pub fn append_via(headers: &mut HeaderMap, received: Version) {
    let hop = match received {
        Version::HTTP_09 => "0.9 redtower",
        Version::HTTP_10 => "1.0 redtower",
        Version::HTTP_2 => "2 redtower",
        Version::HTTP_3 => "3 redtower",
        _ => "1.1 redtower",
    };
    headers.append(VIA, HeaderValue::from_static(hop));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_lists_are_removed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, X-Private"),
            ("connection", "x-other"),
            ("x-private", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("cache-control", "max-age=60"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["cache-control"]);
    }

    #[test]
    fn the_client_address_is_appended_to_x_forwarded_for() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.2:5000".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        append_forwarded_for(&mut h, "[::1]:5000".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.2, ::1");
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(VIA, HeaderValue::from_static("1.0 fred"));
        append_via(&mut h, Version::HTTP_11);
        let all: Vec<&str> = h.get_all(VIA).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["1.0 fred", "1.1 redtower"]);
    }

    #[test]
    fn targets_keep_path_and_query_under_the_upstream_prefix() {
        let p = Proxy::new("http://127.0.0.1:9/api/").unwrap();
        let t = p.target(&"/a/b?x=1&y".parse().unwrap());
        assert_eq!(t.to_string(), "http://127.0.0.1:9/api/a/b?x=1&y");
        let p = Proxy::new("http://origin:80").unwrap();
        assert_eq!(
            p.target(&"/".parse().unwrap()).to_string(),
            "http://origin:80/"
        );
        assert!(Proxy::new("https://origin").is_err());
        assert!(Proxy::new("/relative").is_err());
    }
}
