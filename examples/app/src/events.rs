//! Pub/sub to the browser over server-sent events: `GET /events/{channel}` streams a channel,
//! `POST /events/{channel}` publishes the JSON body on it, `GET /client.js` is the browser
//! client.
//!
//! `user:<name>:...` channels belong to that logged-in user (a stream on them ends when the
//! session that opened it does, on any instance); `order:updates` is the server's; other
//! channels are public to read and open to any logged-in user to publish.
//!
//! Environment: `PUBLISH_RATE_LIMIT` (per user), `PUBLISH_IP_RATE_LIMIT` (per client network).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use redtower_client::Redis;
use redtower_pubsub::{
    Access, CancellationToken, Channel, ChannelAuthorizer, OnOpen, PubSub, PublishToken,
    ServerOwned, SseEndpoint, StreamOptions,
};
use redtower_ratelimit::{ClientIp, Policy};
use redtower_session::{SessionBackend, UserSessions, tower_sessions::Session};
use serde_json::{Value, json};

use crate::{
    BuildError, Config,
    error::{self, ApiError, AppJson},
    orders::ORDER_UPDATES,
    ratelimit::{self, RateLimits, client_network},
    sessions::session_error,
};

/// The most live streams one instance serves (each bound to its session's watch, whose own
/// limit is 10,000 per store).
pub const MAX_STREAMS: usize = 5_000;

/// Pub/sub of the app, in process or in Redis, with who may read and publish what.
#[derive(Clone)]
pub(crate) struct Events(Arc<EventsInner>);

struct EventsInner {
    pubsub: PubSub,
    /// Who may read and publish which channel; `order:updates` is the server's.
    channels: ServerOwned<ChannelOwner>,
    limits: RateLimits,
    /// `POST /events/{channel}` per user (checked in the handler, which knows the user).
    publish_limit: Policy,
    /// `POST /events/{channel}` per client network.
    publish_ip_limit: Policy,
    /// Cancelled on shutdown: ends every open stream.
    shutdown: CancellationToken,
}

impl Events {
    /// Pub/sub in process without Redis, else over Redis (shared by every instance).
    pub(crate) fn new(
        config: &Config,
        redis: Option<&Redis>,
        limits: &RateLimits,
    ) -> Result<Self, BuildError> {
        let pubsub = match redis {
            None => PubSub::memory(),
            Some(redis) => PubSub::new(redtower_pubsub::RedisStore::new(redis.clone())),
        };
        Ok(Self(Arc::new(EventsInner {
            pubsub,
            channels: ServerOwned::new(ChannelOwner).channel(ORDER_UPDATES),
            limits: limits.clone(),
            publish_limit: ratelimit::policy("publish", config.publish_rate)?,
            publish_ip_limit: ratelimit::policy("publish-ip", config.publish_ip_rate)?,
            shutdown: CancellationToken::new(),
        })))
    }

    /// The pub/sub handle, for the server's own publications.
    pub(crate) fn pubsub(&self) -> &PubSub {
        &self.0.pubsub
    }

    /// Cancelled on shutdown: ends every open stream.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown.clone()
    }

    /// `GET /client.js`, which reads no session.
    pub(crate) fn public_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new().route("/client.js", get(client_js))
    }

    /// `GET|POST /events/{channel}`, to be served under the session layer: each stream ends
    /// when the session of `users` it was opened with does.
    pub(crate) fn session_routes<S>(&self, users: Arc<dyn SessionBackend>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let sse = SseEndpoint::new(self.0.pubsub.clone())
            .authorizer(self.0.channels.clone())
            // Each stream ends when the session it was opened with does, and counts against
            // its user's (or, anonymous, its IP's) connections.
            .on_open(StreamAccess {
                sessions: users,
                client_ip: self.0.limits.client_ip().clone(),
            })
            .max_connections(MAX_STREAMS)
            .shutdown(self.0.shutdown.clone());
        Router::new()
            .route(
                "/events/{channel}",
                sse.method_router()
                    .layer(axum::middleware::map_response(error::json_errors))
                    .post(publish),
            )
            .with_state(self.clone())
    }
}

/// `user:<name>:...` channels belong to that logged-in user; other channels are public to
/// read. (Publishing is checked in [`publish`] so it can answer 401 before 403.)
#[derive(Debug, Clone, Copy)]
struct ChannelOwner;

