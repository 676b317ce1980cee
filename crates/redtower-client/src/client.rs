//! [`Redis`]: the cheap-`Clone` handle every redtower crate talks to Redis through.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface},
    types::{
        Builder, Key as FredKey,
        config::Options,
        scan::{ScanResult, ScanType, Scanner},
    },
};
use futures::{Stream, StreamExt, TryStreamExt};

use crate::{Error, Health, HealthStatus, KeyPattern, Keyspace, RedisConfig, Result};

/// A handle to Redis: one auto-pipelined connection (one per primary on a Cluster), the
/// [`Keyspace`], and the registry of Lua [`Script`](crate::Script)s to reload after reconnects.
///
/// Build one in `main`, keep it in your state and clone it freely: clones share everything.
/// Connecting is lazy: [`Redis::new`] returns at once, and the connection (and every reconnect,
/// forever, with backoff and jitter) happens in the background. Until it is up, commands wait
/// for it up to the command timeout and then fail with a [timeout](crate::ErrorKind::Timeout).
///
/// ```no_run
/// use redtower_client::{Redis, RedisConfig};
///
/// # async fn run() -> Result<(), redtower_client::Error> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// assert!(redis.health().await.is_up());
/// let key = redis.keyspace().namespace("demo").key("user-1").push("visits");
/// let visits: u64 = redis.client().incr(key.as_str()).await?;
/// # let _ = visits;
/// # Ok(()) }
/// # use fred::interfaces::KeysInterface as _;
/// ```
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    builder: Builder,
    config: RedisConfig,
    keyspace: Keyspace,
    scripts: Arc<ScriptRegistry>,
    fail_fast: Options,
    /// `true` from the first successful connection on, whatever happens afterwards.
    connected_once: AtomicBool,
    /// A wait for the first connection ran out: Redis is unreachable, not merely starting.
    gave_up_waiting: AtomicBool,
    /// Connections made so far (one per server on a Cluster), reconnections included.
    connections: Arc<AtomicU64>,
    /// With Sentinel: one subscriber per sentinel, listening for `+switch-master`.
    sentinels: Vec<SubscriberClient>,
    /// With Sentinel: told when the primary changed, so dedicated connections move too.
    switched: tokio::sync::broadcast::Sender<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let client = self.client.clone();
        let sentinels = std::mem::take(&mut self.sentinels);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.quit().await;
                for sentinel in sentinels {
                    let _ = sentinel.quit().await;
                }
            });
        }
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.inner.config.redacted_url())
            .field("keyspace", &self.inner.keyspace)
            .field("state", &self.inner.client.state())
            .finish()
    }
}

/// Scripts seen by this handle, by SHA-1, reloaded on every reconnect.
#[derive(Default)]
pub(crate) struct ScriptRegistry {
    scripts: RwLock<HashMap<String, fred::types::scripts::Script>>,
}

impl ScriptRegistry {
    pub(crate) fn contains(&self, sha: &str) -> bool {
        self.scripts.read().is_ok_and(|s| s.contains_key(sha))
    }

    pub(crate) fn insert(&self, script: &fred::types::scripts::Script) {
        if let Ok(mut s) = self.scripts.write() {
            s.entry(script.sha1().to_string())
                .or_insert_with(|| script.clone());
        }
    }

