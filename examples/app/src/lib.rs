//! The redtower example app: one axum service wiring in every redtower layer.
//!
//! Run with: `cargo run -p redtower-example` (no Redis needed: every feature then runs on its
//! in-process backend), or `REDIS_URL=redis://127.0.0.1:6379 cargo run -p redtower-example` to
//! share everything between instances. The routes and environment variables are listed in
//! `examples/app/README.md`.
//!
//! Each route shows one feature the way an application should write it:
//!
//! * `GET /products/featured`: a slow "database" call behind [`ResponseCacheLayer`];
//! * `GET /api/hello` and `POST /orders`: [`RateLimitLayer`] per client IP;
//! * `/login`, `/me`, `/me/sessions`, `/logout-others`, `/logout-everywhere`: sessions with
//!   revocation;
//! * `GET|POST /events/{channel}`: pub/sub to the browser over SSE;
//! * `POST /orders`: a `ship-order` job with delay, attempts and backoff, run by a worker;
//! * `GET /plain`, `GET /whoami`, `GET /api/stacked`: no layer, a session read alone, and the
//!   rate limit + session + cache stacked, for the load harness (see [`probes`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{delete, get, post},
};
use redtower_cache::{Cache, Credentials, ResponseCacheLayer};
use redtower_client::Redis;
use redtower_jobs::{Backoff, Job, JobContext, JobError, Queue, Worker, WorkerHandle};
use redtower_pubsub::{
    Access, CancellationToken, Channel, ChannelAuthorizer, OnOpen, PubSub, PublishToken,
    ServerOwned, SseEndpoint, StreamOptions,
};
use redtower_ratelimit::{ClientIp, Policy, Quota, RateLimitLayer, RateLimitStore, Subject};
use redtower_session::{
    AuthSession, SessionBackend, SessionLayer, SessionMeta, UserSessions, bind_user,
    tower_sessions::{Session, cookie::Key},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod config;
pub mod error;
pub mod orders;
pub mod probes;

pub use config::{Config, Rate};
use error::{ApiError, AppJson};
use orders::{Order, OrderStatus, Orders};

/// The largest body `POST /events/{channel}` and the JSON routes accept.
pub const MAX_BODY: usize = 64 * 1024;
/// The channel order updates are published on.
pub const ORDER_UPDATES: &str = "order:updates";
/// The most live streams one instance serves (each bound to its session's watch, whose own
/// limit is 10,000 per store).
pub const MAX_STREAMS: usize = 5_000;
/// The queue of `ship-order` jobs.
pub const SHIP_QUEUE: &str = "orders";

/// Everything the routes share: one of each backend, built once in `main`.
///
/// Cloning is one reference-count bump: axum clones the router's state for every request,
/// so the state is one `Arc` rather than a struct of configuration and handles.
#[derive(Clone)]
pub struct Services(Arc<ServicesInner>);

/// The fields of [`Services`], reached through `Deref`.
#[doc(hidden)]
pub struct ServicesInner {
    config: Config,
    redis: Option<Redis>,
    cache: Cache,
    /// Where every rate limit counts: memory or Redis, chosen at start.
    limits: Arc<dyn RateLimitStore>,
    /// `POST /login` per user name (checked in the handler, which reads the name).
    login_user_limit: Policy,
    /// `POST /events/{channel}` per user (checked in the handler, which knows the user).
    publish_limit: Policy,
    /// `POST /events/{channel}` per client network.
    publish_ip_limit: Policy,
    /// The session store chosen at run time; handlers call [`UserSessions`] on it.
    sessions: Arc<dyn SessionBackend>,
    session_layer: SessionLayer,
    /// Who may read and publish which channel; `order:updates` is the server's.
    channels: ServerOwned<ChannelOwner>,
    /// How a client's address is found (`TRUSTED_PROXIES`).
    client_ip: ClientIp,
    pubsub: PubSub,
    queue: Queue<ShipOrder>,
    orders: Orders,
    featured_db_calls: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ServicesInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicesInner").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Services {
    type Target = ServicesInner;

    fn deref(&self) -> &ServicesInner {
        &self.0
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// The `ship-order` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipOrder {
    /// The order.
    pub order_id: String,
    /// Where the confirmation goes.
    pub email: String,
    /// What was ordered.
    pub item: String,
    /// Fail this many attempts first (to show retries).
    pub fail_times: u32,
}

impl Job for ShipOrder {
    const NAME: &'static str = "ship-order";
}

/// An error while building the services.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Redis configuration.
    #[error(transparent)]
    Redis(#[from] redtower_client::Error),
    /// Pub/sub store.
    #[error(transparent)]
    PubSub(#[from] redtower_pubsub::Error),
    /// A rate limit.
    #[error("rate limit: {0}")]
    RateLimit(#[from] redtower_ratelimit::ConfigError),
    /// The session store (a secret too short).
    #[error("sessions: {0}")]
    Session(#[from] redtower_session::Error),
}

impl Services {
    /// Builds every backend: in-process when `config.redis` is `None`, else over Redis
    /// (connected lazily, so the app starts while Redis is down).
    ///
    /// # Errors
    ///
    /// When a configuration value cannot be used.
    pub fn new(config: Config) -> Result<Self, BuildError> {
        let secret: Vec<u8> = match &config.session_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "SESSION_SECRET is not set: using a random one, so sessions do not survive a \
                     restart and are not shared between instances"
                );
                (0..64).map(|_| rand::random::<u8>()).collect()
            }
        };
        let key = Key::from(&secret);
        let cookie_secure = config.cookie_secure;
        // One layer type whichever store was chosen.
        let session_layer = |store: &Arc<dyn SessionBackend>| {
            SessionLayer::new(store.clone(), key.clone()).secure(cookie_secure)
        };
        let policy = |name: &'static str, rate: Rate| -> Result<Policy, BuildError> {
            Ok(Policy::new(
                name,
                Quota::with_period(rate.count, rate.period)?,
            ))
        };
        let login_user_limit = policy("login-user", config.login_user_rate)?;
        let channels = ServerOwned::new(ChannelOwner).channel(ORDER_UPDATES);
        let client_ip = if config.trusted_proxies.is_empty() {
            ClientIp::peer()
        } else {
            ClientIp::trusted_proxies(config.trusted_proxies.iter().copied())
        };
        let publish_limit = policy("publish", config.publish_rate)?;
        let publish_ip_limit = policy("publish-ip", config.publish_ip_rate)?;
        let services = match &config.redis {
            None => {
                tracing::info!(
                    "REDIS_URL is not set: every feature runs on its in-process backend"
                );
                let sessions: Arc<dyn SessionBackend> =
                    Arc::new(redtower_session::MemoryStore::new());
                let jobs = redtower_jobs::MemoryStore::new();
                ServicesInner {
                    redis: None,
                    cache: Cache::new(redtower_cache::MemoryStore::new()),
                    limits: Arc::new(redtower_ratelimit::MemoryStore::new()),
                    login_user_limit,
                    publish_limit,
                    publish_ip_limit,
                    channels: channels.clone(),
                    client_ip: client_ip.clone(),
                    session_layer: session_layer(&sessions),
                    sessions,
                    pubsub: PubSub::memory(),
                    queue: Queue::new(jobs, SHIP_QUEUE),
                    orders: Orders::memory(),
                    featured_db_calls: Arc::default(),
                    shutdown: CancellationToken::new(),
                    config,
                }
            }
            Some(redis_config) => {
                let redis = Redis::new(redis_config.clone())?;
                tracing::info!(url = %redis_config.redacted_url(), "using Redis");
                let sessions: Arc<dyn SessionBackend> = Arc::new(
                    redtower_session::RedisStore::new(redis.clone(), &secret[..32])?,
                );
                ServicesInner {
                    cache: if config.cache_l1 {
                        Cache::builder(redtower_cache::RedisStore::new(redis.clone()))
                            .l1(1_000, Duration::from_millis(500))
                            .build()
                    } else {
                        Cache::new(redtower_cache::RedisStore::new(redis.clone()))
                    },
                    limits: Arc::new(redtower_ratelimit::RedisStore::new(redis.clone())),
                    login_user_limit,
                    publish_limit,
                    publish_ip_limit,
                    channels: channels.clone(),
                    client_ip: client_ip.clone(),
                    session_layer: session_layer(&sessions),
                    sessions,
                    pubsub: PubSub::new(redtower_pubsub::RedisStore::new(redis.clone())),
                    queue: Queue::new(redtower_jobs::RedisStore::new(redis.clone()), SHIP_QUEUE),
                    orders: Orders::redis(redis.clone()),
                    featured_db_calls: Arc::default(),
                    shutdown: CancellationToken::new(),
                    redis: Some(redis),
                    config,
                }
            }
        };
        Ok(Self(Arc::new(services)))
    }

    /// With Redis, waits for the first connection up to
    /// [`redis_connect_wait`](Config::redis_connect_wait) (`REDIS_CONNECT_WAIT`), so that the
    /// first requests are served by Redis rather than by the failure policies. Returns whether
    /// Redis is up; when it is not, logs one warning and the app runs degraded (each layer
    /// follows its failure policy, `/health` answers 503) until Redis is reached. Returns
    /// `true` at once without Redis.
    pub async fn wait_for_redis(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let wait = self.config.redis_connect_wait;
        match redis.wait_ready(wait).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(
                    url = %redis.config().redacted_url(),
                    waited = ?wait,
                    %error,
                    "Redis is not reachable: starting degraded (failure policies apply until it is)"
                );
                false
            }
        }
    }

    /// One request against `policy` for `subject`, checked in a handler: 429 with
    /// `Retry-After` when denied. A store outage lets the request through (fail open, as the
    /// layers do by default), with a warning.
    async fn limit(&self, policy: &Policy, subject: &str) -> Result<(), ApiError> {
        let policies = std::slice::from_ref(policy);
        match self.limits.check(&Subject::new(subject), policies, 1).await {
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

    fn backend_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Cancelled on shutdown: ends every open SSE stream.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts the `ship-order` worker in this process. Stop it with
    /// [`WorkerHandle::shutdown`], which hands unfinished jobs back to the queue.
    pub fn start_worker(&self) -> WorkerHandle {
        let store = self.queue.store().clone();
        let on_done = self.clone();
        let on_dead = self.clone();
        let runner = self.clone();
        Worker::new(store, SHIP_QUEUE)
            .concurrency(16)
            .timeout(Duration::from_secs(30))
            .handle::<ShipOrder>(move |job: ShipOrder, ctx: JobContext| {
                let services = runner.clone();
                async move { services.ship(job, ctx).await }
            })
            .on_completed(move |finished| {
                let services = on_done.clone();
                async move {
                    if let Some(job) = finished.decode::<ShipOrder>() {
                        services
                            .announce(&job.order_id, OrderStatus::Shipped, finished.attempt)
                            .await;
                    }
                }
            })
            .on_failed(move |finished| {
                let services = on_dead.clone();
                async move {
                    if !finished.is_dead() {
                        return;
                    }
                    if let Some(job) = finished.decode::<ShipOrder>() {
                        services
                            .announce(&job.order_id, OrderStatus::Failed, finished.attempt)
                            .await;
                    }
                }
            })
            .start()
    }

    /// The job handler: fails the first `fail_times` attempts, then "ships".
    async fn ship(&self, job: ShipOrder, ctx: JobContext) -> Result<(), JobError> {
        let order = Order {
            order_id: job.order_id.clone(),
            status: OrderStatus::Pending,
            attempts: ctx.attempt(),
        };
        self.orders.put(&order).await.map_err(JobError::retry)?;
        if ctx.attempt() <= job.fail_times {
            return Err(JobError::retry(format!(
                "simulated failure {} of {}",
                ctx.attempt(),
                job.fail_times
            )));
        }
        tracing::info!(order = %job.order_id, item = %job.item, "order shipped");
        Ok(())
    }

    /// Records the final status and publishes it on `order:updates`.
    async fn announce(&self, order_id: &str, status: OrderStatus, attempts: u32) {
        let order = Order {
            order_id: order_id.to_owned(),
            status,
            attempts,
        };
        if let Err(error) = self.orders.put(&order).await {
            tracing::warn!(order = %order_id, %error, "could not record the order status");
        }
        let update = json!({ "orderId": order_id, "status": status });
        if let Err(error) = self.pubsub.publish(ORDER_UPDATES, &update).await {
            tracing::warn!(order = %order_id, %error, "could not publish the order update");
        }
    }
}

/// The app's router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so
/// rate limits see client addresses.
///
/// # Errors
///
/// When a rate limit from the configuration is invalid.
pub fn app(services: &Services) -> Result<Router, BuildError> {
    let config = &services.config;
    let client_ip = services.client_ip.clone();
    let limit = |name: &'static str, rate: Rate| -> Result<_, BuildError> {
        let quota = Quota::with_period(rate.count, rate.period)?;
        let layer = RateLimitLayer::new(services.limits.clone(), Policy::new(name, quota));
        Ok(layer.key(client_ip.clone()).legacy_headers(true).build()?)
    };
    let api_limit = limit("api", config.api_rate)?;
    let order_limit = limit("orders", config.order_rate)?;
    let stacked_limit = limit("stacked", config.api_rate)?;
    let login_limit = limit("login", config.login_rate)?;

    // The handler reads no query parameter: the default (`QueryKey::Ignore`) keeps
    // `?r=<random>` from making entries, and the handler never sees the query.
    let featured_cache = ResponseCacheLayer::new(services.cache.clone(), Duration::from_secs(300))
        .stale_while_revalidate(Duration::from_secs(60))
        // The featured list is the same for everyone, logged in or not.
        .credentials(Credentials::Shared)
        .route_name("/products/featured");
    let featured_cache = if config.cache_hosts.is_empty() {
        featured_cache
    } else {
        featured_cache.hosts(&config.cache_hosts)
    };

    let sse = SseEndpoint::new(services.pubsub.clone())
        .authorizer(services.channels.clone())
        // Each stream ends when the session it was opened with does, and counts against
        // its user's (or, anonymous, its IP's) connections.
        .on_open(StreamAccess {
            sessions: services.sessions.clone(),
            client_ip: client_ip.clone(),
        })
        .max_connections(MAX_STREAMS)
        .shutdown(services.shutdown.clone());

    // Routes that never read a session stay outside the session layer: each layer goes
    // where it is used, so a public route pays for no cookie parsing or session setup.
    let public = Router::new()
        .route("/", get(index))
        .route("/client.js", get(client_js))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/products/featured", get(featured).layer(featured_cache))
        .route("/api/hello", get(hello).layer(api_limit))
        .route("/orders", post(place_order).layer(order_limit))
        .route("/orders/{id}", get(get_order));
    let with_session = Router::new()
        .route("/login", post(login).layer(login_limit))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/me/sessions", get(my_sessions))
        .route("/me/sessions/{handle}", delete(revoke_session))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/logout-others", post(logout_others))
        .route(
            "/events/{channel}",
            sse.method_router()
                .layer(axum::middleware::map_response(error::json_errors))
                .post(publish),
        )
        .merge(probes::session_routes(services, stacked_limit));
    let with_session = with_session.layer(services.session_layer.clone());
    Ok(public
        .merge(with_session)
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(services.clone())
        // `/plain` goes through no layer at all, not even the body limit.
        .merge(probes::plain_router()))
}

