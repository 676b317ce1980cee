//! Orders, shipped by a background job: `POST /orders` records an order and enqueues a
//! `ship-order` job (with delay, attempts and backoff), a worker runs it and publishes the
//! outcome on `order:updates`, `GET /orders/{id}` shows where the order is.
//!
//! Orders are kept in Redis (a hash per order, with a TTL) when the app runs over Redis, so
//! every instance sees the same order.
//!
//! The job reports its steps ("packed", "label printed", "shipped") as progress and returns a
//! tracking number as its result; the worker publishes each job's events on a pub/sub channel
//! of its own (`job:orders:<job id>`, with history), which `GET /orders/{id}/events` streams
//! over SSE, resumable from `Last-Event-ID`, to the session that placed the order only.
//!
//! A job scheduler on the same queue adds a `sweep-abandoned-orders` job every minute (exactly
//! once per minute however many instances run a worker); the job publishes `{"sweep": ...}` on
//! `order:updates`, which the page shows.
//!
//! One quota for HTTP and workers: the shipping carrier allows `CARRIER_RATE_LIMIT` calls
//! (default 50 a second) from the whole shop. `GET /carrier/quote` (a call to the carrier) and
//! every `ship-order` job (which books the carrier) spend the same policy, through
//! [`SharedQuota`]: when the budget is spent, requests get 429 and jobs wait for the retry time
//! without using an attempt. `ship-order` jobs are grouped by customer (their email), so one
//! customer's burst of orders does not hold up everyone else's.
//!
//! Environment: `ORDER_RATE_LIMIT` (`POST /orders` per client IP), `CARRIER_RATE_LIMIT`,
//! `ORDER_SHIP_DELAY_MS`, `ORDER_STEP_DELAY_MS`, `WORKER` (run the worker in this process).

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use fred::interfaces::{HashesInterface, KeysInterface, TransactionInterface};
use redtower::{job_events::PubSubJobEvents, quota::SharedQuota};
use redtower_client::{Namespace, Redis, fred};
use redtower_jobs::{
    Backoff, Job, JobContext, JobError, JobStart, Queue, Schedule, StartDecision, StartLimiter,
    Worker, WorkerHandle,
};
use redtower_pubsub::{PubSub, SseEndpoint, StreamOptions};
use redtower_ratelimit::Policy;
use redtower_session::tower_sessions::Session;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{
    BuildError, Config,
    error::{ApiError, AppJson},
    ratelimit::{RateLimits, client_network, policy},
};

/// The channel order updates are published on.
pub const ORDER_UPDATES: &str = "order:updates";
/// The queue of `ship-order` jobs.
pub const SHIP_QUEUE: &str = "orders";

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

/// The `sweep-abandoned-orders` job, added by the scheduler [`SWEEP_SCHEDULER`] every minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepAbandonedOrders;

impl Job for SweepAbandonedOrders {
    const NAME: &'static str = "sweep-abandoned-orders";
}

/// The id of the scheduler that adds [`SweepAbandonedOrders`] every minute.
pub const SWEEP_SCHEDULER: &str = "abandoned-orders";

/// The order desk: the `ship-order` queue, the orders, and where their updates are published.
#[derive(Clone)]
pub(crate) struct Shipping(Arc<ShippingInner>);

struct ShippingInner {
    queue: Queue<ShipOrder>,
    orders: Orders,
    pubsub: PubSub,
    /// `ORDER_SHIP_DELAY_MS`: how long a `ship-order` job waits before it runs.
    ship_delay: Duration,
    /// `ORDER_STEP_DELAY_MS`: the pause between the job's progress steps.
    step_delay: Duration,
    /// Publishes each job's events on its own channel (`job:orders:<job id>`).
    job_events: PubSubJobEvents,
    /// Streams a job's channel (`GET /orders/{id}/events`): `/{channel}` inside, reached only
    /// through [`order_events`], which checks the session first.
    job_stream: Router,
    /// The carrier's calls (`CARRIER_RATE_LIMIT`), shared by `GET /carrier/quote` and the
    /// `ship-order` jobs.
    carrier: Policy,
    /// The same policy as a job-start quota.
    carrier_quota: SharedQuota,
}

