//! Misses: single-flight fills through the handler, background refreshes of stale entries,
//! `stale-if-error`, and other methods (unsafe ones invalidate their URI).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    Responder,
    admit::Lead,
    call,
    respond::{Conditionals, Served},
};
use crate::{
    ResponseBody,
    cache::{Filled, Outcome},
    envelope::Entry,
    http::key::{RequestKey, primary},
    key::short,
};

impl Responder {
    /// A miss: fill through single-flight, store when allowed, or serve stale on errors.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn miss<S, ReqBody, ResBody>(
        self,
        inner: S,
        parts: Parts,
        body: ReqBody,
        key: RequestKey,
        conditionals: Conditionals,
        fallback: Option<Arc<Entry>>,
        seen: u64,
        head: bool,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        if head {
            // HEAD is never stored; only served from a stored GET.
            let resp = call(inner, Request::from_parts(parts, body)).await?;
            return Ok(self.decorate(resp.map(ResponseBody::inner), Served::Miss("HEAD"), None));
        }
        let leader = {
            let responder = self.clone();
            let key = key.clone();
            let req = Request::from_parts(parts, body);
            move || async move {
                match call(inner, req).await {
                    Ok(resp) => {
                        let (lead, outcome) = responder.analyze(resp, &key).await;
                        (Ok(lead), outcome)
                    }
                    Err(e) => (Err(e), Outcome::Nothing),
                }
            }
        };
        let filled = self
            .cache
            .fill(&key.key, &self.settings.tags, seen, leader)
            .await;
        let led = match filled {
            Filled::Shared(e, _) => {
                return Ok(self.respond(&e, &conditionals, false, Served::Coalesced));
            }
            Filled::Led(r) => r,
            Filled::Own(f) => f().await.0,
        };
        let stale_ok = |e: &Entry| self.cache.now_ms() < e.error_until.max(e.stale_until);
        match led {
            Ok(Lead::Entry(e)) => Ok(self.respond(&e, &conditionals, false, Served::Stored)),
            Ok(Lead::Pass(resp, reason)) => match fallback {
                Some(stale) if resp.status().is_server_error() && stale_ok(&stale) => {
                    self.cache.record("stale", self.route());
                    let status = Served::StaleError(resp.status().as_u16());
                    Ok(self.respond(&stale, &conditionals, false, status))
                }
                _ => {
                    metrics::counter!(
                        "redtower_cache_not_stored_total",
                        "cache" => self.cache.name(),
                        "route" => self.route(),
                        "reason" => reason
                    )
                    .increment(1);
                    tracing::debug!(target: "redtower::cache", route = self.route(), outcome = "miss", reason, "response not stored");
                    Ok(self.decorate(resp, Served::Miss(reason), None))
                }
            },
            Err(err) => match fallback {
                Some(stale) if stale_ok(&stale) => {
                    self.cache.record("stale", self.route());
                    Ok(self.respond(&stale, &conditionals, false, Served::StaleError(500)))
                }
                _ => Err(err),
            },
        }
    }

    /// Non-GET methods pass through; successful unsafe ones invalidate their URI.
    pub(super) async fn other_method<S, ReqBody, ResBody>(
        &self,
        inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
    {
        let unsafe_method = matches!(
            *req.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let group = (unsafe_method && self.settings.invalidate_unsafe).then(|| {
            let (parts, _) = Request::new(()).into_parts();
            let mut parts: Parts = parts;
            parts.uri = req.uri().clone();
            parts.headers = req.headers().clone();
            short(&primary(&parts, &self.settings.query))
        });
        let resp = call(inner, req).await?;
        if let Some(group) = group {
            let s = resp.status();
            if (s.is_success() || s.is_redirection())
                && let Err(error) = self.cache.invalidate_group(&group).await
            {
                tracing::debug!(target: "redtower::cache", route = self.route(), %error, "invalidation after an unsafe request failed");
            }
        }
        Ok(resp.map(ResponseBody::inner))
    }

    /// Starts one background refresh of a stale entry.
    pub(super) fn refresh<S, ReqBody, ResBody>(
        &self,
        inner: S,
        mut parts: Parts,
        key: RequestKey,
        seen: u64,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        // A stale HEAD refreshes the GET entry.
        parts.method = Method::GET;
        parts.headers.remove(header::IF_NONE_MATCH);
        parts.headers.remove(header::IF_MODIFIED_SINCE);
        let responder = self.clone();
        self.cache.spawn_refresh(
            key.key.clone(),
            seen,
            self.settings.tags.clone(),
            move || async move {
                match call(inner, Request::from_parts(parts, ReqBody::default())).await {
                    Ok(resp) => responder.analyze(resp, &key).await.1,
                    Err(_) => Outcome::Nothing,
                }
            },
        );
    }
}