    fn all(&self) -> Vec<fred::types::scripts::Script> {
        self.scripts
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Redis {
    /// Builds the client and starts connecting in the background. Returns at once, even when
    /// Redis is down: see [`health`](Self::health) and [`wait_ready`](Self::wait_ready).
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when a setting is out of range.
    pub fn new(config: RedisConfig) -> Result<Self> {
        let keyspace = config.validate()?;
        let builder = config.fred_builder()?;
        let client = builder.build()?;
        let scripts = Arc::new(ScriptRegistry::default());
        let up = Arc::new(AtomicBool::new(false));

        {
            let up = up.clone();
            let url = config.redacted_url();
            client.on_error(move |(error, server)| {
                let up = up.clone();
                let url = url.clone();
                async move {
                    if up.swap(false, Ordering::AcqRel) {
                        tracing::warn!(
                            target: "redtower::redis",
                            url = %url,
                            server = ?server.map(|s| s.to_string()),
                            error = %error,
                            "redis connection lost"
                        );
                    } else {
                        tracing::debug!(target: "redtower::redis", error = %error, "redis error");
                    }
                    Ok(())
                }
            });
        }
        let connections = Arc::new(AtomicU64::new(0));
        {
            let up = up.clone();
            let scripts = scripts.clone();
            let reloader = client.clone();
            let connections = connections.clone();
            client.on_reconnect(move |server| {
                let up = up.clone();
                let scripts = scripts.clone();
                let client = reloader.clone();
                connections.fetch_add(1, Ordering::AcqRel);
                async move {
                    if !up.swap(true, Ordering::AcqRel) {
                        tracing::info!(target: "redtower::redis", server = %server, "redis connected");
                    }
                    // SCRIPT LOAD is per node and lost on restart or failover: load again.
                    // fred tells this listener before it is connected to every node of a
                    // Cluster: wait for that first (bounded), so the load reaches them all.
                    let scripts = scripts.all();
                    if !scripts.is_empty() {
                        let connected = async {
                            while client.state() != fred::types::ClientState::Connected {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(5), connected).await;
                    }
                    for script in scripts {
                        if let Err(error) = script.load(&client).await {
                            tracing::warn!(
                                target: "redtower::redis",
                                error = %error,
                                "reloading a Lua script after reconnect failed; it will load on first use"
                            );
                        }
                    }
                    Ok(())
                }
            });
        }
        let _connection_task = client.connect();

        let fail_fast = Options {
            fail_fast: true,
            ..Options::default()
        };
        let sentinel = config.sentinel_builders()?;
        let sentinels = match &sentinel {
            None => Vec::new(),
            Some((_, builders)) => builders
                .iter()
                .map(Builder::build_subscriber_client)
                .collect::<std::result::Result<_, _>>()?,
        };
        let (switched, _) = tokio::sync::broadcast::channel(4);
        let redis = Self {
            inner: Arc::new(Inner {
                client,
                builder,
                config,
                keyspace,
                scripts,
                fail_fast,
                connected_once: AtomicBool::new(false),
                gave_up_waiting: AtomicBool::new(false),
                connections,
                sentinels,
                switched,
            }),
        };
        if let Some((service, _)) = sentinel {
            redis.follow_sentinels(service);
        }
        Ok(redis)
    }

    /// fred asks the sentinels for the primary only when it reconnects, and a planned
    /// failover (`SENTINEL FAILOVER`) leaves the old primary up and reachable for seconds,
    /// until it is turned into a replica: a client that stays connected to it writes where
    /// nobody reads, and those writes are lost. So each sentinel's `+switch-master`
    /// announcement for our service reconnects every connection of this handle at once,
    /// to the primary the sentinels now name.
    fn follow_sentinels(&self, service: String) {
        let weak = Arc::downgrade(&self.inner);
        for sentinel in &self.inner.sentinels {
            let _task = sentinel.connect();
            let _resubscriber = sentinel.manage_subscriptions();
            let weak = weak.clone();
            let service = service.clone();
            sentinel.on_message(move |message| {
                let weak = weak.clone();
                let service = service.clone();
                async move {
                    let text = message.value.as_string().unwrap_or_default();
                    let Some(inner) = weak.upgrade() else {
                        return Ok(());
                    };
                    if &*message.channel == "+switch-master"
                        && text.split_whitespace().next() == Some(service.as_str())
                    {
                        tracing::warn!(
                            target: "redtower::redis",
                            switch = %text,
                            "sentinel switched the primary: reconnecting"
                        );
                        let _ = inner.switched.send(());
                        if let Err(error) = inner.client.force_reconnection().await {
                            tracing::warn!(target: "redtower::redis", %error, "reconnecting after a switch failed");
                        }
                    }
                    Ok(())
                }
            });
            let subscriber = sentinel.clone();
            tokio::spawn(async move {
                if let Err(error) = subscriber.subscribe("+switch-master").await {
                    tracing::warn!(target: "redtower::redis", %error, "could not subscribe to a sentinel");
                }
            });
        }
    }

    /// Reconnects `client` (a dedicated connection of this handle) whenever the sentinels
    /// switch the primary; ends with the handle.
    fn follow_switches<C: ClientLike + Clone + Send + Sync + 'static>(&self, client: &C) {
        if self.inner.sentinels.is_empty() {
            return;
        }
        let mut switched = self.inner.switched.subscribe();
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                match switched.recv().await {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = client.force_reconnection().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Waits until the connection is up, or `timeout` passes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when Redis was not reachable in time.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let now = Instant::now();
        // A wait too long for the clock is a wait without end.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let health = self
                .health_within(left.min(self.inner.config.health_timeout_value()))
                .await;
            if health.is_up() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::from(fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    format!(
                        "redis not ready after {timeout:?}: {}",
                        health.error.unwrap_or_default()
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20).min(left)).await;
        }
    }

    /// Whether the first connection to Redis has been made. It stays `true` afterwards, also
    /// while a lost connection is being re-established: "never connected yet" (a fresh
    /// process, not an outage) and "connected, then lost" (an outage) are different states.
    ///
    /// ```
    /// use redtower_client::{Redis, RedisConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), redtower_client::Error> {
    /// // Nothing listens on port 1: this handle never connects.
    /// let redis = Redis::new(RedisConfig::from_url("redis://127.0.0.1:1")?)?;
    /// assert!(!redis.has_connected());
    /// # Ok(()) }
    /// ```
    pub fn has_connected(&self) -> bool {
        if self.inner.connected_once.load(Ordering::Acquire) {
            return true;
        }
        if self.inner.client.state() == fred::types::ClientState::Connected {
            self.inner.connected_once.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// How many connections this handle has made so far (one per server on a Cluster),
    /// reconnections included. A circuit breaker that opened during an outage can let a probe
    /// through as soon as this number moves, rather than waiting out its whole cool-down: the
    /// connection is back.
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Acquire)
    }

    /// Waits for the first connection, up to the configured
    /// [command timeout](RedisConfig::command_timeout); returns at once once the first
    /// connection has been made (also while a later connection is down: that is an outage, for
    /// the caller's failure policy and fail-fast options).
    ///
    /// Request paths that send with [fail-fast options](Self::fail_fast_options) call this
    /// first, so that the requests a fresh process receives while its first connection is
    /// still being made wait for it instead of failing as if Redis were down.
    ///
    /// Once one such wait has run out without a connection, Redis has been unreachable for a
    /// whole command timeout: later calls fail at once (an outage) until the first connection
    /// is made.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the first connection
    /// was not made within the command timeout.
    pub async fn first_connection(&self) -> Result<()> {
        if self.has_connected() {
            return Ok(());
        }
        self.first_connection_within(self.inner.config.command_timeout_value())
            .await
    }

    /// [`first_connection`](Self::first_connection) with a wait of at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the first connection
    /// was not made within `timeout`, or an earlier wait already ran out.
    pub async fn first_connection_within(&self, timeout: Duration) -> Result<()> {
        if self.has_connected() {
            return Ok(());
        }
        if self.inner.gave_up_waiting.load(Ordering::Acquire) {
            return Err(Error::not_connected(
                self.inner.config.command_timeout_value(),
            ));
        }
        let client = &self.inner.client;
        let wait = async {
            // fred tells reconnect listeners before its state turns `Connected` (which is what
            // its fail-fast check reads), so the state decides. `wait_for_connect` wakes on the
            // connection; the short poll covers a connection made between its state check and
            // its subscription.
            while client.state() != fred::types::ClientState::Connected {
                let _ =
                    tokio::time::timeout(Duration::from_millis(5), client.wait_for_connect()).await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) => {
                self.inner.connected_once.store(true, Ordering::Release);
                Ok(())
            }
            Err(_) => {
                if !self.has_connected() {
                    self.inner.gave_up_waiting.store(true, Ordering::Release);
                }
                Err(Error::not_connected(timeout))
            }
        }
    }

    /// The fred client, for commands. It is auto-pipelined: concurrent callers share one
    /// connection per server without waiting for each other. Never send blocking commands
    /// (`BLPOP`, `XREAD BLOCK`, ...) on it: use [`dedicated`](Self::dedicated).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The keyspace built from the configured prefix.
    pub fn keyspace(&self) -> &Keyspace {
        &self.inner.keyspace
    }

    /// The configuration this handle was built from.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The command timeout every command is sent with, unless it sets its own.
    pub fn command_timeout(&self) -> Duration {
        self.inner.config.command_timeout_value()
    }

    /// The time [`health`](Self::health) allows itself.
    pub fn health_timeout(&self) -> Duration {
        self.inner.config.health_timeout_value()
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.config.is_cluster()
    }

    /// The group `key` goes in when a batch of commands is split for sending (see
    /// [`per_slot`](crate::batch::per_slot)): its Cluster slot on a Cluster, where one command takes
    /// keys of one slot; 0 elsewhere, where one command takes any keys.
    ///
    /// ```
    /// use redtower_client::{Redis, RedisConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), redtower_client::Error> {
    /// // A standalone server: every key of a batch in one group.
    /// let redis = Redis::new(RedisConfig::from_url("redis://127.0.0.1:6379")?)?;
    /// let ns = redis.keyspace().namespace("rl");
    /// assert_eq!(redis.batch_slot(&ns.key("alice")), 0);
    /// assert_eq!(redis.batch_slot(&ns.key("bob")), 0);
    /// # Ok(()) }
    /// ```
    pub fn batch_slot(&self, key: &crate::Key) -> u16 {
        if self.is_cluster() { key.slot() } else { 0 }
    }

    /// Command options that fail at once while the connection is down instead of waiting for a
    /// reconnect: for request paths whose failure policy would rather answer now.
    ///
    /// fred applies fail-fast to any state other than connected, including the moments before
    /// the first connection (it answers `Canceled: Connection closed unexpectedly`), so a
    /// request path awaits [`first_connection`](Self::first_connection) before sending with
    /// these options: fail-fast then means "the connection was up and is now down".
    pub fn fail_fast_options(&self) -> &Options {
        &self.inner.fail_fast
    }

    /// A new connection of its own (same configuration, reconnects included), connected in the
    /// background, for blocking commands such as `BLMOVE` or `XREAD BLOCK` that must not stall
    /// the shared connection.
    ///
    /// # Errors
    ///
    /// When the client cannot be built.
    pub fn dedicated(&self) -> Result<Client> {
        let client = self.inner.builder.build()?;
        let _task = client.connect();
        self.follow_switches(&client);
        Ok(client)
    }

    /// A new subscriber connection that re-subscribes to its channels after every reconnect.
    ///
    /// # Errors
    ///
    /// When the client cannot be built.
    pub fn subscriber(&self) -> Result<SubscriberClient> {
        let client = self.inner.builder.build_subscriber_client()?;
        let _task = client.connect();
        let _resubscriber = client.manage_subscriptions();
        self.follow_switches(&client);
        Ok(client)
    }

    /// A new RESP3 client of its own (same configuration otherwise), not yet connected, for
    /// the near-cache's tracked reads: its event receivers must exist before it connects.
    /// Follows Sentinel switches like every dedicated connection.
    pub(crate) fn tracked_client(&self, broadcast_capacity: usize) -> Result<Client> {
        let mut builder = self.inner.builder.clone();
        builder
            .with_config(|c| c.version = fred::types::RespVersion::RESP3)
            .with_performance_config(|p| p.broadcast_channel_capacity = broadcast_capacity);
        let client = builder.build()?;
        self.follow_switches(&client);
        Ok(client)
    }

    pub(crate) fn scripts(&self) -> &ScriptRegistry {
        &self.inner.scripts
    }

    /// Every key matching `pattern`, streamed page by page with `SCAN` (on every primary of a
    /// Cluster). The pattern always carries the keyspace prefix, so this never walks other
    /// applications' keys. Keys may repeat if the keyspace is resharded during the scan, as
    /// `SCAN` allows.
    ///
    /// ```no_run
    /// # async fn run(redis: redtower_client::Redis) -> Result<(), redtower_client::Error> {
    /// use futures::TryStreamExt;
    /// let pattern = redis.keyspace().namespace("c").pattern();
    /// let keys: Vec<String> = redis.scan(&pattern).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn scan(
        &self,
        pattern: &KeyPattern,
    ) -> impl Stream<Item = Result<String>> + Send + 'static {
        let pattern = pattern.as_str().to_owned();
        let client = self.inner.client.clone();
        let pages = if self.is_cluster() {
            client
                .scan_cluster(pattern, Some(500), None::<ScanType>)
                .boxed()
        } else {
            client.scan(pattern, Some(500), None::<ScanType>).boxed()
        };
        pages
            .map_err(Error::from)
            .map_ok(|mut page: ScanResult| {
                let keys: Vec<FredKey> = page.take_results().unwrap_or_default();
                // Dropping the page asks for the next one.
                drop(page);
                futures::stream::iter(
                    keys.into_iter()
                        .filter_map(|k| k.into_string())
                        .map(Ok::<_, Error>),
                )
            })
            .try_flatten()
    }

