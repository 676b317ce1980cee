//! [`Responder`]: answers the requests of one route; here, the lookup of a request (bypass,
//! key, read, hit).

use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    Credentials, RouteSettings,
    key::{RequestKey, request_host, request_key, session_cookie},
    policy::{Directives, vary},
    settings::sort_names,
};
use crate::{
    Cache, ResponseBody,
    cache::{Freshness, freshness},
    envelope::{Entry, FLAG_AUTHORIZED, FLAG_ETAG_GENERATED, FLAG_VARY_RECORD},
    key::Key,
};

mod admit;
mod miss;
mod respond;

use respond::{Conditionals, Served, secs};

/// Answers the requests of one route: from the cache when it may, else through the handler
/// (one fill per key across instances), storing what it may. Holds the shared [`Cache`] and
/// the route's settings; cloning bumps two reference counts.
///
/// One concern per file: this one looks a request up (bypass, key, read, hit), [`miss`] runs
/// misses, refreshes and other methods, [`admit`] decides whether a response is stored, and
/// [`respond`] builds responses from entries and the `Age`/`X-Cache`/`Cache-Status` headers.
#[derive(Clone)]
pub(crate) struct Responder {
    cache: Cache,
    settings: Arc<RouteSettings>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("cache", &self.cache)
            .field("route", &self.settings.route)
            .finish()
    }
}

/// Calls a service once it is ready.
async fn call<S, ReqBody>(mut svc: S, req: Request<ReqBody>) -> Result<S::Response, S::Error>
where
    S: Service<Request<ReqBody>>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

impl Responder {
    pub(crate) fn new(cache: Cache, settings: Arc<RouteSettings>) -> Self {
        Self { cache, settings }
    }

