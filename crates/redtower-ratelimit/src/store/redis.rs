//! [`RedisStore`]: counters in Redis, one Lua script call per request.

use std::{sync::LazyLock, time::Duration};

use fred::{
    interfaces::{ClientLike, LuaInterface},
    types::config::Options,
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

    async fn eval(&self, keys: Vec<Key>, args: Vec<String>) -> Result<Vec<i64>> {
        let client = self.redis.client().with_options(&self.options);
        let sha = CHECK.sha1().to_owned();
        match client
            .evalsha::<Vec<i64>, _, _, _>(sha.clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(target: "redtower::ratelimit", "NOSCRIPT: loading the script");
                CHECK.load(&self.redis).await?;
                client
                    .evalsha(sha, keys, args)
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
        let keys: Vec<Key> = policies
            .iter()
            .map(|p| self.key(subject, p.name()))
            .collect();
        let mut args = Vec::with_capacity(2 + policies.len() * 5);
        args.push(
            self.clock
                .as_ref()
                .map_or_else(String::new, |c| c.now_micros().to_string()),
        );
        args.push(cost.to_string());
        for p in policies {
            let q = p.quota();
            args.push(algo(q.get_algorithm()).to_owned());
            args.push(q.limit().to_string());
            args.push(q.period_us().to_string());
            args.push(q.capacity().to_string());
            args.push(if p.is_shadow() { "1" } else { "0" }.to_owned());
        }
        let reply = self.eval(keys, args).await?;
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
