//! Rate limiting: `GET /api/hello` per client IP through [`RateLimitLayer`] (with a plan
//! tier read from a header a stand-in authentication layer turns into a request extension),
//! `GET /api/export` with at most 2 exports in flight per client, and the checks handlers make
//! themselves when the subject is only known inside them (a user name, a logged-in user).
//!
//! Environment: `API_RATE_LIMIT` (`/api/hello`; the `pro` plan gets 100 times as much),
//! `TRUSTED_PROXIES` (how a client's address is found). The other features build their route limits with `RateLimits::per_client` and
//! check their own policies with `RateLimits::check`.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use redtower_client::Redis;
use redtower_ratelimit::{
    ClientIp, ConcurrencyLimitLayer, Global, LeasedStore, Policy, Quota, RateLimitLayer,
    RateLimitStore, RefundWhen, Subject,
};
use serde_json::{Value, json};

use crate::{BuildError, Config, Rate, error::ApiError};

/// The rate limit store of the app, in process or in Redis, and how clients are told apart.
#[derive(Clone)]
pub(crate) struct RateLimits {
    /// Where every rate limit counts: memory or Redis, chosen at start.
    store: Arc<dyn RateLimitStore>,
    /// How a client's address is found (`TRUSTED_PROXIES`).
    client_ip: ClientIp,
}

impl RateLimits {
    /// The limits of the app: in process without Redis, else in Redis (shared by every
    /// instance).
    pub(crate) fn new(config: &Config, redis: Option<&Redis>) -> Self {
        let client_ip = if config.trusted_proxies.is_empty() {
            ClientIp::peer()
        } else {
            ClientIp::trusted_proxies(config.trusted_proxies.iter().copied())
        };
        let store: Arc<dyn RateLimitStore> = match redis {
            None => Arc::new(redtower_ratelimit::MemoryStore::new()),
            Some(redis) => Arc::new(redtower_ratelimit::RedisStore::new(redis.clone())),
        };
        Self { store, client_ip }
    }

    /// The store every limit counts in.
    pub(crate) fn store(&self) -> Arc<dyn RateLimitStore> {
        self.store.clone()
    }

    /// A layer spending `policy` for everyone at once (the [`Global`] subject): a budget
    /// shared with whatever else spends it, such as job workers.
    pub(crate) fn global(&self, policy: Policy) -> Result<RateLimitLayer, BuildError> {
        Ok(RateLimitLayer::new(self.store.clone(), policy)
            .key(Global)
            .build()?)
    }

    /// How a client's address is found (`TRUSTED_PROXIES`).
    pub(crate) fn client_ip(&self) -> &ClientIp {
        &self.client_ip
    }

    /// A layer allowing `rate` requests per client IP, answering with the `RateLimit` and
    /// `X-RateLimit-*` headers, and 429 + `Retry-After` beyond.
    pub(crate) fn per_client(
        &self,
        name: &'static str,
        rate: Rate,
    ) -> Result<RateLimitLayer, BuildError> {
        let policy = policy(name, rate)?;
        Ok(RateLimitLayer::new(self.store.clone(), policy)
            .key(self.client_ip.clone())
            .legacy_headers(true)
            .build()?)
    }

    /// A layer counting only the failed requests (answers of 400 and above) per client IP,
    /// `rate` of them: a successful request gives its unit back before its response leaves.
    pub(crate) fn failures_per_client(
        &self,
        name: &'static str,
        rate: Rate,
    ) -> Result<RateLimitLayer, BuildError> {
        let policy = policy(name, rate)?;
        Ok(RateLimitLayer::new(self.store.clone(), policy)
            .key(self.client_ip.clone())
            .refund_when(RefundWhen::Successful)
            .build()?)
    }

    /// One request against `policy` for `subject`, checked in a handler: 429 with
    /// `Retry-After` when denied. A store outage lets the request through (fail open, as the
    /// layers do by default), with a warning.
    pub(crate) async fn check(&self, policy: &Policy, subject: &str) -> Result<(), ApiError> {
        let policies = std::slice::from_ref(policy);
        match self.store.check(&Subject::new(subject), policies, 1).await {
            Ok(decision) if decision.is_allowed() => Ok(()),
            Ok(decision) => Err(ApiError::too_many_requests(
                decision.retry_after().unwrap_or_default(),
            )),
            Err(error) => {
                tracing::warn!(policy = policy.name(), %error, "rate limit store unavailable; applying the failure policy (fail open)");
                Ok(())
            }
        }
    }