    fn route(&self) -> &'static str {
        self.settings.route
    }

    /// Answers one request.
    pub(crate) async fn handle<S, ReqBody, ResBody>(
        self,
        inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return self.other_method(inner, req).await;
        }
        let (mut parts, body) = req.into_parts();
        let req_cc = Directives::parse(&parts.headers);
        if let Some(reason) = self.bypass_reason(&parts, &req_cc) {
            self.cache.record_reason("bypass", self.route(), reason);
            tracing::debug!(target: "redtower::cache", route = self.route(), outcome = "bypass", reason, "cache bypass");
            let resp = call(inner, Request::from_parts(parts, body)).await?;
            return Ok(self.decorate(resp.map(ResponseBody::inner), Served::Bypass(reason), None));
        }
        let base = self.key(&mut parts);
        let head = method == Method::HEAD;
        let force = forces_refetch(&req_cc, &parts.headers);
        // A URI whose responses vary on headers beyond the declared ones: its variant's key
        // straight away when this process has seen its Vary names, else through its record.
        // Whether the key has names beyond the declared ones (a URI whose responses vary).
        let mut varied = false;
        let mut key = match self.settings.remembered(base.key.primary()) {
            Some(extra) => {
                varied = true;
                self.request_key(&parts, Some(&extra))
            }
            None => base,
        };
        let mut found = if force {
            None
        } else {
            self.read(&key.key, true).await
        };
        if let Some(extra) = found.as_deref().and_then(vary_record) {
            self.settings
                .remember(key.key.primary(), Some(extra.clone()));
            key = self.request_key(&parts, Some(&extra));
            varied = true;
            found = self
                .read(&key.key, true)
                .await
                .filter(|e| e.flags & FLAG_VARY_RECORD == 0);
        }
        // RFC 9111 3.5: a request with `Authorization` reuses only responses that allow it.
        let authorization = self.settings.credentials == Credentials::Bypass
            && parts.headers.contains_key(header::AUTHORIZATION);
        if authorization {
            found = found.filter(|e| e.flags & FLAG_AUTHORIZED != 0);
        }
        let now = self.cache.now_ms();
        let fresh = |e: &Entry| {
            let too_old = req_cc
                .max_age
                .is_some_and(|m| secs(now.saturating_sub(e.stored_at)) > m);
            freshness(e, now) == Freshness::Fresh && !too_old
        };
        if let Some(range) = parts.headers.get(header::RANGE) {
            // Ranges are served from a fresh full response (RFC 9110 14.2), or from a stored
            // partial response to the same `Range` (RFC 9111 3.3); anything else goes to the
            // handler, and a 206 it answers is stored for that `Range`.
            let served = found
                .as_deref()
                .filter(|e| fresh(e) && !parts.headers.contains_key(header::IF_RANGE))
                .and_then(|e| self.respond_range(e, range.as_bytes(), head));
            if let Some(resp) = served {
                self.cache.record("hit", self.route());
                return Ok(resp);
            }
            if !varied && !parts.headers.contains_key(header::IF_RANGE) {
                let ranged = self.partial_key(&parts);
                let part = if force {
                    None
                } else {
                    self.read(&ranged.key, false).await
                };
                let part = part.filter(|e| {
                    e.status == StatusCode::PARTIAL_CONTENT
                        && fresh(e)
                        && (!authorization || e.flags & FLAG_AUTHORIZED != 0)
                });
                if let Some(resp) = part
                    .as_deref()
                    .and_then(|e| self.respond_range(e, range.as_bytes(), head))
                {
                    self.cache.record("hit", self.route());
                    return Ok(resp);
                }
                let conditionals = Conditionals::take(&mut parts.headers);
                if !head {
                    self.cache.record("miss", self.route());
                    let stored = Stored {
                        fallback: None,
                        validate: None,
                        authorization,
                    };
                    return Box::pin(self.miss(
                        inner,
                        parts,
                        body,
                        ranged,
                        conditionals,
                        stored,
                        if force { now } else { 0 },
                        head,
                    ))
                    .await;
                }
                let resp = call(inner, Request::from_parts(parts, body)).await?;
                return Ok(self.decorate(
                    resp.map(ResponseBody::inner),
                    Served::Miss("HEAD"),
                    None,
                ));
            }
            let reason = "RANGE";
            self.cache.record_reason("bypass", self.route(), reason);
            let resp = call(inner, Request::from_parts(parts, body)).await?;
            return Ok(self.decorate(resp.map(ResponseBody::inner), Served::Bypass(reason), None));
        }
        let conditionals = Conditionals::take(&mut parts.headers);
        let mut fallback = None;
        let mut validate = None;
        // Only a fill newer than this counts as shareable: for a forced refetch, one that lands
        // after the request arrived.
        let mut seen = if force { now } else { 0 };
        if let Some(e) = found {
            seen = e.stored_at;
            let too_old = req_cc
                .max_age
                .is_some_and(|m| secs(now.saturating_sub(e.stored_at)) > m);
            match freshness(&e, now) {
                Freshness::Fresh if !too_old => {
                    self.cache.record("hit", self.route());
                    // An entry read from the store is ours alone: move its parts out.
                    return Ok(match Arc::try_unwrap(e) {
                        Ok(e) => self.respond_owned(e, &conditionals, head, Served::Hit),
                        Err(e) => self.respond(&e, &conditionals, head, Served::Hit),
                    });
                }
                Freshness::Stale if !too_old => {
                    self.cache.record("stale", self.route());
                    self.refresh(inner, parts, key, seen, Some(e.clone()));
                    return Ok(self.respond(&e, &conditionals, head, Served::Stale));
                }
                Freshness::Stale | Freshness::ErrorOnly => {
                    validate = has_validators(&e).then(|| e.clone());
                    fallback = Some(e);
                }
                _ => validate = has_validators(&e).then_some(e),
            }
        }
        self.cache.record("miss", self.route());
        // The miss path is boxed so the hit path's future stays small.
        Box::pin(self.miss(
            inner,
            parts,
            body,
            key,
            conditionals,
            Stored {
                fallback,
                validate,
                authorization,
            },
            seen,
            head,
        ))
        .await
    }

    /// Reads `key`: held in process, else from the store, with the generations of the
    /// route's tags and of those the URI's responses listed when last seen here (looked up
    /// only then: an entry held in process needs no tag check). With `learn`, the tags of an
    /// entry stored by another instance (or before a restart) are remembered for next time.
    async fn read(&self, key: &Key, learn: bool) -> Option<Arc<Entry>> {
        if let Some(entry) = self.cache.read_in_process(key) {
            return Some(entry);
        }
        let tags = self.settings.lookup_tags(key.primary());
        let found = self.cache.read_store(key, &tags).await;
        if let Some(e) = &found
            && learn
            && self.settings.tag_header.is_some()
            && e.tags.iter().any(|(t, _)| !tags.contains(t))
        {
            self.settings
                .remember_tags(key.primary(), e.tags.iter().map(|(t, _)| t));
        }
        found
    }

    /// The key of the URI's stored partial response (one per URI and declared header values,
    /// whatever `Range` fetched it).
    pub(super) fn partial_key(&self, parts: &Parts) -> RequestKey {
        let mut copy = Request::new(()).into_parts().0;
        copy.uri = parts.uri.clone();
        copy.headers = parts.headers.clone();
        copy.headers
            .insert(header::RANGE, http::HeaderValue::from_static("partial"));
        self.request_key(&copy, Some(&[header::RANGE]))
    }

    /// The key of `parts` (already rewritten by [`key`](Self::key)) on the declared key
    /// headers and `extra` names.
    pub(super) fn request_key(&self, parts: &Parts, extra: Option<&[HeaderName]>) -> RequestKey {
        let settings = &self.settings;
        let per_user = (settings.credentials == Credentials::PerUser)
            .then_some(settings.session_cookies.as_slice());
        let names = match extra {
            Some(extra) if !extra.is_empty() => {
                let mut all: Vec<HeaderName> = settings
                    .names()
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .chain(extra)
                    .cloned()
                    .collect();
                sort_names(&mut all);
                Some(Arc::from(all))
            }
            _ => settings.names(),
        };
        request_key(parts, &settings.query, names, per_user)
    }

    /// The request's key; strips the query parameters the route does not key on from the
    /// URI the handler sees.
    fn key(&self, parts: &mut Parts) -> RequestKey {
        let settings = &self.settings;
        if settings.query.filters()
            && let Some(uri) = settings.query.rewrite(&parts.uri)
        {
            parts.uri = uri;
        }
        self.request_key(parts, None)
    }

    fn bypass_reason(&self, parts: &Parts, req_cc: &Directives) -> Option<&'static str> {
        if req_cc.no_store {
            return Some("REQUEST-NO-STORE");
        }
        // A `Host` that is not text is never cached (nor keyed as "no host").
        if parts
            .headers
            .get(header::HOST)
            .is_some_and(|h| h.to_str().is_err())
            || !self
                .settings
                .hosts
                .admits(&request_host(parts), self.settings.route)
        {
            return Some("HOST");
        }
        if self.settings.credentials == Credentials::Bypass
            && session_cookie(&parts.headers, &self.settings.session_cookies).is_some()
        {
            return Some("SESSION-COOKIE");
        }
        None
    }
}

