//! Orders, prepared and shipped by a flow of background jobs: `POST /orders` records an
//! order and adds a [`Flow`]: a `ship-order` job (the parent) that runs once its two children
//! on the `order-prep` queue are done, `reserve-stock` (child key `stock`) and
//! `charge-payment` (child key `payment`). Workers run them and publish the outcome on
//! `order:updates`; `GET /orders/{id}` shows where the order is.
//!
//! Orders are kept in Redis (a hash per order, with a TTL) when the app runs over Redis, so
//! every instance sees the same order.
//!
//! **Preparation.** Each child hands its parent a small result
//! ([`JobContext::set_flow_result`]): the stock reservation (`RES-...`) and the payment
//! (`PAY-...`). `ship-order` reads them ([`JobContext::child_result`]), records them with the
//! order and returns them in its result next to the tracking number. Both children are added
//! with [`ChildFailure::Continue`]: a failed child (the card declined, stock not reserved after
//! its attempts) does not fail the parent behind the shop's back; `ship-order` runs once both
//! are final, sees the failure, undoes what the other child did (releases the reservation,
//! refunds the payment) and fails for good without shipping, so the order becomes `failed`
//! through the same path as every other failure: the `failed` event on its job's stream, the
//! worker's failure hook, the order's status and error, `order:updates`. (With
//! [`ChildFailure::FailParent`] the parent would be dead without running, decided by the
//! `order-prep` worker's relay: no attempt of `ship-order` would report it, and nothing would
//! undo the other child.)
//!
//! **Shipping.** `ship-order` reports its steps ("packed", "label printed", "shipped") as
//! progress and returns `{"tracking", "reservation", "payment"}` as its result; the worker
//! publishes each `ship-order` job's events on a pub/sub channel of its own
//! (`job:orders:<job id>`, with history), which `GET /orders/{id}/events` streams over SSE,
//! resumable from `Last-Event-ID`, to the session that placed the order only. It has 3
//! attempts with exponential backoff (`fail_times` in the order makes its first attempts fail,
//! to show retries); so has each child.
//!
//! **Placing twice.** An `Idempotency-Key` header (16 to 64 characters, unguessable: a UUID)
//! names the placement: the order id is derived from it and the customer's email, so a re-sent
//! `POST /orders` finds the same order and adds nothing; the session that re-sends it may
//! follow the order's events too (the key is the client's proof of placing it). The flow is added with the order id as its [`Flow::id`] (adding it again within
//! the queue's idempotency window, 5 minutes, returns the first flow's ids, also when the
//! first request stopped half way), and the order records its job once added, so a re-send
//! any time later while the order is kept (24 h) is answered from the order. Without the
//! header every `POST` is a new order.
//!
//! A job scheduler on the `orders` queue adds a `sweep-abandoned-orders` job every minute
//! (exactly once per minute however many instances run a worker); the job publishes
//! `{"sweep": ...}` on `order:updates`, which the page shows.
//!
//! One quota for HTTP and workers: the shipping carrier allows `CARRIER_RATE_LIMIT` calls
//! (default 50 a second) from the whole shop. `GET /carrier/quote` (a call to the carrier) and
//! every `ship-order` job (which books the carrier) spend the same policy, through
//! [`SharedQuota`]: when the budget is spent, requests get 429 and jobs wait for the retry time
//! without using an attempt. The quota is checked as the job starts, before it reads its
//! children, so an order whose preparation failed spends one unit too. `ship-order` jobs are
//! grouped by customer (their email), so one customer's burst of orders does not hold up
//! everyone else's.
//!
//! Environment: `ORDER_RATE_LIMIT` (`POST /orders` per client IP), `CARRIER_RATE_LIMIT`,
//! `ORDER_SHIP_DELAY_MS` (the delay before an order's preparation starts: the children's
//! delay, as a flow's parent starts when its children are done), `ORDER_STEP_DELAY_MS`,
//! `WORKER` (run the `orders` and `order-prep` workers in this process).

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use fred::interfaces::{HashesInterface, KeysInterface, TransactionInterface};
use redtower::{job_events::PubSubJobEvents, quota::SharedQuota};
use redtower_client::{Namespace, Redis, fred};
use redtower_jobs::{
    Backoff, ChildFailure, ChildOutcome, Flow, Job, JobContext, JobError, JobOptions, JobStart,
    Queue, Schedule, ShutdownReport, StartDecision, StartLimiter, Worker, WorkerHandle,
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
/// The queue of `ship-order` jobs (the flows' parents) and of the sweep.
pub const SHIP_QUEUE: &str = "orders";
/// The queue of the preparation jobs (`reserve-stock`, `charge-payment`: the flows' children).
pub const PREP_QUEUE: &str = "order-prep";
/// The child key of `reserve-stock` in an order's flow.
pub const STOCK: &str = "stock";
/// The child key of `charge-payment` in an order's flow.
pub const PAYMENT: &str = "payment";

/// The `ship-order` job: the parent of an order's flow.
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

/// The `reserve-stock` job (child [`STOCK`]): puts the item aside for the order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveStock {
    /// The order.
    pub order_id: String,
    /// What to reserve.
    pub item: String,
}

