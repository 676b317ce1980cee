//! [`RedisStore`]: counters in Redis, one Lua script call per request.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{
    bytes_utils::Str,
    error::{Error as FredError, ErrorKind as FredErrorKind},
    types::{Value, config::Options},
};
use redtower_client::{
    Key, Namespace, Redis, Script,
    batch::{Coalescer, Uncoalesced, per_slot},
};
use smallvec::SmallVec;

use crate::{Algorithm, Decision, Error, Outcome, Policy, Result, Subject, store::ManualClock};

/// The check script; its arguments and reply are specified on [`Sender`].
static CHECK: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_check", include_str!("../lua/check.lua")));
/// Reads a subject's counters and the instant, for [`RedisStore::peek`](crate::RateLimitStore::peek).
static PEEK: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_peek", include_str!("../lua/peek.lua")));
/// Deletes a subject's counters.
static RESET: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_reset", include_str!("../lua/reset.lua")));
/// Takes a concurrency lease.
static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_acquire", include_str!("../lua/acquire.lua")));
/// Gives a concurrency lease back.
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_release", include_str!("../lua/release.lua")));
/// Gives back what an admitted request consumed.
static REFUND: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_refund", include_str!("../lua/refund.lua")));

/// Counters in Redis, shared by every instance of the application.
///
/// Each request is checked by one call of one script that evaluates every policy of the
/// subject with Redis `TIME`, all-or-nothing, and sets a TTL on every key it writes. Keys are
/// `<prefix>:rl:{<subject>}:<policy>`, so all of a subject's counters share one Cluster slot.
/// Works on standalone Redis, Sentinel and Cluster (Redis 6.2+ or Valkey, with the `struct`
/// library that both bundle for Lua scripts).
///
/// Checks that concurrent requests make while a check is in flight are coalesced (see
/// [`coalesce`](Self::coalesce)): they leave together as one script call (one per slot on a
/// Cluster) that evaluates them in order, exactly as one after another. Each request still
/// waits for one round trip; under load, Redis and the client run one script call for many
/// requests instead of one each.
///
/// Run Redis with `maxmemory-policy noeviction` (or a dedicated instance): eviction of limiter
/// keys silently resets limits.
///
/// ```no_run
/// use redtower_client::{Redis, RedisConfig};
/// use redtower_ratelimit::{Policy, Quota, RateLimitStore, RedisStore, Subject, nonzero};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// let store = RedisStore::new(redis);
/// let policies = [Policy::new("api", Quota::per_minute(nonzero!(60)))];
/// let decision = store.check(&Subject::new("alice"), &policies, 1).await?;
/// assert!(decision.is_allowed());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStore {
    redis: Redis,
    ns: Namespace,
    clock: Option<ManualClock>,
    options: Options,
    coalesce: bool,
    batches: Option<Arc<Coalescer<Call, Reply>>>,
    /// Set once the first connection has been made and the script loaded (a plain load on
    /// the request path).
    ready: Arc<AtomicBool>,
    /// The one script load after the first connection, shared by the requests waiting for it.
    loaded: Arc<tokio::sync::OnceCell<()>>,
}

/// One request's share of a script call: its keys' slot, and per policy its key and its
/// arguments (kept inline for up to two policies: no allocation per request for them).
#[derive(Debug)]
struct Call {
    slot: u16,
    keys: SmallVec<[Str; 2]>,
    policies: SmallVec<[PolicyArgs; 2]>,
    /// The subject's override hash, when a policy is overridable.
    overrides: Option<Str>,
}

/// One policy of one request as the script takes it (see the protocol on [`Sender`]): its
/// algorithm, whether it is in shadow mode, and its numbers precomputed here (the request's
/// cost included), so the script does no more arithmetic than it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyArgs {
    /// GCRA, all in µs.
    Gcra {
        shadow: bool,
        /// `t`: the time one unit takes to come back.
        emission_interval: i64,
        /// `τ = capacity × t`: how far ahead of now the bucket's theoretical arrival time may be.
        tolerance: i64,
        /// `cost × t`: how far this request moves it.
        increment: i64,
    },
    /// A policy whose limit a subject's override hash may replace: the script reads the
    /// override and computes the numbers above itself.
    Override {
        shadow: bool,
        algorithm: Algorithm,
        /// The field of the override hash.
        name: &'static str,
        /// The default limit, period (µs), capacity (burst, or the limit) and this request's
        /// units.
        limit: i64,
        period: i64,
        capacity: i64,
        cost: i64,
    },
    /// A fixed or sliding window.
    Window {
        shadow: bool,
        sliding: bool,
        /// Requests (units) per window.
        limit: i64,
        /// The window's length in µs.
        period: i64,
        /// The units this request takes.
        cost: i64,
    },
}

/// One request's part of the reply: admitted, the instant, then 4 values per policy.
type Reply = Result<Part, FredError>;

/// A request's part of a batch's reply, shared with the other requests of the batch.
#[derive(Debug, Clone)]
struct Part {
    flat: Arc<[i64]>,
    at: usize,
    len: usize,
}

impl Part {
    fn values(&self) -> &[i64] {
        &self.flat[self.at..self.at + self.len]
    }
}

/// The most requests one coalesced script call checks.
const MAX_BATCH: usize = 64;