/// Spends the carrier's budget for `ship-order` jobs only (the sweep does not call it).
#[derive(Debug)]
struct CarrierQuota(SharedQuota);

#[redtower_jobs::async_trait::async_trait]
impl StartLimiter for CarrierQuota {
    async fn check(&self, job: JobStart<'_>) -> StartDecision {
        if job.name == ShipOrder::NAME {
            self.0.check(job).await
        } else {
            StartDecision::Start
        }
    }
}

impl Shipping {
    /// The queue and orders in process without Redis, else in Redis (shared by every
    /// instance); updates are published on `pubsub`.
    pub(crate) fn new(
        config: &Config,
        redis: Option<&Redis>,
        pubsub: PubSub,
        limits: &RateLimits,
        shutdown: redtower_pubsub::CancellationToken,
    ) -> Result<Self, BuildError> {
        let carrier = policy("carrier", config.carrier_rate)?;
        let client_ip = limits.client_ip().clone();
        let (queue, orders) = match redis {
            None => (
                Queue::new(redtower_jobs::MemoryStore::new(), SHIP_QUEUE),
                Orders::memory(),
            ),
            Some(redis) => (
                Queue::new(redtower_jobs::RedisStore::new(redis.clone()), SHIP_QUEUE),
                Orders::redis(redis.clone()),
            ),
        };
        // Streams are counted per client network, as on `/events/{channel}`.
        let sse = SseEndpoint::new(pubsub.clone())
            .max_connections(crate::events::MAX_STREAMS)
            .shutdown(shutdown)
            .on_open(
                move |parts: &http::request::Parts, _: &[redtower_pubsub::Channel]| match client_ip
                    .client_addr(parts)
                {
                    Some(ip) => StreamOptions::new().client_key(client_network(ip)),
                    None => StreamOptions::new(),
                },
            );
        let job_stream = Router::new().route("/{channel}", sse.method_router());
        Ok(Self(Arc::new(ShippingInner {
            queue,
            orders,
            job_events: PubSubJobEvents::new(pubsub.clone()),
            pubsub,
            ship_delay: config.order_ship_delay,
            step_delay: config.order_step_delay,
            job_stream,
            carrier,
            carrier_quota: SharedQuota::new(limits.store(), carrier),
        })))
    }

