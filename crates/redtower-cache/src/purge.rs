//! Purge over HTTP: an authenticated axum [`Router`] that an operator or a CMS webhook calls
//! to invalidate cache-aside keys, tags (response tags come from
//! [`ResponseCacheLayer::tag_header`](crate::ResponseCacheLayer::tag_header)) and prefixes.
//!
//! `POST /cache/purge` with `Authorization: Bearer <token>` and a JSON body
//! `{"keys": ["price:tea"], "tags": ["product:42"], "prefixes": ["/products/"]}` (any list may
//! be absent, not all empty) answers `200 {"keys": 1, "tags": 1, "prefixes": 1}` once every
//! purge is done. Purges go to the store through [`Cache::invalidate`],
//! [`Cache::invalidate_tag`] and [`Cache::invalidate_prefix`], so on Redis they take effect on
//! every instance at once (each instance's in-process L1 keeps a purged entry for at most its
//! TTL; the instance serving the purge drops it at once).
//!
//! A prefix matches a cache-aside key (`"price:"`) or the path and query of a cached
//! response's request URI (`"/products/"`, on every host); see [`bans`](crate::bans). Prefixes
//! need a cache built with [`prefix_purge`](crate::CacheBuilder::prefix_purge).
//!
//! | answer | when |
//! | --- | --- |
//! | 401 | no `Authorization: Bearer` token, or a wrong one (compared in constant time) |
//! | 400 | not JSON, unknown fields, all lists empty, more than 100 items, an empty key or prefix, a key or prefix over 1024 bytes, a tag over 128 bytes, or prefixes on a cache without [`prefix_purge`](crate::CacheBuilder::prefix_purge) |
//! | 413 | a body over 64 KiB |
//! | 503 | the store failed: some purges may not have happened (retry: purging is idempotent) |
//!
//! The `PURGE` method, as Varnish and Souin take it, is [`PurgeMethodLayer`]: `PURGE /some/path`
//! with the same bearer token invalidates that path and query's responses
//! ([`Cache::invalidate_uri`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use axum::{Router, body::Body};
//! use http::{Request, StatusCode, header};
//! use redtower_cache::{Cache, MemoryStore, purge::{self, PurgeAuth}};
//! use tower::ServiceExt;
//!
//! let cache = Cache::new(MemoryStore::new());
//! cache.set("price:tea", &8u32, Duration::from_secs(60)).await.unwrap();
//! let app: Router = Router::new()
//!     // .route(..) the application's own routes
//!     .merge(purge::router(cache.clone(), PurgeAuth::bearer("a-long-random-token").unwrap()));
//!
//! let purge = Request::post("/cache/purge")
//!     .header(header::AUTHORIZATION, "Bearer a-long-random-token")
//!     .header(header::CONTENT_TYPE, "application/json")
//!     .body(Body::from(r#"{"keys":["price:tea"],"tags":["product:42"]}"#))
//!     .unwrap();
//! assert_eq!(app.oneshot(purge).await.unwrap().status(), StatusCode::OK);
//! assert_eq!(cache.get_many::<u32>(&["price:tea"]).await, [None]);
//! # }
//! ```

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::DefaultBodyLimit,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::Cache;

/// The path the router serves.
pub const PATH: &str = "/cache/purge";

/// The most keys, tags and prefixes one request may purge together.
pub const MAX_ITEMS: usize = 100;

/// The longest cache-aside key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest prefix accepted, in bytes
/// ([`bans::MAX_PREFIX_LEN`](crate::bans::MAX_PREFIX_LEN)).
pub const MAX_PREFIX_LEN: usize = crate::bans::MAX_PREFIX_LEN;

/// The longest tag accepted, in bytes (the longest a response's tag field can add).
pub const MAX_TAG_LEN: usize = 128;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A purge router's configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeConfigError {
    /// The token is shorter than 16 bytes (guessable).
    #[error("purge token too short: at least 16 bytes are required")]
    TokenTooShort,
}