impl RedisStore {
    /// The key namespace: `rl`.
    pub const NAMESPACE: &'static str = "rl";

    /// A store on `redis`. Commands are sent once (no retry: a retried script could count a
    /// request twice), fail at once while a connection that was up is down, and time out after
    /// 1 s (the layer's own, shorter, [timeout](crate::RateLimitLayer::timeout) usually answers
    /// first).
    ///
    /// A check made before the first connection to Redis waits for it (up to the client's
    /// [command timeout](redtower_client::RedisConfig::command_timeout)), then for one load of
    /// the script (up to this store's command timeout): a freshly started process is not in an
    /// outage. The layer does this wait, once, before its own timeout starts.
    pub fn new(redis: Redis) -> Self {
        let ns = redis.keyspace().namespace(Self::NAMESPACE);
        let mut store = Self {
            redis,
            ns,
            clock: None,
            options: Options {
                max_attempts: Some(1),
                fail_fast: true,
                timeout: Some(Duration::from_secs(1)),
                ..Options::default()
            },
            coalesce: true,
            batches: None,
            ready: Arc::new(AtomicBool::new(false)),
            loaded: Arc::default(),
        };
        store.configure();
        store
    }

    /// The per-command timeout given to fred. Defaults to 1 s.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self.configure();
        self
    }

    /// Whether concurrent checks are coalesced (default `true`): the checks that requests make
    /// while another check of this store is in flight leave together as one script call (one
    /// per hash slot on a Cluster, at most 64 requests), evaluated in arrival order at one
    /// instant, exactly as if sent one after another. A lone request leaves at once. Off, every
    /// check is its own script call.
    #[must_use]
    pub fn coalesce(mut self, on: bool) -> Self {
        self.coalesce = on;
        self.configure();
        self
    }

    fn configure(&mut self) {
        self.batches = self.coalesce.then(|| {
            let sender = Sender {
                redis: self.redis.clone(),
                options: self.options.clone(),
                clock: self.clock.clone(),
            };
            Arc::new(Coalescer::new(MAX_BATCH, move |calls: Vec<Call>| {
                let sender = sender.clone();
                async move { sender.send(calls).await }
            }))
        });
    }

    /// Passes the time of `clock` to the script instead of letting it read Redis `TIME`. For
    /// tests only (differential tests, window boundaries); never in production, where instances'
    /// clocks disagree.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    #[must_use]
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self.configure();
        self
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Whether the first connection has been made and the script loaded: checks go out at
    /// once.
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits for the first connection (at once when made): commands are sent with fail-fast
    /// options, which fred applies to a client that has not connected yet as well. Then loads
    /// the script once (within the store's command timeout), so that the first checks are one
    /// round trip each, not three (`NOSCRIPT`, `SCRIPT LOAD`, again).
    async fn wait_ready(&self) -> Result<()> {
        if self.ready() {
            return Ok(());
        }
        self.redis.first_connection().await?;
        let bound = self.options.timeout.unwrap_or(Duration::from_secs(1));
        self.loaded
            .get_or_init(|| async {
                // Not loaded now: loaded on first use instead (`NOSCRIPT`).
                match tokio::time::timeout(bound, CHECK.load(&self.redis)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(target: "redtower::ratelimit", %error, "loading the check script failed");
                    }
                    Err(_) => {
                        tracing::debug!(target: "redtower::ratelimit", "loading the check script timed out");
                    }
                }
            })
            .await;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The key holding `policy`'s counter for `subject`.
    pub fn key(&self, subject: &Subject, policy: &str) -> Key {
        self.ns.key(subject.segment()).push(policy)
    }

    /// The hash of `subject`'s overrides (field: policy name, value: its limit), in the
    /// subject's slot: `<prefix>:rl:{<subject>}:#ov` (`#` is never in a policy name).
    pub fn overrides_key(&self, subject: &Subject) -> String {
        let mut key = self.ns.key_with_room(subject.segment(), 4).into_string();
        key.push_str(":#ov");
        key
    }

    /// Sets (or with `None`, removes) the limit of the [overridable](Policy::overridable)
    /// policy named `policy` for `subject`, for every instance at once: the next check of the
    /// subject reads it (`HSET <overrides_key> <policy> <limit>` does the same from any Redis
    /// client). The override keeps the policy's period and algorithm, with a burst of
    /// `limit`; a value that is not a whole number from 1 to 2^32 - 1, or too large for the
    /// exact arithmetic, is ignored (the default applies). The hash has no TTL: operators own
    /// it.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn set_override(
        &self,
        subject: &Subject,
        policy: &str,
        limit: Option<std::num::NonZeroU32>,
    ) -> Result<()> {
        let key = self.overrides_key(subject);
        let client = self.redis.client();
        match limit {
            Some(limit) => {
                let _: Value = fred::interfaces::HashesInterface::hset(
                    client,
                    key,
                    (policy.to_owned(), i64::from(limit.get())),
                )
                .await
                .map_err(redtower_client::Error::from)?;
            }
            None => {
                let _: Value =
                    fred::interfaces::HashesInterface::hdel(client, key, policy.to_owned())
                        .await
                        .map_err(redtower_client::Error::from)?;
            }
        }
        Ok(())
    }

    /// The namespace of every key of this store (for SCAN).
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }
}