impl Job for ReserveStock {
    const NAME: &'static str = "reserve-stock";
}

/// The `charge-payment` job (child [`PAYMENT`]): charges the customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargePayment {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub email: String,
    /// Decline the charge (to show a failed preparation).
    pub decline: bool,
}

impl Job for ChargePayment {
    const NAME: &'static str = "charge-payment";
}

/// What `reserve-stock` hands its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    /// The reservation id (`RES-...`).
    pub reservation: String,
}

/// What `charge-payment` hands its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    /// The payment id (`PAY-...`).
    pub payment: String,
}

/// The `sweep-abandoned-orders` job, added by the scheduler [`SWEEP_SCHEDULER`] every minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepAbandonedOrders;

impl Job for SweepAbandonedOrders {
    const NAME: &'static str = "sweep-abandoned-orders";
}

/// The id of the scheduler that adds [`SweepAbandonedOrders`] every minute.
pub const SWEEP_SCHEDULER: &str = "abandoned-orders";

/// The attempts of every job of an order (each child and the parent).
const ATTEMPTS: u32 = 3;

/// The retry schedule of every job of an order.
fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(200))
}

/// An order's tracking number: stable across the attempts of its `ship-order` job.
fn tracking_number(job: &redtower_jobs::JobId) -> String {
    format!("TRK-{job}")
}

/// The order desk: the queues, the orders, and where their updates are published.
#[derive(Clone)]
pub(crate) struct Shipping(Arc<ShippingInner>);