/// `user:<name>:...` channels belong to that logged-in user; other channels are public to
/// read. (Publishing is checked in [`publish`] so it can answer 401 before 403.)
#[derive(Debug, Clone, Copy)]
struct ChannelOwner;

/// The network a client address is counted by: the address itself for IPv4, its /64 for
/// IPv6 (what one subscriber gets).
fn client_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map_or_else(|_| v6.to_string(), |net| net.trunc().to_string()),
    }
}

/// What the app knows about a stream's reader when it opens: its session's end (a stream on
/// a logged-in user's channels ends when that session is revoked, logged out or expires, on
/// any instance) and who it is, for the per-client connection limit.
struct StreamAccess {
    sessions: Arc<dyn UserSessions>,
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

#[async_trait::async_trait]
impl redtower_pubsub::ChannelAuthorizer for ChannelOwner {
    async fn authorize(
        &self,
        request: &http::request::Parts,
        channel: &Channel,
        _access: redtower_pubsub::Access,
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

async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

async fn client_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        redtower_pubsub::CLIENT_JS,
    )
}

async fn health(State(services): State<Services>) -> Response {
    match &services.redis {
        None => Json(json!({"status": "ok", "backend": "memory"})).into_response(),
        Some(redis) => {
            if redis.health().await.is_up() {
                Json(json!({"status": "ok", "backend": "redis"})).into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "degraded", "backend": "redis"})),
                )
                    .into_response()
            }
        }
    }
}