impl PolicyArgs {
    fn new(p: &Policy, cost: u32) -> Self {
        let q = p.quota();
        let cost = u64::from(cost);
        // Bounded by `Policy::validate` (below 2^53), so the casts are exact; an unvalidated
        // policy passed to the store directly is clamped (its answers are unspecified, but
        // nothing panics or wraps negative).
        let clamp = |v: u64| i64::try_from(v.min(1 << 53)).unwrap_or(i64::MAX);
        let shadow = p.is_shadow();
        if p.is_overridable() {
            return Self::Override {
                shadow,
                algorithm: q.algorithm(),
                name: p.name(),
                limit: clamp(u64::from(q.limit().get())),
                period: clamp(q.period_us()),
                capacity: clamp(u64::from(q.capacity())),
                cost: clamp(cost),
            };
        }
        let window = |sliding| Self::Window {
            shadow,
            sliding,
            limit: clamp(u64::from(q.limit().get())),
            period: clamp(q.period_us()),
            cost: clamp(cost),
        };
        match q.algorithm() {
            Algorithm::Gcra => {
                let t = q.emission_interval_us().max(1);
                Self::Gcra {
                    shadow,
                    emission_interval: clamp(t),
                    tolerance: clamp(u64::from(q.capacity()).saturating_mul(t)),
                    increment: clamp(cost.saturating_mul(t)),
                }
            }
            Algorithm::FixedWindow => window(false),
            Algorithm::SlidingWindow => window(true),
        }
    }

    /// The code argument: [`code`](Self::code), or for an overridable policy
    /// `o<algorithm code>:<name>:<default limit>` (`O` in shadow mode).
    fn code_arg(&self) -> Value {
        match *self {
            Self::Override {
                shadow,
                algorithm,
                name,
                limit,
                ..
            } => {
                let algo = match algorithm {
                    Algorithm::Gcra => 'g',
                    Algorithm::FixedWindow => 'f',
                    Algorithm::SlidingWindow => 's',
                };
                let o = if shadow { 'O' } else { 'o' };
                Value::from(format!("{o}{algo}:{name}:{limit}"))
            }
            _ => Value::from_static_str(self.code()),
        }
    }

    fn is_override(&self) -> bool {
        matches!(self, Self::Override { .. })
    }

    /// The algorithm's code in the protocol: `g`, `f` or `s`, upper case in shadow mode
    /// (`o` or `O` for an overridable policy, see [`code_arg`](Self::code_arg)).
    fn code(&self) -> &'static str {
        match *self {
            Self::Override { shadow: false, .. } => "o",
            Self::Override { shadow: true, .. } => "O",
            Self::Gcra { shadow: false, .. } => "g",
            Self::Gcra { shadow: true, .. } => "G",
            Self::Window {
                sliding: false,
                shadow: false,
                ..
            } => "f",
            Self::Window {
                sliding: false,
                shadow: true,
                ..
            } => "F",
            Self::Window {
                sliding: true,
                shadow: false,
                ..
            } => "s",
            Self::Window {
                sliding: true,
                shadow: true,
                ..
            } => "S",
        }
    }

    /// The three numbers, in the protocol's order.
    fn numbers(&self) -> [i64; 3] {
        match *self {
            Self::Gcra {
                emission_interval,
                tolerance,
                increment,
                ..
            } => [emission_interval, tolerance, increment],
            Self::Window {
                limit,
                period,
                cost,
                ..
            } => [limit, period, cost],
            Self::Override {
                period,
                capacity,
                cost,
                ..
            } => [period, capacity, cost],
        }
    }
}

impl RedisStore {
    /// One request's keys (sharing the subject's hash tag, so the prefix's slot is every
    /// key's slot) and arguments.
    fn call(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Call {
        // Room for the last policy's name, which reuses this buffer.
        let room = policies.last().map_or(0, |p| 1 + p.name().len());
        let base = self.ns.key_with_room(subject.segment(), room);
        // Only a Cluster needs a call per slot; a standalone server takes every subject of a
        // batch in one call.
        let slot = self.redis.batch_slot(&base);
        let base = base.into_string();
        let key = |mut key: String, p: &Policy| {
            key.push(':');
            key.push_str(p.name());
            Str::from(key)
        };
        let mut keys = SmallVec::with_capacity(policies.len());
        if let Some((last, rest)) = policies.split_last() {
            for p in rest {
                let mut k = String::with_capacity(base.len() + 1 + p.name().len());
                k.push_str(&base);
                keys.push(key(k, p));
            }
            // The last key reuses the prefix's buffer.
            keys.push(key(base, last));
        }
        let overrides = policies
            .iter()
            .any(Policy::is_overridable)
            .then(|| Str::from(self.overrides_key(subject)));
        let policies = policies.iter().map(|p| PolicyArgs::new(p, cost)).collect();
        Call {
            slot,
            keys,
            policies,
            overrides,
        }
    }

    /// Checks several requests in one round trip (one script call per slot), in order, as if
    /// sent one after another at one instant. Results come back in the order of `requests`.
    /// The layer's checks are coalesced by the store itself (concurrent requests share a
    /// call); this is for callers that hold a batch already.
    ///
    /// Each result is an error when Redis could not answer that request.
    ///
    /// ```no_run
    /// use redtower_client::{Redis, RedisConfig};
    /// use redtower_ratelimit::{Policy, Quota, RedisStore, Subject, nonzero};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::new(Redis::new(RedisConfig::from_env()?)?);
    /// let policies = [Policy::new("api", Quota::per_minute(nonzero!(60)))];
    /// let (alice, bob) = (Subject::new("alice"), Subject::new("bob"));
    /// let decisions = store
    ///     .check_batch(&[(&alice, &policies, 1), (&bob, &policies, 1), (&alice, &policies, 1)])
    ///     .await;
    /// assert_eq!(decisions.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn check_batch(
        &self,
        requests: &[(&Subject, &[Policy], u32)],
    ) -> Vec<Result<Decision>> {
        if let Err(e) = self.wait_ready().await {
            let e = fred_error(&e);
            return requests
                .iter()
                .map(|_| Err(Error::Redis(e.clone().into())))
                .collect();
        }
        let calls = requests
            .iter()
            .map(|(s, p, c)| self.call(s, p, *c))
            .collect();
        let replies = self.sender().send(calls).await;
        requests
            .iter()
            .zip(replies)
            .map(|((_, policies, _), r)| decide(policies, r))
            .collect()
    }