struct ShippingInner {
    queue: Queue<ShipOrder>,
    /// `reserve-stock` and `charge-payment` jobs, both on [`PREP_QUEUE`].
    stock: Queue<ReserveStock>,
    payments: Queue<ChargePayment>,
    orders: Orders,
    pubsub: PubSub,
    /// `ORDER_SHIP_DELAY_MS`: how long an order waits before its preparation starts.
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

/// The order workers of this process: `ship-order` (and the sweep) on [`SHIP_QUEUE`], the
/// preparation jobs on [`PREP_QUEUE`].
#[derive(Debug)]
pub struct Workers {
    ship: WorkerHandle,
    prep: WorkerHandle,
}

impl Workers {
    /// Stops both workers, handing their unfinished jobs back to their queues; what they did,
    /// added up.
    ///
    /// # Errors
    ///
    /// When a hand-back failed (the jobs then return after their lease).
    pub async fn shutdown(self) -> Result<ShutdownReport, redtower_jobs::Error> {
        let (ship, prep) = tokio::join!(self.ship.shutdown(), self.prep.shutdown());
        let (ship, prep) = (ship?, prep?);
        let mut report = ShutdownReport::default();
        report.finished_in_grace = ship.finished_in_grace + prep.finished_in_grace;
        report.released = ship.released + prep.released;
        Ok(report)
    }
}

impl Shipping {
    /// The queues and orders in process without Redis, else in Redis (shared by every
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
        let (store, orders): (Arc<dyn redtower_jobs::QueueStore>, _) = match redis {
            None => (
                Arc::new(redtower_jobs::MemoryStore::new()),
                Orders::memory(),
            ),
            Some(redis) => (
                Arc::new(redtower_jobs::RedisStore::new(redis.clone())),
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
            queue: Queue::new(store.clone(), SHIP_QUEUE),
            stock: Queue::new(store.clone(), PREP_QUEUE),
            payments: Queue::new(store, PREP_QUEUE),
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

    /// The job counts of one of the order queues ([`SHIP_QUEUE`], [`PREP_QUEUE`]).
    pub(crate) async fn counts(
        &self,
        queue: &str,
    ) -> Result<redtower_jobs::Counts, redtower_jobs::Error> {
        if queue == SHIP_QUEUE {
            self.0.queue.counts().await
        } else {
            Queue::<ReserveStock>::new(self.0.queue.store().clone(), queue)
                .counts()
                .await
        }
    }

    /// Starts the order workers in this process: `ship-order` (and the sweep) on `orders`,
    /// `reserve-stock` and `charge-payment` on `order-prep` (whose worker also relays the
    /// children's outcomes to their parents). Stop them with [`Workers::shutdown`], which
    /// hands unfinished jobs back to the queues.
    pub(crate) fn start_worker(&self) -> Workers {
        Workers {
            prep: self.start_prep_worker(),
            ship: self.start_ship_worker(),
        }
    }

    /// The `order-prep` worker.
    fn start_prep_worker(&self) -> WorkerHandle {
        let stock = self.clone();
        let payments = self.clone();
        Worker::new(self.0.queue.store().clone(), PREP_QUEUE)
            .concurrency(16)
            .timeout(Duration::from_secs(30))
            .handle::<ReserveStock>(move |job: ReserveStock, ctx: JobContext| {
                let shipping = stock.clone();
                async move { shipping.reserve_stock(job, ctx).await }
            })
            .handle::<ChargePayment>(move |job: ChargePayment, ctx: JobContext| {
                let shipping = payments.clone();
                async move { shipping.charge_payment(job, ctx).await }
            })
            .start()
    }

    /// The `orders` worker: `ship-order` and the sweep.
    fn start_ship_worker(&self) -> WorkerHandle {
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
                        let mut order = Order::new(&job.order_id, OrderStatus::Shipped);
                        order.attempts = finished.attempt;
                        order.tracking = Some(tracking_number(&finished.id));
                        shipping.announce(&order).await;
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
                        let mut order = Order::new(&job.order_id, OrderStatus::Failed);
                        order.attempts = finished.attempt;
                        order.error = finished.error().map(str::to_owned);
                        shipping.announce(&order).await;
                    }
                }
            })
            .start()
    }

    /// The `reserve-stock` handler: reserves the item and hands the reservation to the parent.
    async fn reserve_stock(&self, job: ReserveStock, ctx: JobContext) -> Result<Value, JobError> {
        let reserved = StockReserved {
            reservation: format!("RES-{}", ctx.id()),
        };
        ctx.set_flow_result(&reserved)?;
        tracing::info!(order = %job.order_id, item = %job.item, reservation = %reserved.reservation, "stock reserved");
        Ok(json!(reserved))
    }

    /// The `charge-payment` handler: charges the customer (or declines, for good: a declined
    /// card is not retried) and hands the payment to the parent.
    async fn charge_payment(&self, job: ChargePayment, ctx: JobContext) -> Result<Value, JobError> {
        if job.decline {
            return Err(JobError::fatal("card declined"));
        }
        let captured = PaymentCaptured {
            payment: format!("PAY-{}", ctx.id()),
        };
        ctx.set_flow_result(&captured)?;
        tracing::info!(order = %job.order_id, payment = %captured.payment, "payment captured");
        Ok(json!(captured))
    }

    /// The `ship-order` handler, run once both children are final: fails for good if either
    /// failed (after undoing the other), else fails the first `fail_times` attempts, then
    /// "ships" in three steps, each reported as progress, and returns the tracking number
    /// with the children's results (the job's result).
    async fn ship(&self, job: ShipOrder, ctx: JobContext) -> Result<Value, JobError> {
        let (stock, payment) = match preparation(&job, &ctx) {
            Ok(prepared) => prepared,
            Err(why) => return Err(JobError::fatal(why)),
        };
        let mut order = Order::new(&job.order_id, OrderStatus::Pending);
        order.attempts = ctx.attempt();
        order.reservation = Some(stock.reservation.clone());
        order.payment = Some(payment.payment.clone());
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
        Ok(json!({
            "tracking": tracking_number(ctx.id()),
            "reservation": stock.reservation,
            "payment": payment.payment,
        }))
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

    /// Records the final status (and its details) and publishes it on `order:updates`.
    async fn announce(&self, order: &Order) {
        let order_id = order.order_id.as_str();
        if let Err(error) = self.0.orders.put(order).await {
            tracing::warn!(order = %order_id, %error, "could not record the order status");
        }
        let update = json!({ "orderId": order_id, "status": order.status });
        if let Err(error) = self.0.pubsub.publish(ORDER_UPDATES, &update).await {
            tracing::warn!(order = %order_id, %error, "could not publish the order update");
        }
    }
}