async fn stats(State(services): State<Services>) -> Json<Value> {
    Json(json!({ "featured_db_calls": services.featured_db_calls.load(Ordering::Relaxed) }))
}

/// The "database query" the cache protects.
async fn featured(State(services): State<Services>) -> Json<Value> {
    services.featured_db_calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(services.config.featured_delay).await;
    Json(json!([
        {"id": 1, "name": "Rust mug", "price_cents": 1200},
        {"id": 2, "name": "Ferris plush", "price_cents": 2400},
        {"id": 3, "name": "Tower of Redis poster", "price_cents": 900},
    ]))
}

async fn hello() -> Json<Value> {
    Json(json!({"hello": "world"}))
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    user: String,
}

fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b))
}

fn session_error(error: &redtower_session::tower_sessions::session::Error) -> ApiError {
    let status = redtower_session::status_for(error);
    if status.is_server_error() {
        tracing::warn!(%error, "session store failed");
    }
    ApiError::new(status, "session store unavailable, try again")
}

async fn login(
    State(services): State<Services>,
    session: Session,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    AppJson(body): AppJson<LoginBody>,
) -> Result<Json<Value>, ApiError> {
    if !valid_user(&body.user) {
        return Err(ApiError::bad_request(
            "user must be 1 to 64 characters of letters, digits, '_', '.', '-' or '@'",
        ));
    }
    // Per user name, from any IP (the per-IP limit is the route's layer).
    services
        .limit(&services.login_user_limit, &body.user)
        .await?;
    let ip: Option<IpAddr> = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    bind_user(
        &session,
        &body.user,
        SessionMeta::from_headers(&headers, ip),
    )
    .await
    .map_err(|e| session_error(&e))?;
    Ok(Json(json!({ "user": body.user })))
}