    /// `GET /orders/{id}`, which reads no session.
    pub(crate) fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/orders/{id}", get(get_order))
            .with_state(self.clone())
    }

    /// `POST /orders` (limited per client IP at `ORDER_RATE_LIMIT`), which records the order
    /// in the session that placed it, `GET /orders/{id}/events`, its job's events for that
    /// session only, and `GET /carrier/quote` (the carrier's budget, shared with the worker);
    /// to be served under the session layer.
    pub(crate) fn session_routes<S>(
        &self,
        config: &Config,
        limits: &RateLimits,
    ) -> Result<Router<S>, BuildError>
    where
        S: Clone + Send + Sync + 'static,
    {
        let order_limit = limits.per_client("orders", config.order_rate)?;
        let carrier_limit = limits.global(self.0.carrier)?;
        Ok(Router::new()
            .route("/orders", post(place_order).layer(order_limit))
            .route("/orders/{id}/events", get(order_events))
            .route("/carrier/quote", get(carrier_quote).layer(carrier_limit))
            .with_state(self.clone()))
    }

    /// Starts the `ship-order` worker in this process. Stop it with
    /// [`WorkerHandle::shutdown`], which hands unfinished jobs back to the queue.
    pub(crate) fn start_worker(&self) -> WorkerHandle {
        let store = self.0.queue.store().clone();
        let on_done = self.clone();
        let on_dead = self.clone();
        let runner = self.clone();
        let sweeper = self.clone();
        // Upsert by id: every instance does it at start, the scheduler is stored once and
        // keeps its next tick; any worker fires it, each minute adds one job.
        let sweeps = Queue::<SweepAbandonedOrders>::new(store.clone(), SHIP_QUEUE);
        tokio::spawn(async move {
            let every = Schedule::every(Duration::from_secs(60));
            if let Err(error) = sweeps
                .schedule(SWEEP_SCHEDULER, every, SweepAbandonedOrders)
                .await
            {
                tracing::warn!(%error, "could not store the abandoned-orders scheduler");
            }
        });
        Worker::new(store, SHIP_QUEUE)
            // Progress, retries and the result of each job, on its own channel.
            .events(self.0.job_events.clone())
            .concurrency(16)
            .timeout(Duration::from_secs(30))
            // Each `ship-order` job books the carrier: it spends the budget `GET
            // /carrier/quote` spends, and waits (no attempt used) when it is gone.
            .start_limiter(CarrierQuota(self.0.carrier_quota.clone()))
            .handle::<ShipOrder>(move |job: ShipOrder, ctx: JobContext| {
                let shipping = runner.clone();
                async move { shipping.ship(job, ctx).await }
            })
            .handle::<SweepAbandonedOrders>(move |_: SweepAbandonedOrders, ctx: JobContext| {
                let shipping = sweeper.clone();
                async move { shipping.sweep(ctx).await }
            })
            .on_completed(move |finished| {
                let shipping = on_done.clone();
                async move {
                    if let Some(job) = finished.decode::<ShipOrder>() {
                        shipping
                            .announce(&job.order_id, OrderStatus::Shipped, finished.attempt)
                            .await;
                    }
                }
            })
            .on_failed(move |finished| {
                let shipping = on_dead.clone();
                async move {
                    if !finished.is_dead() {
                        return;
                    }
                    if let Some(job) = finished.decode::<ShipOrder>() {
                        shipping
                            .announce(&job.order_id, OrderStatus::Failed, finished.attempt)
                            .await;
                    }
                }
            })
            .start()
    }

    /// The job handler: fails the first `fail_times` attempts, then "ships" in three steps,
    /// each reported as progress, and returns the tracking number (the job's result).
    async fn ship(&self, job: ShipOrder, ctx: JobContext) -> Result<Value, JobError> {
        let order = Order {
            order_id: job.order_id.clone(),
            status: OrderStatus::Pending,
            attempts: ctx.attempt(),
        };
        self.0.orders.put(&order).await.map_err(JobError::retry)?;
        if ctx.attempt() <= job.fail_times {
            return Err(JobError::retry(format!(
                "simulated failure {} of {}",
                ctx.attempt(),
                job.fail_times
            )));
        }
        for (i, step) in ORDER_STEPS.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(self.0.step_delay).await;
            }
            // Stored with the job and published on its channel; `false`: this attempt lost
            // the job (it runs again elsewhere), so stop.
            if !ctx.progress(json!({ "step": step })).await? {
                return Err(JobError::retry("lease lost"));
            }
        }
        tracing::info!(order = %job.order_id, item = %job.item, "order shipped");
        Ok(json!({ "tracking": format!("TRK-{}", ctx.id()) }))
    }

    /// The scheduled sweep: where a real shop would cancel orders left unpaid, this one
    /// announces that it ran.
    async fn sweep(&self, ctx: JobContext) -> Result<(), JobError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let update = json!({ "sweep": { "at": at, "job": ctx.id().as_str() } });
        self.0
            .pubsub
            .publish(ORDER_UPDATES, &update)
            .await
            .map_err(JobError::retry)?;
        Ok(())
    }

    /// Records the final status and publishes it on `order:updates`.
    async fn announce(&self, order_id: &str, status: OrderStatus, attempts: u32) {
        let order = Order {
            order_id: order_id.to_owned(),
            status,
            attempts,
        };
        if let Err(error) = self.0.orders.put(&order).await {
            tracing::warn!(order = %order_id, %error, "could not record the order status");
        }
        let update = json!({ "orderId": order_id, "status": status });
        if let Err(error) = self.0.pubsub.publish(ORDER_UPDATES, &update).await {
            tracing::warn!(order = %order_id, %error, "could not publish the order update");
        }
    }
}