    fn sender(&self) -> Sender {
        Sender {
            redis: self.redis.clone(),
            options: self.options.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// Sends batches of calls: one call of the check script per slot, with
/// [`Script::run_with`] (pipelined with the connection's other commands, routed by the first
/// key's slot, `NOSCRIPT` answered by loading the script and sending the call again).
///
/// # The protocol between `Sender` and `src/lua/check.lua`
///
/// This is the one specification of the script's arguments and reply; the script's header
/// points here. A call checks a batch of requests, in order.
///
/// * `KEYS`: the batch's distinct counter keys, in order of first use (on a Cluster, all in
///   one slot).
/// * `ARGV[1]`: now, in µs since the Unix epoch, or `''` for the script to read Redis `TIME`
///   (only a test clock passes a value).
/// * `ARGV[2]`: `P`, the number of distinct [`PolicyArgs`] of the batch, then 4 values per
///   one, in `ARGV[3 .. 2 + 4P]`: its code and three integers,
///   * `g` (GCRA): emission interval `t` (µs), tolerance `τ = capacity × t` (µs), increment
///     `cost × t` (µs);
///   * `f` (fixed window) or `s` (sliding window): limit, period (µs), cost;
///   * upper case (`G`, `F`, `S`): the same policy in shadow mode (evaluated, never denies);
///   * `o<code>:<name>:<limit>` (`O` in shadow mode): an [overridable](Policy::overridable)
///     policy of algorithm `<code>` (`g`, `f`, `s`), its numbers period (µs), default
///     capacity and cost; the script reads field `<name>` of the subject's override hash and
///     computes the numbers above from it (or from the default `<limit>`).
/// * `ARGV[3 + 4P]`: the requests, packed as bytes: per request its number of policies `n`,
///   then per policy the index (from 0) of its key in `KEYS` and of its policy in the list
///   above (for an overridable policy, then the index of the subject's override hash in
///   `KEYS`), each a 16-bit unsigned big-endian integer. A batch whose numbers do not fit in 16
///   bits is sent one request at a time.
///
/// The reply is one bulk string: per request, in order, admitted (one byte, 0 or 1) and the
/// instant it was checked at (µs since the Unix epoch, a double: what a
/// [refund](crate::RateLimitStore::refund) of it needs to find its window), then per
/// policy allowed (one byte, 0 or 1), remaining, reset µs and retry µs, each an IEEE 754
/// double, big-endian (`struct.pack('>Bddd', ...)`; exact, as every value is an integer below
/// 2^53). It does not repeat each request's number of policies: the sender knows it, and
/// [`unpack`] checks the lengths.
#[derive(Debug, Clone)]
struct Sender {
    redis: Redis,
    options: Options,
    clock: Option<ManualClock>,
}

impl Sender {
    /// A Cluster script call takes keys of one slot: one call per slot, concurrently; the
    /// order within a slot is kept.
    async fn send(&self, calls: Vec<Call>) -> Vec<Reply> {
        per_slot(
            calls,
            |c| c.slot,
            |group| self.one_slot(group),
            || Err(short_reply()),
        )
        .await
    }

    /// The keys and arguments of one script call for `calls` (see the protocol above). `None`
    /// when the indexes do not fit in 16 bits (more than 65,535 distinct keys or policies).
    fn arguments(&self, calls: &[Call]) -> Option<(Vec<Str>, Vec<Value>)> {
        let Packed {
            keys,
            policies,
            requests,
        } = Packed::new(calls)?;
        let mut args = Vec::with_capacity(3 + 4 * policies.len());
        args.push(match &self.clock {
            Some(c) => Value::Integer(c.now_micros() as i64),
            None => Value::from_static_str(""),
        });
        args.push(Value::Integer(policies.len() as i64));
        for p in &policies {
            args.push(p.code_arg());
            args.extend(p.numbers().map(Value::Integer));
        }
        args.push(Value::Bytes(requests.into()));
        Some((keys, args))
    }

    /// One script call for calls of one slot, split into each call's reply.
    async fn one_slot(&self, calls: Vec<Call>) -> Vec<Reply> {
        let Some((keys, args)) = self.arguments(&calls) else {
            return self.one_by_one(calls).await;
        };
        let reply = CHECK
            .run_with::<Value, _, _>(&self.redis, &self.options, keys, args)
            .await
            .map_err(|e| driver_error(&e));
        let flat = match reply.and_then(|packed| unpack(&packed, &calls)) {
            Ok(flat) => Arc::<[i64]>::from(flat),
            Err(e) => return calls.iter().map(|_| Err(e.clone())).collect(),
        };
        // Split the flat values: per call, 2 + 4 per policy (`unpack` checked the lengths).
        let mut out = Vec::with_capacity(calls.len());
        let mut at = 0;
        for c in &calls {
            let len = 2 + 4 * c.keys.len();
            out.push(Ok(Part {
                flat: flat.clone(),
                at,
                len,
            }));
            at += len;
        }
        out
    }

    /// A batch whose indexes do not fit in the packed arguments: each call on its own, in
    /// order. A single call with more than 65,535 policies is an error.
    async fn one_by_one(&self, calls: Vec<Call>) -> Vec<Reply> {
        if calls.len() == 1 {
            return vec![Err(FredError::new(
                FredErrorKind::InvalidArgument,
                "a rate limit check of more than 65,535 policies",
            ))];
        }
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            out.extend(Box::pin(self.one_slot(vec![call])).await);
        }
        out
    }
}

/// A batch as the script takes it (see the protocol on [`Sender`]): its distinct keys and
/// policies, and the requests as indexes into them.
#[derive(Debug)]
struct Packed {
    keys: Vec<Str>,
    policies: Vec<PolicyArgs>,
    /// Per call: its number of policies, then per policy the index of its key and of its
    /// policy, each a 16-bit big-endian integer.
    requests: Vec<u8>,
}

impl Packed {
    /// `None` when a number does not fit in 16 bits.
    fn new(calls: &[Call]) -> Option<Self> {
        let mut keys = Distinct::default();
        let mut policies: Vec<PolicyArgs> = Vec::new();
        let mut requests =
            Vec::with_capacity(calls.iter().map(|c| 2 + 4 * c.keys.len()).sum::<usize>());
        let mut push = |n: usize| -> Option<()> {
            requests.extend_from_slice(&u16::try_from(n).ok()?.to_be_bytes());
            Some(())
        };
        for c in calls {
            push(c.keys.len())?;
            for (key, policy) in c.keys.iter().zip(&c.policies) {
                push(keys.index(key))?;
                push(match policies.iter().position(|p| p == policy) {
                    Some(p) => p,
                    None => {
                        policies.push(*policy);
                        policies.len() - 1
                    }
                })?;
                if policy.is_override() {
                    let Some(ov) = &c.overrides else {
                        return None;
                    };
                    push(keys.index(ov))?;
                }
            }
        }
        Some(Self {
            keys: keys.list,
            policies,
            requests,
        })
    }
}

/// The distinct keys of a batch, in order of first use, and the index of each.
#[derive(Default)]
struct Distinct {
    list: Vec<Str>,
    /// Built once the list is too long to search.
    map: Option<std::collections::HashMap<Str, usize>>,
}

impl Distinct {
    /// Lists up to this many keys before indexing them in a map.
    const SCAN: usize = 16;

    fn index(&mut self, key: &Str) -> usize {
        if let Some(map) = &mut self.map {
            let next = self.list.len();
            let i = *map.entry(key.clone()).or_insert(next);
            if i == next {
                self.list.push(key.clone());
            }
            return i;
        }
        // Most recent first: a batch often holds one subject's requests in a row.
        if let Some(i) = self.list.iter().rposition(|k| k == key) {
            return i;
        }
        self.list.push(key.clone());
        if self.list.len() > Self::SCAN {
            self.map = Some(
                self.list
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.clone(), i))
                    .collect(),
            );
        }
        self.list.len() - 1
    }
}