async fn me(auth: AuthSession) -> Result<Json<Value>, ApiError> {
    let visits: u64 = auth
        .session
        .get("visits")
        .await
        .map_err(|e| session_error(&e))?
        .unwrap_or(0)
        + 1;
    auth.session
        .insert("visits", visits)
        .await
        .map_err(|e| session_error(&e))?;
    Ok(Json(json!({ "user": auth.user, "visits": visits })))
}

async fn logout(session: Session) -> Result<StatusCode, ApiError> {
    session.flush().await.map_err(|e| session_error(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn my_sessions(
    State(services): State<Services>,
    auth: AuthSession,
) -> Result<Json<Value>, ApiError> {
    let list = services
        .sessions
        .list(&auth.user, auth.session.id())
        .await
        .map_err(|error| {
            tracing::warn!(%error, "listing sessions failed");
            ApiError::unavailable()
        })?;
    Ok(Json(
        serde_json::to_value(list).unwrap_or_else(|_| json!([])),
    ))
}

async fn revoke_session(
    State(services): State<Services>,
    auth: AuthSession,
    Path(handle): Path<String>,
) -> Result<StatusCode, ApiError> {
    match services.sessions.revoke(&auth.user, &handle).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("no such session")),
        Err(error) => {
            tracing::warn!(%error, "revoking a session failed");
            Err(ApiError::unavailable())
        }
    }
}

async fn logout_everywhere(
    State(services): State<Services>,
    auth: AuthSession,
) -> Result<StatusCode, ApiError> {
    services
        .sessions
        .revoke_all(&auth.user)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "revoking all sessions failed");
            ApiError::unavailable()
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /logout-others`: ends every other session of the user, on every instance, and keeps
/// this one (after a password change).
async fn logout_others(
    State(services): State<Services>,
    auth: AuthSession,
) -> Result<StatusCode, ApiError> {
    let id = auth.session.id().ok_or_else(ApiError::unauthorized)?;
    services
        .sessions
        .revoke_others(&auth.user, &id)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "revoking the other sessions failed");
            ApiError::unavailable()
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /events/{channel}`: publish the JSON body. Needs a login (401); `user:<name>:...`
/// channels only by that user (403).
async fn publish(
    State(services): State<Services>,
    session: Session,
    Path(channel): Path<String>,
    parts: http::request::Parts,
    AppJson(body): AppJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let channel = Channel::new(&channel).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let user = redtower_session::current_user(&session)
        .await
        .map_err(|e| session_error(&e))?
        .ok_or_else(ApiError::unauthorized)?;
    // The library's authorizer decides: the server's channels, then other users' channels.
    if services.channels.is_server_owned(&channel) {
        return Err(ApiError::forbidden(
            "only the server publishes on this channel",
        ));
    }
    if !services
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
    services.limit(&services.publish_limit, &user).await?;
    if let Some(ip) = services.client_ip.client_addr(&parts) {
        let network = format!("ip:{}", client_network(ip));
        services.limit(&services.publish_ip_limit, &network).await?;
    }
    let json = serde_json::to_string(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = services
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

#[derive(Debug, Deserialize)]
struct OrderBody {
    email: String,
    item: String,
    #[serde(default)]
    fail_times: u32,
}

async fn place_order(
    State(services): State<Services>,
    AppJson(body): AppJson<OrderBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !body.email.contains('@') || body.email.len() > 254 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "email is not an address",
        ));
    }
    if body.item.is_empty() || body.item.len() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "item must be 1 to 200 characters",
        ));
    }
    if body.fail_times > 10 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fail_times is at most 10",
        ));
    }
    let order_id = format!("ord-{:016x}", rand::random::<u64>());
    services.orders.create(&order_id).await.map_err(|error| {
        tracing::warn!(%error, "creating an order failed");
        ApiError::unavailable()
    })?;
    let job = ShipOrder {
        order_id: order_id.clone(),
        email: body.email,
        item: body.item,
        fail_times: body.fail_times,
    };
    let job_id = services
        .queue
        .add(job)
        // One job per order, however often this add is sent again.
        .idempotency_key(order_id.as_str())
        .delay(services.config.order_ship_delay)
        .attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)))
        .await
        .map_err(|error| {
            tracing::warn!(%error, "enqueueing an order failed");
            ApiError::unavailable()
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "order_id": order_id, "job_id": job_id.to_string() })),
    ))
}

async fn get_order(
    State(services): State<Services>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found("no such order"));
    }
    match services.orders.get(&id).await {
        Ok(Some(order)) => Ok(Json(order)),
        Ok(None) => Err(ApiError::not_found("no such order")),
        Err(error) => {
            tracing::warn!(%error, "reading an order failed");
            Err(ApiError::unavailable())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