/// What the children of a `ship-order` job prepared: the reservation and the payment, or,
/// when either child failed, why the order cannot ship (after undoing what the other did).
fn preparation(
    job: &ShipOrder,
    ctx: &JobContext,
) -> Result<(StockReserved, PaymentCaptured), String> {
    let stock = ctx.child_result::<StockReserved>(STOCK);
    let payment = ctx.child_result::<PaymentCaptured>(PAYMENT);
    if let (Some(stock), Some(payment)) = (stock.clone(), payment.clone()) {
        return Ok((stock, payment));
    }
    let mut why: Vec<String> = [STOCK, PAYMENT]
        .iter()
        .map(|key| {
            let outcome = ctx.children().iter().find(|c| c.key == *key);
            match outcome.map(|c| &c.outcome) {
                Some(ChildOutcome::Failed { error }) => format!("{key} {error}"),
                Some(ChildOutcome::Completed { .. }) => String::new(),
                _ => format!("{key} missing"),
            }
        })
        .filter(|w| !w.is_empty())
        .collect();
    if why.is_empty() {
        why.push("a child completed without its result".to_owned());
    }
    // Undo what went through: the order will not ship.
    if let Some(stock) = stock {
        tracing::info!(order = %job.order_id, reservation = %stock.reservation, "stock reservation released");
        why.push(format!("reservation {} released", stock.reservation));
    }
    if let Some(payment) = payment {
        tracing::info!(order = %job.order_id, payment = %payment.payment, "payment refunded");
        why.push(format!("payment {} refunded", payment.payment));
    }
    Err(why.join("; "))
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
    /// Decline the payment (the order then fails without shipping).
    #[serde(default)]
    decline_payment: bool,
}

/// The order id a placement names with its `Idempotency-Key` (16 to 64 of `A-Z a-z 0-9 _ -`,
/// such as a UUID), scoped by the customer: the same key and email give the same order.
/// `None` without the header. The key is what lets a re-send (also from a client whose
/// session cookie was lost with the first response) follow the order's events, so it must be
/// one nobody can guess: a short one is refused.
fn keyed_order_id(headers: &HeaderMap, email: &str) -> Result<Option<String>, ApiError> {
    use sha2::{Digest, Sha256};
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            (16..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 16 to 64 of A-Z a-z 0-9 _ -")
        })?;
    let digest = Sha256::new()
        .chain_update(b"order\0")
        .chain_update(email.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    Ok(Some(format!("ord-{:016x}", u64::from_be_bytes(id))))
}