/// The progress steps of a `ship-order` job, in order.
pub const ORDER_STEPS: [&str; 3] = ["packed", "label printed", "shipped"];

/// The session key of the orders a session placed (order id → job id).
const PLACED: &str = "placed_orders";
/// The most orders a session remembers (the oldest are forgotten: their events are then
/// refused to it as well).
pub const MAX_ORDERS_PER_SESSION: usize = 20;

/// The orders a session placed, oldest first: (order id, job id).
type Placed = Vec<(String, String)>;

#[derive(Debug, Deserialize)]
struct OrderBody {
    email: String,
    item: String,
    #[serde(default)]
    fail_times: u32,
}

async fn place_order(
    State(shipping): State<Shipping>,
    session: Session,
    AppJson(body): AppJson<OrderBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !body.email.contains('@') || body.email.len() > 254 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "email is not an address",
        ));
    }
    if body.email.chars().any(char::is_control) {
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
    shipping.0.orders.create(&order_id).await.map_err(|error| {
        tracing::warn!(%error, "creating an order failed");
        ApiError::unavailable()
    })?;
    // Orders of one customer take turns with everyone else's (a fair group per customer).
    let customer = body.email.clone();
    let job = ShipOrder {
        order_id: order_id.clone(),
        email: body.email,
        item: body.item,
        fail_times: body.fail_times,
    };
    let job_id = shipping
        .0
        .queue
        .add(job)
        // One job per order, however often this add is sent again.
        .idempotency_key(order_id.as_str())
        .group(customer)
        .delay(shipping.0.ship_delay)
        .attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)))
        .await
        .map_err(|error| {
            tracing::warn!(%error, "enqueueing an order failed");
            ApiError::unavailable()
        })?;
    // This session, and only it, may follow the order's events.
    let mut placed: Placed = session
        .get(PLACED)
        .await
        .map_err(|e| crate::sessions::session_error(&e))?
        .unwrap_or_default();
    placed.push((order_id.clone(), job_id.to_string()));
    let excess = placed.len().saturating_sub(MAX_ORDERS_PER_SESSION);
    placed.drain(..excess);
    session
        .insert(PLACED, placed)
        .await
        .map_err(|e| crate::sessions::session_error(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "order_id": order_id, "job_id": job_id.to_string() })),
    ))
}

/// `GET /carrier/quote`: what shipping costs, from the carrier (a call that spends the
/// carrier's budget, shared with the `ship-order` jobs).
async fn carrier_quote() -> Json<Value> {
    Json(json!({ "carrier": "demo-carrier", "price_cents": 499, "days": 2 }))
}

async fn get_order(
    State(shipping): State<Shipping>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found("no such order"));
    }
    match shipping.0.orders.get(&id).await {
        Ok(Some(order)) => Ok(Json(order)),
        Ok(None) => Err(ApiError::not_found("no such order")),
        Err(error) => {
            tracing::warn!(%error, "reading an order failed");
            Err(ApiError::unavailable())
        }
    }
}

