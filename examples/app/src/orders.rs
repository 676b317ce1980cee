//! Orders: what `POST /orders` creates and the `ship-order` job updates. Kept in Redis (a hash
//! per order, with a TTL) when the app runs over Redis, so every instance sees the same order.

use std::{collections::HashMap, time::Duration};

use fred::interfaces::{HashesInterface, KeysInterface, TransactionInterface};
use redtower_client::{Namespace, Redis, fred};
use serde::{Deserialize, Serialize};

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