async fn place_order(
    State(shipping): State<Shipping>,
    session: Session,
    headers: HeaderMap,
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
    let order_id = match keyed_order_id(&headers, &body.email)? {
        Some(id) => id,
        None => format!("ord-{:016x}", rand::random::<u64>()),
    };
    let unavailable = |error: &dyn std::fmt::Display, what: &str| {
        tracing::warn!(%error, "{what} failed");
        ApiError::unavailable()
    };
    // A new pending order, or the one this placement made before (same `Idempotency-Key`).
    let order = shipping
        .0
        .orders
        .create(&order_id)
        .await
        .map_err(|e| unavailable(&e, "creating an order"))?;
    let job_id = match order.job_id {
        // Placed before: its flow is there, add nothing.
        Some(job_id) => job_id,
        None => {
            let job_id = shipping
                .add_flow(&order_id, body)
                .await
                .map_err(|e| unavailable(&e, "adding an order's flow"))?;
            shipping
                .0
                .orders
                .set_job(&order_id, &job_id)
                .await
                .map_err(|e| unavailable(&e, "recording an order's job"))?;
            job_id
        }
    };
    // The sessions that placed the order, and only they, may follow its events.
    let mut placed: Placed = session
        .get(PLACED)
        .await
        .map_err(|e| crate::sessions::session_error(&e))?
        .unwrap_or_default();
    if !placed.iter().any(|(order, _)| *order == order_id) {
        placed.push((order_id.clone(), job_id.clone()));
        let excess = placed.len().saturating_sub(MAX_ORDERS_PER_SESSION);
        placed.drain(..excess);
        session
            .insert(PLACED, placed)
            .await
            .map_err(|e| crate::sessions::session_error(&e))?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "order_id": order_id, "job_id": job_id })),
    ))
}

impl Shipping {
    /// Adds the order's flow: `ship-order` (grouped by customer, 3 attempts with backoff)
    /// after `reserve-stock` and `charge-payment` (each delayed by `ORDER_SHIP_DELAY_MS`, 3
    /// attempts with backoff, failures passed on to the parent). Adding it again with the
    /// same order id within the queue's idempotency window adds nothing. Returns the parent's
    /// job id.
    async fn add_flow(
        &self,
        order_id: &str,
        body: OrderBody,
    ) -> Result<String, redtower_jobs::Error> {
        let inner = &self.0;
        // Orders of one customer take turns with everyone else's (a fair group per customer).
        let mut ship = JobOptions::new().attempts(ATTEMPTS).backoff(backoff());
        ship.group = Some(body.email.clone());
        let prep = JobOptions::new()
            .delay(inner.ship_delay)
            .attempts(ATTEMPTS)
            .backoff(backoff());
        let stock = ReserveStock {
            order_id: order_id.to_owned(),
            item: body.item.clone(),
        };
        let payment = ChargePayment {
            order_id: order_id.to_owned(),
            email: body.email.clone(),
            decline: body.decline_payment,
        };
        let parent = ShipOrder {
            order_id: order_id.to_owned(),
            email: body.email,
            item: body.item,
            fail_times: body.fail_times,
        };
        let ids = Flow::new_with(&inner.queue, parent, ship)
            // One flow per order, however often this add is sent again.
            .id(order_id)
            .child_with(
                STOCK,
                &inner.stock,
                stock,
                prep.clone(),
                ChildFailure::Continue,
            )
            .child_with(
                PAYMENT,
                &inner.payments,
                payment,
                prep,
                ChildFailure::Continue,
            )
            .add()
            .await?;
        Ok(ids.parent.to_string())
    }
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
    /// Its `ship-order` job (the flow's parent), once added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The stock reservation (`reserve-stock`'s result), once shipping started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// The payment (`charge-payment`'s result), once shipping started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<String>,
    /// The tracking number, once shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Order {
    /// Order `order_id` with `status`, no attempt and no details.
    pub fn new(order_id: &str, status: OrderStatus) -> Self {
        Self {
            order_id: order_id.to_owned(),
            status,
            attempts: 0,
            job_id: None,
            reservation: None,
            payment: None,
            tracking: None,
            error: None,
        }
    }

