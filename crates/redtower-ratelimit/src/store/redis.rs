//! [`RedisStore`]: counters in Redis, one Lua script call per request.

use std::{sync::LazyLock, time::Duration};

use fred::{
    interfaces::ClientLike,
    types::{ClusterHash, CustomCommand, Value, config::Options},
};
use redtower_client::{Key, Namespace, Redis, Script};

use crate::{Algorithm, Decision, Error, ManualClock, Policy, Result, Subject, model::Outcome};

static CHECK: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_check", include_str!("check.lua")));

/// Counters in Redis, shared by every instance of the application.
///
/// Each request is one `EVALSHA` of one script that evaluates every policy of the subject with
/// Redis `TIME`, all-or-nothing, and sets a TTL on every key it writes. Keys are
/// `<prefix>:rl:{<subject>}:<policy>`, so all of a subject's counters share one Cluster slot.
/// Works on standalone Redis, Sentinel and Cluster (Redis 6.2+ or Valkey).
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
}

impl RedisStore {
    /// The key namespace: `rl`.
    pub const NAMESPACE: &'static str = "rl";

    /// A store on `redis`. Commands are sent once (no retry: a retried script could count a
    /// request twice), fail at once while disconnected, and time out after 1 s (the layer's
    /// own, shorter, [timeout](crate::RateLimitLayer::timeout) usually answers first).
    pub fn new(redis: Redis) -> Self {
        let ns = redis.keyspace().namespace(Self::NAMESPACE);
        Self {
            redis,
            ns,
            clock: None,
            options: Options {
                max_attempts: Some(1),
                fail_fast: true,
                timeout: Some(Duration::from_secs(1)),
                ..Options::default()
            },
        }
    }

    /// The per-command timeout given to fred. Defaults to 1 s.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Passes the time of `clock` to the script instead of letting it read Redis `TIME`. For
    /// tests only (differential tests, window boundaries); never in production, where instances'
    /// clocks disagree.
    #[must_use]
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The key holding `policy`'s counter for `subject`.
    pub fn key(&self, subject: &Subject, policy: &str) -> Key {
        self.ns.key(subject.segment()).push(policy)
    }

    /// The namespace of every key of this store (for SCAN).
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// `EVALSHA` sent as a custom command: fred never auto-pipelines its own `EVALSHA` (it
    /// waits for each reply before sending the next command on the connection), which caps a
    /// busy limiter at one script per round trip. Pipelining is safe here: each script is atomic
    /// on the server, and a `NOSCRIPT` reply is handled per call by loading and running again.
    async fn eval(&self, slot: u16, args: Vec<Value>) -> Result<Vec<i64>> {
        let client = self.redis.client().with_options(&self.options);
        // Route by the keys' slot (they all share one hash tag).
        let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
        match client
            .custom::<Vec<i64>, _>(cmd.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(target: "redtower::ratelimit", "NOSCRIPT: loading the script");
                CHECK.load(&self.redis).await?;
                client
                    .custom(cmd, args)
                    .await
                    .map_err(|e| Error::Redis(e.into()))
            }
            other => other.map_err(|e| Error::Redis(e.into())),
        }
    }
}

fn algo(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Gcra => "g",
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindow => "s",
    }
}

#[async_trait::async_trait]
impl crate::RateLimitStore for RedisStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        let mut args: Vec<Value> = Vec::with_capacity(4 + policies.len() * 6);
        args.push(Value::from(CHECK.sha1()));
        args.push(Value::from(policies.len() as i64));
        let mut slot = 0;
        for p in policies {
            let key = self.key(subject, p.name());
            slot = key.slot();
            args.push(Value::from(key.into_string()));
        }
        args.push(match &self.clock {
            Some(c) => Value::from(c.now_micros() as i64),
            None => Value::from_static_str(""),
        });
        args.push(Value::from(i64::from(cost)));
        for p in policies {
            let q = p.quota();
            args.push(Value::from_static_str(algo(q.get_algorithm())));
            args.push(Value::from(i64::from(q.limit().get())));
            args.push(Value::from(q.period_us() as i64));
            args.push(Value::from(i64::from(q.capacity())));
            args.push(Value::from_static_str(if p.is_shadow() {
                "1"
            } else {
                "0"
            }));
        }
        let reply = self.eval(slot, args).await?;
        if reply.len() != 1 + 4 * policies.len() || reply.iter().any(|&v| v < 0) {
            return Err(Error::Reply(format!("{reply:?}")));
        }
        let outcomes = reply[1..].chunks_exact(4).map(|c| Outcome {
            allowed: c[0] == 1,
            remaining: c[1] as u64,
            reset_us: c[2] as u64,
            retry_after_us: c[3] as u64,
        });
        let decision = Decision::new(policies, outcomes);
        if decision.is_allowed() != (reply[0] == 1) {
            return Err(Error::Reply(format!("inconsistent verdict: {reply:?}")));
        }
        Ok(decision)
    }
}
