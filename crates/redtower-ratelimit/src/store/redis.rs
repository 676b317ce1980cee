//! [`RedisStore`]: counters in Redis, one Lua script call per request.

use std::{sync::LazyLock, time::Duration};

use fred::{
    bytes_utils::Str,
    interfaces::ClientLike,
    types::{ClusterHash, CustomCommand, Value, config::Options},
};
use redtower_client::{Key, Namespace, Redis, Script};

use crate::{Algorithm, Decision, Error, ManualClock, Policy, Result, Subject, model::Outcome};

static CHECK: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_check", include_str!("check.lua")));
/// The script's SHA-1 as a reusable argument (cloning shares the bytes).
static CHECK_SHA: LazyLock<Str> = LazyLock::new(|| Str::from(CHECK.sha1()));

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
    async fn eval(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Vec<i64>> {
        let client = self.redis.client().with_options(&self.options);
        let (slot, args) = self.args(subject, policies, cost);
        // Route by the keys' slot (they all share one hash tag).
        let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
        match client.custom::<Vec<i64>, _>(cmd.clone(), args).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(target: "redtower::ratelimit", "NOSCRIPT: loading the script");
                CHECK.load(&self.redis).await?;
                // Same arguments (a test clock is read again; the script was not run).
                let (_, args) = self.args(subject, policies, cost);
                client
                    .custom(cmd, args)
                    .await
                    .map_err(|e| Error::Redis(e.into()))
            }
            other => other.map_err(|e| Error::Redis(e.into())),
        }
    }
}

/// The script's per-policy arguments: the algorithm (upper case in shadow mode) and three
/// integers precomputed here, so the script does no more arithmetic than it must.
fn push_policy(args: &mut Vec<Value>, p: &Policy, cost: u32) {
    let q = p.quota();
    let cost = u64::from(cost);
    let (algo, x, y, z) = match q.get_algorithm() {
        Algorithm::Gcra => {
            let t = q.emission_interval_us();
            ("g", t, u64::from(q.capacity()) * t, cost * t)
        }
        Algorithm::FixedWindow => ("f", u64::from(q.limit().get()), q.period_us(), cost),
        Algorithm::SlidingWindow => ("s", u64::from(q.limit().get()), q.period_us(), cost),
    };
    let algo = match (algo, p.is_shadow()) {
        (a, false) => a,
        ("g", true) => "G",
        ("f", true) => "F",
        (_, true) => "S",
    };
    args.push(Value::from_static_str(algo));
    // Bounded by `Policy::validate` (below 2^53), so the casts are exact.
    args.extend([x, y, z].map(|v| Value::Integer(v as i64)));
}

impl RedisStore {
    /// `EVALSHA <sha> <n> <keys...> <now> <per policy: algorithm x y z>`, and the keys' slot.
    fn args(&self, subject: &Subject, policies: &[Policy], cost: u32) -> (u16, Vec<Value>) {
        let mut args: Vec<Value> = Vec::with_capacity(3 + policies.len() * 5);
        args.push(Value::String(CHECK_SHA.clone()));
        args.push(Value::Integer(policies.len() as i64));
        // `<prefix>:rl:{<subject>}:` once; every key appends its policy's name. They all share
        // the hash tag, so the prefix's slot is every key's slot.
        let base = self.ns.key(subject.segment()).into_string();
        let slot = fred::util::redis_keyslot(base.as_bytes());
        for p in policies {
            let mut key = String::with_capacity(base.len() + 1 + p.name().len());
            key.push_str(&base);
            key.push(':');
            key.push_str(p.name());
            args.push(Value::from(key));
        }
        args.push(match &self.clock {
            Some(c) => Value::Integer(c.now_micros() as i64),
            None => Value::from_static_str(""),
        });
        for p in policies {
            push_policy(&mut args, p, cost);
        }
        (slot, args)
    }
}

#[async_trait::async_trait]
impl crate::RateLimitStore for RedisStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        let reply = self.eval(subject, policies, cost).await?;
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