    /// The details (every field but the id, status and attempts) as hash fields, the set
    /// ones only.
    fn details(&self) -> Vec<(&'static str, String)> {
        [
            ("job_id", &self.job_id),
            ("reservation", &self.reservation),
            ("payment", &self.payment),
            ("tracking", &self.tracking),
            ("error", &self.error),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }

    /// `self` with `update`'s status and attempts, and each of its details that is set.
    fn merge(mut self, update: &Order) -> Self {
        self.status = update.status;
        self.attempts = update.attempts;
        for (mine, theirs) in [
            (&mut self.job_id, &update.job_id),
            (&mut self.reservation, &update.reservation),
            (&mut self.payment, &update.payment),
            (&mut self.tracking, &update.tracking),
            (&mut self.error, &update.error),
        ] {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        self
    }
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

    /// Records a new pending order, unless order `order_id` exists; returns it as stored.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn create(&self, order_id: &str) -> Result<Order, redtower_client::Error> {
        let new = Order::new(order_id, OrderStatus::Pending);
        match self {
            Self::Memory(orders) => Ok(orders
                .entry(order_id.to_owned())
                .or_insert(new)
                .into_value()),
            Self::Redis(redis, ns) => {
                let key = ns.key(order_id);
                let tx = redis.client().multi();
                let _: () = tx
                    .hsetnx(key.as_str(), "status", new.status.as_str())
                    .await?;
                let _: () = tx.hsetnx(key.as_str(), "attempts", 0).await?;
                let _: () = tx.expire(key.as_str(), ttl_secs(), None).await?;
                let _: () = tx.exec(true).await?;
                Ok(self.get(order_id).await?.unwrap_or(new))
            }
        }
    }

    /// Stores `order`'s status and attempts, and each of its details that is set (details
    /// stored before are kept).
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn put(&self, order: &Order) -> Result<(), redtower_client::Error> {
        match self {
            Self::Memory(orders) => {
                orders
                    .entry(order.order_id.clone())
                    .and_compute_with(|stored| {
                        let merged = match stored {
                            Some(stored) => stored.into_value().merge(order),
                            None => order.clone(),
                        };
                        moka::ops::compute::Op::Put(merged)
                    });
                Ok(())
            }
            Self::Redis(redis, ns) => {
                let key = ns.key(order.order_id.as_str());
                let mut fields = vec![
                    ("status", order.status.as_str().to_owned()),
                    ("attempts", order.attempts.to_string()),
                ];
                fields.extend(order.details());
                let tx = redis.client().multi();
                let _: () = tx.hset(key.as_str(), fields).await?;
                let _: () = tx.expire(key.as_str(), ttl_secs(), None).await?;
                let _: () = tx.exec(true).await?;
                Ok(())
            }
        }
    }

    /// Records the job of order `order_id` (its flow's parent), leaving the rest as it is.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn set_job(
        &self,
        order_id: &str,
        job_id: &str,
    ) -> Result<(), redtower_client::Error> {
        match self {
            Self::Memory(orders) => {
                orders
                    .entry(order_id.to_owned())
                    .and_compute_with(|stored| {
                        let mut order = stored.map_or_else(
                            || Order::new(order_id, OrderStatus::Pending),
                            moka::Entry::into_value,
                        );
                        order.job_id = Some(job_id.to_owned());
                        moka::ops::compute::Op::Put(order)
                    });
                Ok(())
            }
            Self::Redis(redis, ns) => {
                let key = ns.key(order_id);
                let tx = redis.client().multi();
                let _: () = tx.hset(key.as_str(), [("job_id", job_id)]).await?;
                let _: () = tx.hsetnx(key.as_str(), "status", "pending").await?;
                let _: () = tx.expire(key.as_str(), ttl_secs(), None).await?;
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
                let mut fields: HashMap<String, String> =
                    redis.client().hgetall(key.as_str()).await?;
                let status = fields.get("status").and_then(|s| OrderStatus::parse(s));
                Ok(status.map(|status| Order {
                    order_id: order_id.to_owned(),
                    status,
                    attempts: fields
                        .get("attempts")
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    job_id: fields.remove("job_id"),
                    reservation: fields.remove("reservation"),
                    payment: fields.remove("payment"),
                    tracking: fields.remove("tracking"),
                    error: fields.remove("error"),
                }))
            }
        }
    }
}

/// [`ORDER_TTL`] in seconds.
fn ttl_secs() -> i64 {
    i64::try_from(ORDER_TTL.as_secs()).unwrap_or(i64::MAX)
}
