//! What is measured: the HTTP cases (one `wrk` run each), the servers they hit, and the
//! ratios the issue sets targets for.

/// A server of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Server {
    /// The example app on Redis, `NEAR_CACHE=off CACHE_L1=off`: every layer goes to Redis.
    AppRedis,
    /// The example app on Redis with the 500 ms TTL L1 cache in front (`NEAR_CACHE=off`).
    AppRedisL1,
    /// The example app on Redis with its default tracked in-process tier (`NEAR_CACHE=on`)
    /// in front of the cache and the session loads.
    AppRedisNear,
    /// The example app without `REDIS_URL`: in-process backends.
    AppMemory,
    /// The Node original (express + ioredis), `benches/node`.
    Node,
    /// `benches/baselines` `naive-limiter`: fred `INCR` + `EXPIRE` pipeline.
    Naive,
    /// `benches/baselines` `governor`: `tower_governor`.
    Governor,
    /// `benches/baselines` `governor` with `RATELIMIT_HEADERS=on`.
    GovernorHeaders,
    /// `benches/baselines` `memory-limiter`: the `governor` app with redtower's memory limiter.
    MemoryLimiter,
    /// `memory-limiter` with `RATELIMIT_HEADERS=off`.
    MemoryLimiterNoHeaders,
    /// `benches/baselines` `tower-sessions-redis`.
    TowerSessions,
}

impl Server {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AppRedis => "app-redis",
            Self::AppRedisL1 => "app-redis-l1",
            Self::AppRedisNear => "app-redis-near",
            Self::AppMemory => "app-memory",
            Self::Node => "node-express",
            Self::Naive => "naive-limiter",
            Self::Governor => "governor",
            Self::GovernorHeaders => "governor-headers",
            Self::MemoryLimiter => "memory-limiter",
            Self::MemoryLimiterNoHeaders => "memory-limiter-no-headers",
            Self::TowerSessions => "tower-sessions-redis",
        }
    }

    /// The binary of `benches/baselines` that serves it, and its `RATELIMIT_HEADERS`.
    pub(crate) fn baseline(self) -> (&'static str, &'static str) {
        match self {
            Self::GovernorHeaders => ("governor", "on"),
            Self::MemoryLimiterNoHeaders => ("memory-limiter", "off"),
            other => (other.name(), "default"),
        }
    }

    /// Whether requests need a logged-in cookie from `POST /login`.
    pub(crate) fn is_app(self) -> bool {
        matches!(
            self,
            Self::AppRedis | Self::AppRedisL1 | Self::AppRedisNear | Self::AppMemory
        )
    }
}

/// One `wrk` run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    pub(crate) id: &'static str,
    pub(crate) scenario: &'static str,
    pub(crate) variant: &'static str,
    pub(crate) server: Server,
    pub(crate) path: &'static str,
    pub(crate) login: bool,
    /// redtower (true) or a baseline (false).
    pub(crate) ours: bool,
}

const fn case(
    id: &'static str,
    scenario: &'static str,
    variant: &'static str,
    server: Server,
    path: &'static str,
    login: bool,
    ours: bool,
) -> Case {
    Case {
        id,
        scenario,
        variant,
        server,
        path,
        login,
        ours,
    }
}

use Server::*;

/// Every HTTP case, in the order they run and are shown.
#[rustfmt::skip]
pub(crate) const CASES: &[Case] = &[
    case("plain/app", "plain (no layer)", "redtower app", AppRedis, "/plain", false, true),
    case("plain/router", "plain (no layer)", "GET /stats (app router and state, no layer)", AppRedis, "/stats", false, true),
    case("plain/node", "plain (no layer)", "Node express", Node, "/plain", false, false),
    case("hello/redis", "rate limit /api/hello", "Redis", AppRedis, "/api/hello", false, true),
    case("hello/memory", "rate limit /api/hello", "memory", AppMemory, "/api/hello", false, true),
    case("hello/naive", "rate limit /api/hello", "naive INCR+EXPIRE (Rust)", Naive, "/api/hello", false, false),
    case("hello/memory-min", "rate limit /api/hello", "memory, minimal app, draft headers (default)", MemoryLimiter, "/api/hello", false, true),
    case("hello/memory-min-bare", "rate limit /api/hello", "memory, minimal app, no headers", MemoryLimiterNoHeaders, "/api/hello", false, true),
    case("hello/governor", "rate limit /api/hello", "tower_governor, minimal app, no headers (default)", Governor, "/api/hello", false, false),
    case("hello/governor-hdr", "rate limit /api/hello", "tower_governor, minimal app, use_headers", GovernorHeaders, "/api/hello", false, false),
    case("hello/node", "rate limit /api/hello", "Node original", Node, "/api/hello", false, false),
    case("leased/redis", "rate limit /api/leased", "Redis, leased slices of 100 for 1 s", AppRedis, "/api/leased", false, true),
    case("cache/redis", "cache hit /products/featured", "Redis (no L1)", AppRedis, "/products/featured", false, true),
    case("cache/l1", "cache hit /products/featured", "Redis + L1", AppRedisL1, "/products/featured", false, true),
    case("cache/near", "cache hit /products/featured", "Redis + tracked tier", AppRedisNear, "/products/featured", false, true),
    case("cache/memory", "cache hit /products/featured", "memory", AppMemory, "/products/featured", false, true),
    case("cache/node", "cache hit /products/featured", "Node original", Node, "/products/featured", false, false),
    case("session/redis", "session read /whoami", "Redis", AppRedis, "/whoami", true, true),
    case("session/near", "session read /whoami", "Redis + tracked tier", AppRedisNear, "/whoami", true, true),
    case("session/memory", "session read /whoami", "memory", AppMemory, "/whoami", true, true),
    case("session/ts", "session read /whoami", "tower-sessions-redis-store", TowerSessions, "/whoami", true, false),
    case("stacked/redis", "stacked /api/stacked", "Redis (no L1)", AppRedis, "/api/stacked", true, true),
    case("stacked/l1", "stacked /api/stacked", "Redis + L1", AppRedisL1, "/api/stacked", true, true),
    case("stacked/near", "stacked /api/stacked", "Redis + tracked tier", AppRedisNear, "/api/stacked", true, true),
    case("stacked/memory", "stacked /api/stacked", "memory", AppMemory, "/api/stacked", true, true),
];

