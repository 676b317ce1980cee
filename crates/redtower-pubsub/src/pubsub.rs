//! [`PubSub`]: the handle an app publishes and subscribes through.

use std::sync::Arc;

use tracing::Instrument;

use crate::{
    Channel, EventId, PubSubStore, PublishToken, Replay, ReplayLimit, Result, Subscription,
};

/// The handle an app publishes and subscribes through: a cheap-`Clone` wrapper over a
/// [`PubSubStore`].
///
/// ```
/// use redtower_pubsub::{PubSub, Received};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redtower_pubsub::Error> {
/// let pubsub = PubSub::memory();
/// let mut sub = pubsub.subscribe("news").await?;
/// let id = pubsub.publish("news", &serde_json::json!({"title": "hello"})).await?;
/// match sub.recv().await {
///     Received::Event(event) => {
///         assert_eq!(event.id(), &id);
///         assert_eq!(event.data(), r#"{"title":"hello"}"#);
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PubSub {
    store: Arc<dyn PubSubStore>,
}

impl PubSub {
    /// A handle over `store`: a backend, or an `Arc<dyn PubSubStore>` when the backend is
    /// chosen at run time.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use redtower_client::Redis;
    /// use redtower_pubsub::{MemoryStore, PubSub, PubSubStore, RedisStore};
    ///
    /// fn pubsub(redis: Option<Redis>) -> PubSub {
    ///     let store: Arc<dyn PubSubStore> = match redis {
    ///         Some(redis) => Arc::new(RedisStore::new(redis)),
    ///         None => Arc::new(MemoryStore::new()),
    ///     };
    ///     PubSub::new(store)
    /// }
    /// # let _ = pubsub(None);
    /// ```
    pub fn new(store: impl PubSubStore) -> Self {
        Self {
            store: Arc::new(store),
        }
    }

    /// A handle over a [`MemoryStore`](crate::MemoryStore) with default settings.
    #[cfg(feature = "memory")]
    pub fn memory() -> Self {
        Self::new(crate::MemoryStore::new())
    }

    /// The store.
    pub fn store(&self) -> &dyn PubSubStore {
        &*self.store
    }

    /// Serializes `value` to JSON and publishes it on `channel`, returning the event id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidChannel`](crate::Error::InvalidChannel),
    /// [`Error::Serialize`](crate::Error::Serialize), or the store's error (on Redis, an
    /// outage: nothing was published, or a timeout: it may have been; to retry without risking
    /// a second event, publish with a token of your own through
    /// [`publish_json_with`](Self::publish_json_with)).
    pub async fn publish<T>(&self, channel: impl AsRef<str>, value: &T) -> Result<EventId>
    where
        T: serde::Serialize + ?Sized,
    {
        let channel = Channel::new(channel)?;
        let data = serde_json::to_string(value)?;
        self.publish_json(&channel, data).await
    }

    /// Publishes text that already is JSON (it is not checked).
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn publish_json(
        &self,
        channel: &Channel,
        json: impl Into<Arc<str>>,
    ) -> Result<EventId> {
        self.publish_json_with(channel, json, &PublishToken::random())
            .await
    }

    /// Publishes text that already is JSON with the idempotency `token`: calling it again with
    /// the same token (a retry after a timeout or an outage error) publishes nothing more and
    /// returns the first event's id, within the store's dedup window.
    ///
    /// ```
    /// use redtower_pubsub::{Channel, PubSub, PublishToken};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pubsub = PubSub::memory();
    /// let channel = Channel::new("orders")?;
    /// let token = PublishToken::random();
    /// let first = pubsub.publish_json_with(&channel, r#"{"n":1}"#, &token).await?;
    /// let again = pubsub.publish_json_with(&channel, r#"{"n":1}"#, &token).await?;
    /// assert_eq!(first, again);
    /// assert_eq!(pubsub.latest("orders").await?, Some(first));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn publish_json_with(
        &self,
        channel: &Channel,
        json: impl Into<Arc<str>>,
        token: &PublishToken,
    ) -> Result<EventId> {
        let span = tracing::info_span!(
            target: "redtower::pubsub",
            "redtower.pubsub.publish",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        // The publish span's context, stored with the event: delivery spans are its children.
        #[cfg(feature = "opentelemetry")]
        let trace = span.in_scope(redtower_client::TraceContext::current);
        #[cfg(not(feature = "opentelemetry"))]
        let trace = None;
        let started = std::time::Instant::now();
        let result = self
            .store
            .publish_traced(channel, json.into(), token, trace.as_ref())
            .instrument(span.clone())
            .await;
        metrics::histogram!("redtower_pubsub_publish_seconds").record(started.elapsed());
        span.record(
            "outcome",
            match &result {
                Ok(_) => "published",
                Err(e) if e.is_limit() => "refused",
                Err(_) => "error",
            },
        );
        if matches!(&result, Err(e) if !e.is_limit()) {
            span.record("otel.status_code", "error");
        }
        match &result {
            Ok(id) => {
                metrics::counter!("redtower_pubsub_published_total").increment(1);
                tracing::trace!(target: "redtower::pubsub", channel = %channel, id = %id, "published");
            }
            Err(error) if error.is_limit() => {
                tracing::debug!(target: "redtower::pubsub", channel = %channel, error = %error, "publish refused");
            }
            Err(error) => {
                tracing::warn!(target: "redtower::pubsub", channel = %channel, error = %error, "publish failed");
            }
        }
        result
    }

    /// Subscribes to `channel` (see [`PubSubStore::subscribe`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidChannel`](crate::Error::InvalidChannel) or the store's error.
    pub async fn subscribe(&self, channel: impl AsRef<str>) -> Result<Subscription> {
        let channel = Channel::new(channel)?;
        self.store.subscribe(&channel).await
    }

    /// The events after `after`, within `limit` (a number of events or a [`ReplayLimit`];
    /// see [`PubSubStore::replay`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidChannel`](crate::Error::InvalidChannel) or the store's error.
    pub async fn replay(
        &self,
        channel: impl AsRef<str>,
        after: &EventId,
        limit: impl Into<ReplayLimit>,
    ) -> Result<Replay> {
        let channel = Channel::new(channel)?;
        self.store.replay(&channel, after, limit.into()).await
    }

    /// The newest event id of `channel`: hand it to a page you render, so its `EventSource`
    /// resumes right after the state the page shows (`?last_event_id=`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidChannel`](crate::Error::InvalidChannel) or the store's error.
    pub async fn latest(&self, channel: impl AsRef<str>) -> Result<Option<EventId>> {
        let channel = Channel::new(channel)?;
        self.store.latest(&channel).await
    }
}
