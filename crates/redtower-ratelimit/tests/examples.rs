//! The examples, run as programs over HTTP: `memory` in process, `redis` against a test Redis
//! (two instances sharing one limit).

use redtower_testkit::{Example, shared_url, unique_prefix};

const PACKAGE: &str = env!("CARGO_PKG_NAME");

/// `GET /api` allows 5 requests a minute per client IP, then answers 429 with `Retry-After`;
/// `GET /` is not limited.
fn five_then_limited(example: &Example) {
    for n in 1..=5 {
        let res = example.get("/api", &[]);
        assert_eq!(res.status, 200, "request {n}: {}", res.body);
        assert!(res.header("ratelimit").is_some());
    }
    let res = example.get("/api", &[]);
    assert_eq!(res.status, 429, "{}", res.body);
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(example.get("/", &[]).status, 200);
}

#[test]
fn memory_example_answers_429_after_the_quota_and_stops_on_sigint() {
    let example = Example::start(PACKAGE, "memory", &[]);
    five_then_limited(&example);
    assert!(example.interrupt().success());
}

#[test]
fn redis_example_shares_the_limit_between_instances() {
    let url = shared_url();
    let prefix = unique_prefix("rl-example");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let first = Example::start(PACKAGE, "redis", &env);
    five_then_limited(&first);
    assert!(
        first
            .get("/api", &[])
            .header("x-ratelimit-remaining")
            .is_some()
    );
    // Another instance over the same Redis: the same client is already limited there.
    let second = Example::start(PACKAGE, "redis", &env);
    assert_eq!(second.get("/api", &[]).status, 429);
    assert!(second.interrupt().success());
    assert!(first.interrupt().success());
}