#[async_trait::async_trait]
impl ChannelAuthorizer for ChannelOwner {
    async fn authorize(
        &self,
        request: &http::request::Parts,
        channel: &Channel,
        _access: Access,
    ) -> bool {
        match owner_of(channel.as_str()) {
            None => true,
            Some(owner) => {
                let Some(session) = request.extensions.get::<Session>() else {
                    return false;
                };
                matches!(redtower_session::current_user(session).await, Ok(Some(user)) if user == owner)
            }
        }
    }
}

fn owner_of(channel: &str) -> Option<&str> {
    channel
        .strip_prefix("user:")
        .map(|rest| rest.split(':').next().unwrap_or(""))
}

/// What the app knows about a stream's reader when it opens: its session's end (a stream on
/// a logged-in user's channels ends when that session is revoked, logged out or expires, on
/// any instance) and who it is, for the per-client connection limit.
struct StreamAccess {
    sessions: Arc<dyn SessionBackend>,
    client_ip: ClientIp,
}

#[async_trait::async_trait]
impl OnOpen for StreamAccess {
    async fn on_open(&self, request: &http::request::Parts, channels: &[Channel]) -> StreamOptions {
        // Streams are counted per client network (an IPv6 client by its /64), whoever is
        // logged in: a login costs nothing here, so a user name is no identity to count by.
        let session = request.extensions.get::<Session>();
        let options = match self.client_ip.client_addr(request) {
            Some(ip) => StreamOptions::new().client_key(client_network(ip)),
            None => StreamOptions::new(),
        };
        // Public channels are open to anyone; a user's own channels only while the session
        // that opened them lives.
        if !channels.iter().any(|c| owner_of(c.as_str()).is_some()) {
            return options;
        }
        let Some(id) = session.and_then(Session::id) else {
            return options.access_ends(std::future::ready(()));
        };
        match self.sessions.watch(&id) {
            Ok(ended) => options.access_ends(ended),
            Err(error) => {
                // The stream limit (`MAX_STREAMS`) is below the watch limit, so this is not
                // expected; refuse rather than keep a stream nobody can revoke.
                tracing::error!(%error, "cannot watch the session of a stream; refusing it");
                options.access_ends(std::future::ready(()))
            }
        }
    }
}

async fn client_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        redtower_pubsub::CLIENT_JS,
    )
}

/// `POST /events/{channel}`: publish the JSON body. Needs a login (401); `user:<name>:...`
/// channels only by that user (403).
async fn publish(
    State(events): State<Events>,
    session: Session,
    Path(channel): Path<String>,
    parts: http::request::Parts,
    AppJson(body): AppJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let events = &*events.0;
    let channel = Channel::new(&channel).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let user = redtower_session::current_user(&session)
        .await
        .map_err(|e| session_error(&e))?
        .ok_or_else(ApiError::unauthorized)?;
    // The library's authorizer decides: the server's channels, then other users' channels.
    if events.channels.is_server_owned(&channel) {
        return Err(ApiError::forbidden(
            "only the server publishes on this channel",
        ));
    }
    if !events
        .channels
        .authorize(&parts, &channel, Access::Publish)
        .await
    {
        return Err(ApiError::forbidden("this channel belongs to another user"));
    }
    // An `Idempotency-Key` makes a retried publish return the first event.
    let token = match parts.headers.get("idempotency-key") {
        None => PublishToken::random(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| PublishToken::new(v).ok())
            .ok_or_else(|| {
                ApiError::bad_request("Idempotency-Key must be 1 to 64 of A-Z a-z 0-9 _ -")
            })?,
    };
    events.limits.check(&events.publish_limit, &user).await?;
    if let Some(ip) = events.limits.client_ip().client_addr(&parts) {
        let network = format!("ip:{}", client_network(ip));
        events
            .limits
            .check(&events.publish_ip_limit, &network)
            .await?;
    }
    let json = serde_json::to_string(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = events
        .pubsub
        .publish_json_with(&channel, json, &token)
        .await
        .map_err(|error| match error {
            redtower_pubsub::Error::PayloadTooLarge { max, .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an event is at most {max} bytes"),
            ),
            error => {
                tracing::warn!(%error, "publish failed");
                ApiError::unavailable()
            }
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id.to_string() }))))
}