/// A ratio between two rows of the same run; a target when `min` is set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    pub(crate) num: &'static str,
    pub(crate) den: &'static str,
    /// Short name of the denominator, for the table's ratio column.
    pub(crate) versus: &'static str,
    pub(crate) min: Option<f64>,
}

const fn goal(num: &'static str, den: &'static str, versus: &'static str, min: f64) -> Goal {
    Goal {
        num,
        den,
        versus,
        min: Some(min),
    }
}

const fn info(num: &'static str, den: &'static str, versus: &'static str) -> Goal {
    Goal {
        num,
        den,
        versus,
        min: None,
    }
}

/// The targets, then informative ratios.
pub(crate) const GOALS: &[Goal] = &[
    goal("hello/redis", "plain/app", "plain", 0.6),
    goal("leased/redis", "plain/app", "plain", 0.9),
    goal("hello/redis", "hello/naive", "naive Rust", 1.0),
    goal("hello/redis", "hello/node", "Node", 5.0),
    // The same minimal app and the same response (no rate limit headers): only the limiter
    // differs. The informative ratios below compare the defaults, both with headers, and the
    // example app's route (draft + legacy headers, a bigger router).
    goal(
        "hello/memory-min-bare",
        "hello/governor",
        "tower_governor",
        0.9,
    ),
    goal("cache/redis", "plain/app", "plain", 0.6),
    goal("cache/l1", "plain/app", "plain", 0.9),
    goal("cache/redis", "cache/node", "Node", 5.0),
    goal(
        "session/redis",
        "session/ts",
        "tower-sessions-redis-store",
        1.5,
    ),
    goal("stacked/redis", "plain/app", "plain", 0.4),
    goal("cache/near", "plain/app", "plain", 0.9),
    goal(
        "session/near",
        "session/ts",
        "tower-sessions-redis-store",
        2.5,
    ),
    goal("stacked/near", "plain/app", "plain", 0.5),
    goal("jobs/bulk", "jobs/bulk-bullmq", "BullMQ", 2.0),
    goal("jobs/process", "jobs/process-bullmq", "BullMQ", 2.0),
    goal("jobs/sched", "jobs/sched-bullmq", "BullMQ", 2.0),
    goal("jobs/flows", "jobs/flows-bullmq", "BullMQ", 2.0),
    goal("jobs/bulk", "jobs/bulk-apalis", "apalis", 1.2),
    goal("jobs/single", "jobs/single-apalis", "apalis", 1.2),
    goal("jobs/process", "jobs/process-apalis", "apalis", 1.0),
    info("plain/app", "plain/node", "Node"),
    info("plain/router", "plain/app", "plain"),
    info("hello/redis", "plain/router", "/stats"),
    info("hello/memory", "plain/router", "/stats"),
    info("cache/redis", "plain/router", "/stats"),
    info("cache/l1", "plain/router", "/stats"),
    info("stacked/redis", "plain/router", "/stats"),
    info("hello/memory", "plain/app", "plain"),
    info(
        "hello/memory",
        "hello/governor",
        "tower_governor (minimal app)",
    ),
    info(
        "hello/memory-min",
        "hello/governor",
        "tower_governor (defaults)",
    ),
    info(
        "hello/memory-min",
        "hello/governor-hdr",
        "tower_governor use_headers",
    ),
    info("cache/memory", "plain/app", "plain"),
    info("cache/l1", "cache/node", "Node"),
    info("session/redis", "plain/app", "plain"),
    info("session/memory", "plain/app", "plain"),
    info("stacked/l1", "plain/app", "plain"),
    info("stacked/memory", "plain/app", "plain"),
    info("jobs/single", "jobs/single-bullmq", "BullMQ"),
    info("jobs/ticks", "jobs/ticks-bullmq", "BullMQ"),
];

/// Rows whose Redis commands per request should be exactly 1 (single-layer scenarios).
pub(crate) const ONE_COMMAND: &[&str] = &["hello/redis", "cache/redis", "session/redis"];