/// How purge requests authenticate.
#[derive(Clone)]
pub struct PurgeAuth {
    /// The SHA-256 of the token: compared in constant time with the request's.
    digest: [u8; 32],
}

impl std::fmt::Debug for PurgeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PurgeAuth::Bearer(..)")
    }
}

impl PurgeAuth {
    /// Requests must send `Authorization: Bearer <token>`.
    ///
    /// # Errors
    ///
    /// [`PurgeConfigError::TokenTooShort`] for a token under 16 bytes.
    pub fn bearer(token: impl AsRef<[u8]>) -> Result<Self, PurgeConfigError> {
        let token = token.as_ref();
        if token.len() < 16 {
            return Err(PurgeConfigError::TokenTooShort);
        }
        Ok(Self {
            digest: Sha256::digest(token).into(),
        })
    }

    /// Whether `headers` carry the token. Both sides are hashed first, so the comparison
    /// takes the same time whatever the sent token's length and content.
    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(sent) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        let sent: [u8; 32] = Sha256::digest(sent).into();
        let diff = sent
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The body of a purge request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
}

impl PurgeRequest {
    fn validate(&self, cache: &Cache) -> Result<(), &'static str> {
        if self.keys.is_empty() && self.tags.is_empty() && self.prefixes.is_empty() {
            return Err("nothing to purge: give keys, tags or prefixes");
        }
        if self.keys.len() + self.tags.len() + self.prefixes.len() > MAX_ITEMS {
            return Err("too many keys, tags and prefixes (at most 100)");
        }
        if self
            .prefixes
            .iter()
            .any(|p| p.is_empty() || p.len() > MAX_PREFIX_LEN)
        {
            return Err("a prefix is empty or longer than 1024 bytes");
        }
        if !self.prefixes.is_empty() && !cache.prefix_purge() {
            return Err("prefix purge is not turned on for this cache");
        }
        if self
            .keys
            .iter()
            .any(|k| k.is_empty() || k.len() > MAX_KEY_LEN)
        {
            return Err("a key is empty or longer than 1024 bytes");
        }
        if self
            .tags
            .iter()
            .any(|t| t.is_empty() || t.len() > MAX_TAG_LEN)
        {
            return Err("a tag is empty or longer than 128 bytes");
        }
        Ok(())
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": "missing or wrong bearer token" })),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A router serving `POST /cache/purge` (see the [module docs](self)); merge it into the
/// application's router, usually on an internal listener or behind the operator network.
pub fn router<S>(cache: Cache, auth: PurgeAuth) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let handler = move |headers: HeaderMap, body: Bytes| {
        let cache = cache.clone();
        let auth = auth.clone();
        async move { purge(&cache, &auth, &headers, &body).await }
    };
    Router::new()
        .route(PATH, post(handler))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn purge(cache: &Cache, auth: &PurgeAuth, headers: &HeaderMap, body: &[u8]) -> Response {
    if !auth.allows(headers) {
        return unauthorized();
    }
    let req: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if let Err(message) = req.validate(cache) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let keys = futures::future::join_all(req.keys.iter().map(|k| cache.invalidate(k)));
    let tags = futures::future::join_all(req.tags.iter().map(|t| cache.invalidate_tag(t)));
    let prefixes =
        futures::future::join_all(req.prefixes.iter().map(|p| cache.invalidate_prefix(p)));
    let (keys, tags, prefixes) = futures::join!(keys, tags, prefixes);
    if let Some(e) = keys
        .into_iter()
        .chain(tags)
        .chain(prefixes)
        .find_map(Result::err)
    {
        tracing::warn!(target: "redtower::cache", error = %e, "purge failed");
        return error(StatusCode::SERVICE_UNAVAILABLE, "cache store failed; retry");
    }
    tracing::info!(target: "redtower::cache", keys = req.keys.len(), tags = req.tags.len(), prefixes = req.prefixes.len(), "purged");
    Json(serde_json::json!({
        "keys": req.keys.len(),
        "tags": req.tags.len(),
        "prefixes": req.prefixes.len(),
    }))
    .into_response()
}

/// The method `PURGE`.
fn purge_method() -> &'static http::Method {
    static PURGE: std::sync::LazyLock<http::Method> = std::sync::LazyLock::new(|| {
        http::Method::from_bytes(b"PURGE").expect("PURGE is a valid method token")
    });
    &PURGE
}

