//! The `response_cache` example, run as a program over HTTP: in process, and over a test
//! Redis (two instances sharing one cache).

use redtower_testkit::{Example, shared_url, unique_prefix};

const PACKAGE: &str = env!("CARGO_PKG_NAME");

#[test]
fn in_process_the_second_request_is_a_hit() {
    let example = Example::start(PACKAGE, "response_cache", &[]);
    let first = example.get("/report", &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = example.get("/report", &[]);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body, "the stored answer, not a new one");
    assert!(example.interrupt().success());
}

#[test]
fn over_redis_a_fill_on_one_instance_is_a_hit_on_another() {
    let url = shared_url();
    let prefix = unique_prefix("cache-example");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let one = Example::start(PACKAGE, "response_cache", &env);
    let two = Example::start(PACKAGE, "response_cache", &env);
    // The host is part of the key: both instances are asked for the same one.
    let host = [("host", "reports.example")];
    let first = one.get("/report", &host);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = two.get("/report", &host);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert!(one.interrupt().success());
    assert!(two.interrupt().success());
}