/// `GET /orders/{id}/events`: the SSE stream of the order's job events (progress steps,
/// retries, the result), replayed from `Last-Event-ID` (or `?last_event_id=`) without gaps.
/// Only the session that placed the order may read it: any other gets 404, as for an order
/// that does not exist.
async fn order_events(
    State(shipping): State<Shipping>,
    session: Session,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let placed: Placed = match session.get(PLACED).await {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return crate::sessions::session_error(&e).into_response(),
    };
    let Some((_, job_id)) = placed.iter().find(|(order, _)| *order == id) else {
        return ApiError::not_found("no such order").into_response();
    };
    let channel = match shipping
        .0
        .job_events
        .channel(SHIP_QUEUE, &redtower_jobs::JobId::new(job_id.as_str()))
    {
        Ok(c) => c,
        Err(_) => return ApiError::not_found("no such order").into_response(),
    };
    // Served by the inner router's `/{channel}` route: same query (`last_event_id`), same
    // headers (`Last-Event-ID`) and extensions (the peer address, for the stream limits).
    let (mut parts, body) = request.into_parts();
    let mut query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    // A first open (no `Last-Event-ID`, no `last_event_id`) starts with the job's history:
    // a page that opens its stream after the job began still sees every step.
    let resumes = parts.headers.contains_key("last-event-id") || query.contains("last_event_id=");
    if !resumes {
        match shipping.0.pubsub.latest(channel.as_str()).await {
            Ok(Some(latest)) => {
                if let Ok(start) = redtower_pubsub::EventId::new(latest.epoch(), 0) {
                    let sep = if query.is_empty() { '?' } else { '&' };
                    query = format!("{query}{sep}last_event_id={start}");
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "reading an order's event history failed");
                return ApiError::unavailable().into_response();
            }
        }
    }
    parts.uri = match format!("/{}{query}", channel.as_str()).parse() {
        Ok(uri) => uri,
        Err(_) => return ApiError::not_found("no such order").into_response(),
    };
    let request = Request::from_parts(parts, body);
    match shipping.0.job_stream.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// How long an order is kept.
pub const ORDER_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most orders the in-process store keeps (the oldest and least used go first).
pub const MAX_MEMORY_ORDERS: u64 = 100_000;

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Waiting for the worker.
    Pending,
    /// Shipped.
    Shipped,
    /// Every attempt failed.
    Failed,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Shipped => "shipped",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "shipped" => Some(Self::Shipped),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The id.
    pub order_id: String,
    /// Its status.
    pub status: OrderStatus,
    /// Shipping attempts made so far.
    pub attempts: u32,
}

/// The order store: in-process, or Redis.
#[derive(Debug, Clone)]
pub enum Orders {
    /// In-process: at most [`MAX_MEMORY_ORDERS`], each kept [`ORDER_TTL`] as in Redis.
    Memory(moka::sync::Cache<String, Order>),
    /// A hash per order under `<prefix>:orders:{<id>}`.
    Redis(Redis, Namespace),
}

impl Orders {
    /// In-process orders.
    pub fn memory() -> Self {
        Self::Memory(
            moka::sync::Cache::builder()
                .max_capacity(MAX_MEMORY_ORDERS)
                .time_to_live(ORDER_TTL)
                .build(),
        )
    }

    /// Orders in Redis.
    pub fn redis(redis: Redis) -> Self {
        let ns = redis.keyspace().namespace("orders");
        Self::Redis(redis, ns)
    }

    /// Records a new pending order.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn create(&self, order_id: &str) -> Result<(), redtower_client::Error> {
        self.put(&Order {
            order_id: order_id.to_owned(),
            status: OrderStatus::Pending,
            attempts: 0,
        })
        .await
    }

    /// Stores `order` as it is now.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn put(&self, order: &Order) -> Result<(), redtower_client::Error> {
        match self {
            Self::Memory(orders) => {
                orders.insert(order.order_id.clone(), order.clone());
                Ok(())
            }
            Self::Redis(redis, ns) => {
                let key = ns.key(order.order_id.as_str());
                let tx = redis.client().multi();
                let _: () = tx
                    .hset(
                        key.as_str(),
                        [
                            ("status", order.status.as_str().to_owned()),
                            ("attempts", order.attempts.to_string()),
                        ],
                    )
                    .await?;
                let ttl = i64::try_from(ORDER_TTL.as_secs()).unwrap_or(i64::MAX);
                let _: () = tx.expire(key.as_str(), ttl, None).await?;
                let _: () = tx.exec(true).await?;
                Ok(())
            }
        }
    }

    /// The order, if it exists.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, redtower_client::Error> {
        match self {
            Self::Memory(orders) => Ok(orders.get(order_id)),
            Self::Redis(redis, ns) => {
                let key = ns.key(order_id);
                let fields: HashMap<String, String> = redis.client().hgetall(key.as_str()).await?;
                let status = fields.get("status").and_then(|s| OrderStatus::parse(s));
                Ok(status.map(|status| Order {
                    order_id: order_id.to_owned(),
                    status,
                    attempts: fields
                        .get("attempts")
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                }))
            }
        }
    }
}
