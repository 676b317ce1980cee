//! Rate limiting: `GET /api/hello` per client IP through [`RateLimitLayer`], and the checks
//! handlers make themselves when the subject is only known inside them (a user name, a
//! logged-in user).
//!
//! Environment: `API_RATE_LIMIT` (`/api/hello`), `TRUSTED_PROXIES` (how a client's address is
//! found). The other features build their route limits with `RateLimits::per_client` and
//! check their own policies with `RateLimits::check`.

use std::{net::IpAddr, sync::Arc};

use axum::{Json, Router, routing::get};
use redtower_client::Redis;
use redtower_ratelimit::{ClientIp, Policy, Quota, RateLimitLayer, RateLimitStore, Subject};
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

    /// `GET /api/hello`, limited per client IP at `API_RATE_LIMIT`.
    pub(crate) fn routes<S>(&self, config: &Config) -> Result<Router<S>, BuildError>
    where
        S: Clone + Send + Sync + 'static,
    {
        let api_limit = self.per_client("api", config.api_rate)?;
        Ok(Router::new().route("/api/hello", get(hello).layer(api_limit)))
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

async fn hello() -> Json<Value> {
    Json(json!({"hello": "world"}))
}