/// A layer answering `PURGE <path>` requests itself: with the purge token, it invalidates the
/// responses of that path and query on every host and instance ([`Cache::invalidate_uri`],
/// which needs [`prefix_purge`](crate::CacheBuilder::prefix_purge)) and answers
/// `200 {"purged": "<path and query>"}`; without it 401. Every other request goes to the
/// inner service untouched (one comparison of the method). Put it around the whole router, so
/// it sees every path:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use axum::{Router, body::Body, routing::get};
/// use http::{Method, Request, StatusCode, header};
/// use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer, purge::{PurgeAuth, PurgeMethodLayer}};
/// use tower::ServiceExt;
///
/// let cache = Cache::builder(MemoryStore::new()).prefix_purge(true).build();
/// let auth = PurgeAuth::bearer("a-long-random-token").unwrap();
/// let app = Router::new()
///     .route("/products/42", get(|| async { "tea" }))
///     .layer(ResponseCacheLayer::new(cache.clone(), Duration::from_secs(60)))
///     .layer(PurgeMethodLayer::new(cache, auth));
///
/// let get = || Request::get("/products/42").body(Body::empty()).unwrap();
/// app.clone().oneshot(get()).await.unwrap();
/// assert_eq!(app.clone().oneshot(get()).await.unwrap().headers()["x-cache"], "HIT");
/// let purge = Request::builder()
///     .method(Method::from_bytes(b"PURGE").unwrap())
///     .uri("/products/42")
///     .header(header::AUTHORIZATION, "Bearer a-long-random-token")
///     .body(Body::empty())
///     .unwrap();
/// assert_eq!(app.clone().oneshot(purge).await.unwrap().status(), StatusCode::OK);
/// assert_eq!(app.clone().oneshot(get()).await.unwrap().headers()["x-cache"], "MISS");
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PurgeMethodLayer {
    cache: Cache,
    auth: PurgeAuth,
}

impl PurgeMethodLayer {
    /// Answers `PURGE` requests authenticated by `auth` by purging from `cache`.
    pub fn new(cache: Cache, auth: PurgeAuth) -> Self {
        Self { cache, auth }
    }
}

impl<S> tower_layer::Layer<S> for PurgeMethodLayer {
    type Service = PurgeMethod<S>;

    fn layer(&self, inner: S) -> PurgeMethod<S> {
        PurgeMethod {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PurgeMethodLayer`].
#[derive(Debug, Clone)]
pub struct PurgeMethod<S> {
    inner: S,
    layer: PurgeMethodLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for PurgeMethod<S>
where
    S: tower_service::Service<http::Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.method() != purge_method() {
            return Box::pin(self.inner.call(req));
        }
        let layer = self.layer.clone();
        Box::pin(async move {
            if !layer.auth.allows(req.headers()) {
                return Ok(unauthorized());
            }
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str);
            if target.len() > MAX_PREFIX_LEN {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "path longer than 1024 bytes",
                ));
            }
            match layer.cache.invalidate_uri(target).await {
                Ok(()) => {
                    tracing::info!(target: "redtower::cache", "purged one path");
                    Ok(Json(serde_json::json!({ "purged": target })).into_response())
                }
                Err(crate::Error::PrefixPurgeOff) => Ok(error(
                    StatusCode::BAD_REQUEST,
                    "prefix purge is not turned on for this cache",
                )),
                Err(e) => {
                    tracing::warn!(target: "redtower::cache", error = %e, "purge failed");
                    Ok(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cache store failed; retry",
                    ))
                }
            }
        })
    }
}