    /// `GET /api/hello`, limited per client IP at `API_RATE_LIMIT` (100 times that on the
    /// `pro` plan), `GET /api/leased` (the same limit, its own counter, with leased quotas:
    /// slices of up to 100 units for 1 s), and `GET /api/export`, at most 2 in flight per
    /// client IP.
    pub(crate) fn routes<S>(&self, config: &Config) -> Result<Router<S>, BuildError>
    where
        S: Clone + Send + Sync + 'static,
    {
        let pro = Rate {
            count: config
                .api_rate
                .count
                .saturating_mul(NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN)),
            period: config.api_rate.period,
        };
        // Each plan has its own counter: an upgrade starts with the pro plan's full allowance.
        let api_limit = RateLimitLayer::new(self.store.clone(), policy("api", config.api_rate)?)
            .tier("pro", [policy("api-pro", pro)?])
            .quota_for(|parts: &axum::http::request::Parts| {
                match parts.extensions.get::<Plan>()? {
                    Plan::Pro => Some("pro"),
                    Plan::Free => None,
                }
            })
            .key(self.client_ip.clone())
            .legacy_headers(true)
            .build()?;
        let export_limit = ConcurrencyLimitLayer::new(
            self.store.clone(),
            "exports",
            NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
        )
        .key(self.client_ip.clone());
        // The hot-route variant: slices of up to 100 units leased for 1 s, decided in process.
        let leased = LeasedStore::new(self.store.clone(), 100, Duration::from_secs(1));
        let leased_limit = RateLimitLayer::new(leased, policy("api-leased", config.api_rate)?)
            .key(self.client_ip.clone())
            .legacy_headers(true)
            .build()?;
        Ok(Router::new()
            .route("/api/leased", get(hello).layer(leased_limit))
            .route(
                "/api/hello",
                get(hello)
                    .layer::<_, std::convert::Infallible>(api_limit)
                    .layer(middleware::from_fn(fake_auth)),
            )
            .route("/api/export", get(export).layer(export_limit)))
    }
}

/// A policy named `name` allowing `rate`, for [`RateLimits::check`].
pub(crate) fn policy(name: &'static str, rate: Rate) -> Result<Policy, BuildError> {
    Ok(Policy::new(
        name,
        Quota::with_period(rate.count, rate.period)?,
    ))
}

/// The network a client address is counted by: the address itself for IPv4, its /64 for
/// IPv6 (what one subscriber gets).
pub(crate) fn client_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map_or_else(|_| v6.to_string(), |net| net.trunc().to_string()),
    }
}

/// A plan tier, as an authentication layer would put it in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// `API_RATE_LIMIT`.
    Free,
    /// 100 times `API_RATE_LIMIT`.
    Pro,
}

/// A stand-in for an authentication layer: the plan comes from the `X-Demo-Plan` header
/// (`pro` or anything else). A real one would take it from the authenticated account.
async fn fake_auth(mut req: Request, next: Next) -> Response {
    let plan = match req.headers().get("x-demo-plan").map(HeaderValue::as_bytes) {
        Some(b"pro") => Plan::Pro,
        _ => Plan::Free,
    };
    req.extensions_mut().insert(plan);
    next.run(req).await
}

async fn hello(plan: Option<axum::Extension<Plan>>) -> Json<Value> {
    let plan = match plan {
        Some(axum::Extension(Plan::Pro)) => "pro",
        _ => "free",
    };
    Json(json!({"hello": "world", "plan": plan}))
}

/// `GET /api/export`: a slow CSV export (it takes about half a second, to stand for a heavy
/// one), at most 2 in flight per client IP on every instance together.
async fn export() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut csv = String::from("id,name\n");
    for i in 1..=100 {
        csv.push_str(&format!("{i},item {i}\n"));
    }
    ([(header::CONTENT_TYPE, "text/csv")], csv)
}