fn short_reply() -> FredError {
    FredError::new(
        FredErrorKind::Protocol,
        "rate limit reply shorter than its batch",
    )
}

/// The script's packed reply (see the protocol on [`Sender`]) as flat values: per call, admitted, then per
/// policy allowed, remaining, reset µs and retry µs. An error when it does not match the batch.
///
/// The reply does not repeat each request's number of policies (the client sent it): a reply
/// that differs from the batch shows up as a length mismatch or a flag byte that is not 0 or
/// 1, and `decide` checks each request's verdict against its policies' outcomes.
fn unpack(reply: &Value, calls: &[Call]) -> Result<Vec<i64>, FredError> {
    let bytes: &[u8] = match reply {
        Value::Bytes(b) => b,
        Value::String(s) => s.as_bytes(),
        other => {
            return Err(FredError::new(
                FredErrorKind::Protocol,
                format!("rate limit reply of type {:?}", other.kind()),
            ));
        }
    };
    let bad = || {
        FredError::new(
            FredErrorKind::Protocol,
            format!(
                "rate limit reply of {} bytes does not match a batch of {} requests",
                bytes.len(),
                calls.len()
            ),
        )
    };
    let flag = |rest: &mut &[u8]| -> Option<i64> {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        (b <= 1).then_some(i64::from(b))
    };
    // Integers below 2^53 are exact as doubles; anything else is not a reply of the script.
    let number = |rest: &mut &[u8]| -> Option<i64> {
        let (raw, tail) = rest.split_first_chunk::<8>()?;
        *rest = tail;
        let v = f64::from_be_bytes(*raw);
        (v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0).then_some(v as i64)
    };
    let mut flat = Vec::with_capacity(calls.iter().map(|c| 2 + 4 * c.keys.len()).sum());
    let mut rest = bytes;
    for c in calls {
        flat.push(flag(&mut rest).ok_or_else(bad)?);
        flat.push(number(&mut rest).ok_or_else(bad)?);
        for _ in 0..c.keys.len() {
            flat.push(flag(&mut rest).ok_or_else(bad)?);
            for _ in 0..3 {
                flat.push(number(&mut rest).ok_or_else(bad)?);
            }
        }
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(flat)
}

/// A request's decision from its part of the reply.
fn decide(policies: &[Policy], reply: Reply) -> Result<Decision> {
    let part = reply.map_err(|e| Error::Redis(e.into()))?;
    let reply = part.values();
    if reply.len() != 2 + 4 * policies.len() || reply.iter().any(|&v| v < 0) {
        return Err(Error::Reply(format!("{reply:?}")));
    }
    let outcomes = reply[2..].chunks_exact(4).map(|c| Outcome {
        allowed: c[0] == 1,
        remaining: c[1] as u64,
        reset_us: c[2] as u64,
        retry_after_us: c[3] as u64,
    });
    let decision = Decision::new(policies, outcomes).checked_at(reply[1] as u64);
    if decision.is_allowed() != (reply[0] == 1) {
        return Err(Error::Reply(format!("inconsistent verdict: {reply:?}")));
    }
    Ok(decision)
}

impl RedisStore {
    /// `ARGV[1]` of every script: the test clock's time, or `''` for Redis `TIME`.
    fn now_arg(&self) -> Value {
        match &self.clock {
            Some(c) => Value::Integer(c.now_micros() as i64),
            None => Value::from_static_str(""),
        }
    }

    async fn peek_redis(&self, subject: &Subject, policies: &[Policy]) -> Result<Decision> {
        if policies.is_empty() {
            return Ok(Decision::new(policies, []));
        }
        self.wait_ready().await?;
        let call = self.call(subject, policies, 1);
        let reply: Vec<Value> = PEEK
            .run_with(
                &self.redis,
                &self.options,
                call.keys.to_vec(),
                vec![self.now_arg()],
            )
            .await?;
        let bad = || Error::Reply(format!("peek reply of {} values", reply.len()));
        if reply.len() != 1 + policies.len() {
            return Err(bad());
        }
        let now = match &reply[0] {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Bytes(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
            Value::Integer(i) => u64::try_from(*i).ok(),
            _ => None,
        }
        .ok_or_else(bad)?;
        let outcomes = policies.iter().zip(&reply[1..]).map(|(p, v)| {
            let state = match v {
                Value::String(s) => crate::model::parse_state(p.quota().algorithm(), s.as_bytes()),
                Value::Bytes(b) => crate::model::parse_state(p.quota().algorithm(), b),
                _ => None,
            };
            crate::model::peek(p.quota(), state, now)
        });
        Ok(Decision::new(policies, outcomes).checked_at(now))
    }

    async fn reset_redis(&self, subject: &Subject, policies: &[Policy]) -> Result<()> {
        if policies.is_empty() {
            return Ok(());
        }
        self.wait_ready().await?;
        let call = self.call(subject, policies, 1);
        let _: Value = RESET
            .run_with(
                &self.redis,
                &self.options,
                call.keys.to_vec(),
                Vec::<Value>::new(),
            )
            .await?;
        Ok(())
    }

    async fn refund_redis(&self, subject: &Subject, decision: &Decision, cost: u32) -> Result<()> {
        let consumed: SmallVec<[Policy; 2]> = decision.consumed().copied().collect();
        if consumed.is_empty() || cost == 0 {
            return Ok(());
        }
        self.wait_ready().await?;
        // A refund gives back by the policies' default quotas (exact for windows, which give
        // back units; an overridden GCRA policy gives back default emission intervals).
        let consumed: SmallVec<[Policy; 2]> =
            consumed.iter().map(|p| p.overridable(false)).collect();
        let call = self.call(subject, &consumed, cost);
        let mut args = Vec::with_capacity(2 + 4 * consumed.len());
        args.push(self.now_arg());
        args.push(Value::Integer(decision.at_micros() as i64));
        for p in &call.policies {
            args.push(Value::from_static_str(p.code()));
            args.extend(p.numbers().map(Value::Integer));
        }
        let _: Value = REFUND
            .run_with(&self.redis, &self.options, call.keys.to_vec(), args)
            .await?;
        Ok(())
    }

    /// One call as its own script call. Boxed, so that the (large) future of an uncoalesced
    /// call is not part of every check's future.
    async fn send_one(&self, call: Call) -> Reply {
        let mut replies = Box::pin(self.sender().send(vec![call])).await;
        replies.pop().unwrap_or_else(|| Err(short_reply()))
    }
}

/// The driver error behind `e` (to hand one error to several requests).
fn fred_error(e: &Error) -> FredError {
    match e {
        Error::Redis(e) => driver_error(e),
        _ => FredError::new(FredErrorKind::Unknown, e.to_string()),
    }
}

/// The driver error behind a client error.
fn driver_error(e: &redtower_client::Error) -> FredError {
    e.as_fred()
        .cloned()
        .unwrap_or_else(|| FredError::new(FredErrorKind::Unknown, e.to_string()))
}

fn dropped() -> FredError {
    FredError::new(FredErrorKind::Canceled, "the check's batch was dropped")
}

#[async_trait::async_trait]
impl crate::RateLimitStore for RedisStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        // Before the first connection, wait for it: a call sent now would fail fast.
        if !self.ready() {
            // Boxed: the rare path stays out of every check's future.
            Box::pin(self.wait_ready()).await?;
        }
        let call = self.call(subject, policies, cost);
        let reply = match &self.batches {
            Some(batches) => match batches.queue(call) {
                Ok(queued) => queued.await.unwrap_or_else(|| Err(dropped())),
                // Not queued (no runtime for the queue's task): sent on its own.
                Err(Uncoalesced::NotSent(call)) => self.send_one(call).await,
                Err(Uncoalesced::Dropped) => Err(dropped()),
            },
            // Not coalesced: every check is its own script call.
            None => self.send_one(call).await,
        };
        decide(policies, reply)
    }

    async fn peek(&self, subject: &Subject, policies: &[Policy]) -> Result<Decision> {
        self.peek_redis(subject, policies).await
    }

    async fn reset(&self, subject: &Subject, policies: &[Policy]) -> Result<()> {
        self.reset_redis(subject, policies).await
    }

    async fn refund(&self, subject: &Subject, decision: &Decision, cost: u32) -> Result<()> {
        self.refund_redis(subject, decision, cost).await
    }

    async fn acquire(
        &self,
        subject: &Subject,
        name: &'static str,
        max: u32,
        ttl: Duration,
        token: u64,
    ) -> Result<crate::Acquired> {
        self.wait_ready().await?;
        let key = self.key(subject, name);
        let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX).max(1);
        let args = vec![
            self.now_arg(),
            Value::Integer(i64::from(max)),
            Value::Integer(ttl),
            Value::from(token.to_string()),
        ];
        let reply: Vec<i64> = ACQUIRE
            .run_with(&self.redis, &self.options, vec![key.into_string()], args)
            .await?;
        match reply[..] {
            [taken, held] => Ok(crate::Acquired {
                taken: taken == 1,
                held: u32::try_from(held).unwrap_or(u32::MAX),
            }),
            _ => Err(Error::Reply(format!("acquire reply {reply:?}"))),
        }
    }

    async fn set_override(
        &self,
        subject: &Subject,
        policy: &str,
        limit: Option<std::num::NonZeroU32>,
    ) -> Result<()> {
        RedisStore::set_override(self, subject, policy, limit).await
    }

    async fn release(&self, subject: &Subject, name: &'static str, token: u64) -> Result<()> {
        self.wait_ready().await?;
        let key = self.key(subject, name);
        let _: Value = RELEASE
            .run_with(
                &self.redis,
                &self.options,
                vec![key.into_string()],
                vec![Value::from(token.to_string())],
            )
            .await?;
        Ok(())
    }

    /// Once the first connection has been made and the script load tried: until then the
    /// layer waits for [`first_connection`](crate::RateLimitStore::first_connection) before
    /// its own timeout starts.
    fn has_connected(&self) -> bool {
        self.ready()
    }

    async fn first_connection(&self) -> Result<()> {
        self.wait_ready().await
    }

    fn connections(&self) -> u64 {
        self.redis.connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(keys: &[&str], policy: PolicyArgs) -> Call {
        Call {
            slot: 0,
            keys: keys.iter().map(|k| Str::from(*k)).collect(),
            policies: std::iter::repeat_n(policy, keys.len()).collect(),
            overrides: None,
        }
    }

    const G: PolicyArgs = PolicyArgs::Gcra {
        shadow: false,
        emission_interval: 1,
        tolerance: 2,
        increment: 3,
    };

    fn words(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect()
    }

    #[test]
    fn packs_distinct_keys_and_policies_with_indexes() {
        let f = PolicyArgs::Window {
            shadow: false,
            sliding: false,
            limit: 1,
            period: 2,
            cost: 3,
        };
        let calls = [
            call(&["a:x", "a:y"], G),
            call(&["b:x"], f),
            call(&["a:x", "a:y"], G),
        ];
        let p = Packed::new(&calls).unwrap();
        assert_eq!(p.keys, ["a:x", "a:y", "b:x"].map(Str::from));
        assert_eq!(p.policies, [G, f]);
        assert_eq!(words(&p.requests), [2, 0, 0, 1, 0, 1, 2, 1, 2, 0, 0, 1, 0]);
    }

    #[test]
    fn many_distinct_keys_keep_their_first_index() {
        // Past `Distinct::SCAN` keys the index moves to a map; indexes must not change.
        let names: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let mut d = Distinct::default();
        for round in 0..3 {
            for (i, n) in names.iter().enumerate() {
                assert_eq!(d.index(&Str::from(n.as_str())), i, "round {round}");
            }
        }
        assert_eq!(d.list.len(), 100);
    }

    /// One policy's part of a reply: allowed, remaining, reset, retry.
    type Packed1 = (u8, f64, f64, f64);

    /// A reply as `check.lua` packs it: per call, admitted and the instant (`>Bd`), then per
    /// policy `>Bddd`.
    fn packed(calls: &[(u8, &[Packed1])]) -> Value {
        let mut out = Vec::new();
        for (admitted, policies) in calls {
            out.push(*admitted);
            out.extend_from_slice(&42.0f64.to_be_bytes());
            for (allowed, remaining, reset, retry) in *policies {
                out.push(*allowed);
                for v in [remaining, reset, retry] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        Value::Bytes(out.into())
    }

    fn packed_bytes(v: &Value) -> bytes::Bytes {
        match v {
            Value::Bytes(b) => b.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn unpacks_the_scripts_reply() {
        let calls = [call(&["a:x"], G), call(&["b:x", "b:y"], G)];
        let big = 9_007_199_254_740_991.0; // 2^53 - 1
        let reply = packed(&[
            (1, &[(1, 4.0, 250_000.0, 0.0)]),
            (0, &[(1, 0.0, big, 0.0), (0, 7.0, 1.0, 1_000_000.0)]),
        ]);
        assert_eq!(
            unpack(&reply, &calls).unwrap(),
            [
                1,
                42,
                1,
                4,
                250_000,
                0,
                0,
                42,
                1,
                0,
                9_007_199_254_740_991,
                0,
                0,
                7,
                1,
                1_000_000
            ]
        );
    }

    #[test]
    fn a_reply_that_does_not_match_its_batch_is_an_error() {
        let calls = [call(&["a:x"], G)];
        let one = |allowed: u8, n: f64| packed(&[(1, &[(allowed, n, 0.0, 0.0)])]);
        assert!(unpack(&one(1, 3.0), &calls).is_ok());
        // fred hands a bulk string that is valid UTF-8 over as a string.
        let text = Value::String(Str::from_inner(packed_bytes(&one(1, 0.0))).unwrap());
        assert_eq!(unpack(&text, &calls).unwrap(), [1, 42, 1, 0, 0, 0]);
        // One request short, one too many, a flag that is not 0 or 1, a number that is not
        // an exact integer, another type.
        assert!(unpack(&one(1, 3.0), &[call(&["a:x"], G), call(&["a:x"], G)]).is_err());
        assert!(unpack(&packed(&[(1, &[]), (1, &[])]), &[call(&[], G)]).is_err());
        assert!(unpack(&one(2, 3.0), &calls).is_err());
        assert!(unpack(&one(1, 0.5), &calls).is_err());
        assert!(unpack(&one(1, f64::NAN), &calls).is_err());
        assert!(unpack(&one(1, 2f64.powi(60)), &calls).is_err());
        assert!(unpack(&Value::Array(vec![Value::Integer(1)]), &calls).is_err());
    }

    #[test]
    fn indexes_past_16_bits_are_refused() {
        let names: Vec<String> = (0..70_000).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(Packed::new(&[call(&keys, G)]).is_none());
        assert!(Packed::new(&[call(&keys[..65_535], G)]).is_some());
    }

    #[test]
    fn arguments_name_the_algorithm_and_shadow_mode() {
        use crate::{Quota, nonzero};
        let q = Quota::per_second(nonzero!(2));
        let args = |q: Quota, shadow| PolicyArgs::new(&Policy::new("p", q).shadow(shadow), 3);
        let codes = [
            (q, false),
            (q, true),
            (q.fixed_window(), false),
            (q.fixed_window(), true),
            (q.sliding_window(), false),
            (q.sliding_window(), true),
        ]
        .map(|(q, shadow)| args(q, shadow).code());
        assert_eq!(codes, ["g", "G", "f", "F", "s", "S"]);
        // GCRA: t = 500 ms, τ = 2 t, increment = 3 t; windows: limit, period, cost.
        assert_eq!(args(q, false).numbers(), [500_000, 1_000_000, 1_500_000]);
        assert_eq!(args(q.fixed_window(), true).numbers(), [2, 1_000_000, 3]);
    }

    #[test]
    fn arguments_of_unvalidated_quotas_saturate() {
        use crate::{Quota, nonzero};
        let century = Duration::from_secs(100 * 365 * 86_400);
        let huge = Quota::with_period(nonzero!(u32::MAX), century)
            .unwrap()
            .burst(nonzero!(u32::MAX));
        let slow = Quota::with_period(nonzero!(1), century)
            .unwrap()
            .burst(nonzero!(u32::MAX));
        for q in [huge, slow, huge.fixed_window(), slow.sliding_window()] {
            let args = PolicyArgs::new(&Policy::new("p", q), u32::MAX);
            for v in args.numbers() {
                assert!((0..=1 << 53).contains(&v), "{args:?}");
            }
        }
    }
}