    /// Deletes every key matching `pattern` (found with [`scan`](Self::scan)), returning how
    /// many were deleted. Keys are deleted one by one (`UNLINK`), so this works on a Cluster.
    ///
    /// # Errors
    ///
    /// The first Redis error.
    pub async fn delete_matching(&self, pattern: &KeyPattern) -> Result<u64> {
        let mut keys = std::pin::pin!(self.scan(pattern));
        let mut deleted = 0;
        while let Some(key) = keys.try_next().await? {
            let n: u64 = self.inner.client.unlink(key).await?;
            deleted += n;
        }
        Ok(deleted)
    }

    /// `PING` within the configured [health budget](RedisConfig::health_timeout), plus the
    /// connection state. Never fails: an outage is a [`HealthStatus::Down`] value.
    pub async fn health(&self) -> Health {
        self.health_within(self.inner.config.health_timeout_value())
            .await
    }

    async fn health_within(&self, budget: Duration) -> Health {
        let started = Instant::now();
        let options = Options {
            timeout: Some(budget.max(Duration::from_millis(1))),
            max_attempts: Some(1),
            ..Options::default()
        };
        let client = self.inner.client.with_options(&options);
        let ping = client.ping::<String>(None);
        let result = tokio::time::timeout(budget + Duration::from_millis(50), ping).await;
        let state = self.inner.client.state().into();
        match result {
            Ok(Ok(_)) => Health {
                status: HealthStatus::Up,
                state,
                latency: Some(started.elapsed()),
                error: None,
            },
            Ok(Err(e)) => Health {
                status: HealthStatus::Down,
                state,
                latency: None,
                error: Some(Error::from(e).to_string()),
            },
            Err(_) => Health {
                status: HealthStatus::Down,
                state,
                latency: None,
                error: Some(format!("no PING reply within {budget:?}")),
            },
        }
    }

    /// Closes the connection(s). Commands sent afterwards fail. Dropping the last handle does
    /// the same in the background.
    pub async fn quit(&self) {
        let _ = self.inner.client.quit().await;
    }
}