/// The stored entry a miss found (not fresh): served when the handler fails (`fallback`),
/// revalidated with its validators (`validate`).
pub(super) struct Stored {
    pub(super) fallback: Option<Arc<Entry>>,
    pub(super) validate: Option<Arc<Entry>>,
    /// The request carries `Authorization` (and the route does not key on it).
    pub(super) authorization: bool,
}

/// Whether an entry has a validator of the handler's (an `ETag` it did not generate, or a
/// `Last-Modified`).
fn has_validators(e: &Entry) -> bool {
    (e.flags & FLAG_ETAG_GENERATED == 0 && e.headers.contains_key(header::ETAG))
        || e.headers.contains_key(header::LAST_MODIFIED)
}

/// The names of a Vary record (see [`FLAG_VARY_RECORD`]); `None` for a response.
fn vary_record(e: &Entry) -> Option<Arc<[HeaderName]>> {
    if e.flags & FLAG_VARY_RECORD == 0 {
        return None;
    }
    Some(Arc::from(vary(&e.headers).unwrap_or_default()))
}

/// Whether the request asks for a refetch (`no-cache`, `max-age=0`, `Pragma: no-cache`).
fn forces_refetch(req_cc: &Directives, headers: &HeaderMap) -> bool {
    req_cc.no_cache
        || req_cc.max_age == Some(0)
        || headers
            .get(header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"))
}
