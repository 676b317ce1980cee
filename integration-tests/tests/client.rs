//! `redtower-client` against real servers: URL forms, scripts, SCAN, reconnects, lazy connect.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use fred::interfaces::{ClientLike, KeysInterface, ListInterface, LuaInterface};
use futures::TryStreamExt;
use redtower_client::{ConnectionState, ErrorKind, Redis, RedisConfig, Script};
use redtower_testkit::{RedisSentinel, RedisServer, Reply, unique_prefix};

fn connect(url: &str, test: &str) -> Redis {
    Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap()
}

async fn set_get_roundtrip(redis: &Redis) {
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ns = redis.keyspace().namespace("t");
    for tag in ["a", "b", "c", "user:42", "{evil}"] {
        let key = ns.key(tag).push("v");
        let _: () = redis
            .client()
            .set(key.as_str(), tag, None, None, false)
            .await
            .unwrap();
        let got: String = redis.client().get(key.as_str()).await.unwrap();
        assert_eq!(got, tag);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_by_standalone_url() {
    let redis = connect(&redtower_testkit::shared_url(), "standalone");
    set_get_roundtrip(&redis).await;
    let health = redis.health().await;
    assert!(health.is_up(), "{health:?}");
    assert_eq!(health.state, ConnectionState::Connected);
    assert!(health.latency.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_by_cluster_url() {
    let cluster = redtower_testkit::shared_cluster();
    let redis = connect(&cluster.url(), "cluster");
    assert!(redis.is_cluster());
    set_get_roundtrip(&redis).await;
    assert!(redis.health().await.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_by_sentinel_url() {
    let sentinel = RedisSentinel::start();
    let redis = connect(&sentinel.url(), "sentinel");
    assert!(redis.config().is_sentinel());
    set_get_roundtrip(&redis).await;
    // The writes went to the primary the sentinel points at.
    let keys = sentinel.primary().cmd(&["DBSIZE"]).as_int().unwrap();
    assert_eq!(keys, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_by_tls_url() {
    let server = RedisServer::options().tls(true).start();
    let url = server.tls_url().unwrap();
    let config = RedisConfig::from_url(&url)
        .unwrap()
        .key_prefix(unique_prefix("tls"))
        .tls_ca_pem(server.tls_ca_pem().unwrap().as_bytes())
        .unwrap();
    assert!(config.is_tls());
    let redis = Redis::new(config).unwrap();
    set_get_roundtrip(&redis).await;
    assert_eq!(server.cmd(&["DBSIZE"]).as_int(), Some(5));

    // A server whose certificate is not signed by a trusted CA is refused.
    let untrusted = Redis::new(
        RedisConfig::from_url(&url)
            .unwrap()
            .tls_ca_pem(
                RedisServer::options()
                    .tls(true)
                    .start()
                    .tls_ca_pem()
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap()
            .command_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    assert!(!untrusted.health().await.is_up());
}

static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "add",
        "local n = redis.call('INCRBY', KEYS[1], ARGV[1]) \
         redis.call('PEXPIRE', KEYS[1], 60000) return n",
    )
});

static FAILS: LazyLock<Script> =
    LazyLock::new(|| Script::new("fails", "return redis.error_reply('custom failure')"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_survives_script_flush_standalone() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), "script");
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let key = redis.keyspace().namespace("t").key("n");
    let n: i64 = ADD.run(&redis, vec![key.clone()], vec![2]).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(server.cmd(&["SCRIPT", "FLUSH"]), Reply::Status("OK".into()));
    let n: i64 = ADD.run(&redis, vec![key.clone()], vec![3]).await.unwrap();
    assert_eq!(n, 5);
    let ttl = server.cmd(&["PTTL", key.as_str()]).as_int().unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");

    let err = FAILS
        .run::<i64, _, _>(&redis, Vec::<String>::new(), Vec::<String>::new())
        .await;
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("custom failure"), "{err}");
    let err = redis
        .client()
        .eval::<i64, _, _, _>(
            "return redis.call('NOPE')",
            Vec::<String>::new(),
            Vec::<String>::new(),
        )
        .await
        .map_err(redtower_client::Error::from)
        .unwrap_err();
    assert!(err.is_script(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_runs_on_every_slot_after_flush_cluster() {
    let cluster = redtower_testkit::shared_cluster();
    let redis = connect(&cluster.url(), "script-cluster");
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ns = redis.keyspace().namespace("t");
    let keys: Vec<_> = (0..30).map(|i| ns.key(format!("k{i}").as_str())).collect();
    let slots: std::collections::HashSet<_> = keys
        .iter()
        .map(|k| cluster.node_for_slot(k.slot()).port())
        .collect();
    assert_eq!(slots.len(), 3, "keys cover every primary");
    for key in &keys {
        let n: i64 = ADD.run(&redis, vec![key.clone()], vec![1]).await.unwrap();
        assert_eq!(n, 1);
    }
    for reply in cluster.cmd_all(&["SCRIPT", "FLUSH"]) {
        assert_eq!(reply, Reply::Status("OK".into()));
    }
    for key in &keys {
        let n: i64 = ADD.run(&redis, vec![key.clone()], vec![1]).await.unwrap();
        assert_eq!(n, 2);
    }
}

async fn scan_returns_exactly_the_prefixed_keys(redis: &Redis, foreign: &Redis) {
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ns = redis.keyspace().namespace("scan");
    let mut want = Vec::with_capacity(10_000);
    let writes = (0..10_000).map(|i| {
        let key = ns
            .key(format!("u{}", i % 97).as_str())
            .push(format!("{i}").as_str());
        want.push(key.as_str().to_owned());
        let client = redis.client().clone();
        async move {
            client
                .set::<(), _, _>(
                    key.as_str(),
                    i,
                    Some(fred::types::Expiration::EX(600)),
                    None,
                    false,
                )
                .await
        }
    });
    futures::future::try_join_all(writes).await.unwrap();
    // Keys of another prefix and another namespace that must not show up.
    let other = foreign.keyspace().namespace("scan").key("u1").push("x");
    let _: () = foreign
        .client()
        .set(other.as_str(), 1, None, None, false)
        .await
        .unwrap();
    let sibling = redis.keyspace().namespace("scan2").key("u1");
    let _: () = redis
        .client()
        .set(sibling.as_str(), 1, None, None, false)
        .await
        .unwrap();

    let mut got: Vec<String> = redis.scan(&ns.pattern()).try_collect().await.unwrap();
    got.sort();
    got.dedup();
    want.sort();
    assert_eq!(got.len(), 10_000);
    assert_eq!(got, want);

    let deleted = redis
        .delete_matching(&redis.keyspace().pattern())
        .await
        .unwrap();
    assert_eq!(deleted, 10_001);
    let exists: i64 = foreign.client().exists(other.as_str()).await.unwrap();
    assert_eq!(exists, 1, "another prefix is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_standalone_10k() {
    let url = redtower_testkit::shared_url();
    scan_returns_exactly_the_prefixed_keys(&connect(&url, "scan"), &connect(&url, "scan-other"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_cluster_10k_covers_every_primary() {
    let cluster = redtower_testkit::shared_cluster();
    let url = cluster.url();
    scan_returns_exactly_the_prefixed_keys(
        &connect(&url, "scan-c"),
        &connect(&url, "scan-c-other"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_restarts() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let redis = Redis::new(
        RedisConfig::from_url(&server.url())
            .unwrap()
            .key_prefix(unique_prefix("reconnect"))
            .command_timeout(timeout),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(5)).await.unwrap();
    ADD.load(&redis).await.unwrap();
    let key = redis.keyspace().namespace("t").key("n");

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = redis
            .client()
            .incr::<i64, _>(key.as_str())
            .await
            .unwrap_err();
        let err = redtower_client::Error::from(err);
        assert!(err.is_outage(), "{err:?}");
        // The timeout bounds every call; allow scheduling slack on a loaded machine.
        assert!(
            started.elapsed() < timeout + Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(!redis.health().await.is_up());

    server.restart();
    let back = Instant::now();
    let mut first_ok = None;
    while back.elapsed() < Duration::from_secs(5) {
        if redis.client().incr::<i64, _>(key.as_str()).await.is_ok() {
            first_ok = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_ok = first_ok.expect("commands succeed again after the restart");
    assert!(first_ok < Duration::from_secs(2), "took {first_ok:?}");
    // The restarted server lost its scripts; they work without the caller noticing.
    let n: i64 = ADD.run(&redis, vec![key.clone()], vec![10]).await.unwrap();
    assert_eq!(n, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_connect_reports_down_then_up() {
    let port = redtower_testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let redis = connect(&url, "lazy");
    let health = redis.health().await;
    assert!(!health.is_up());
    assert!(health.error.is_some());

    let _server = RedisServer::options().port(port).start();
    redis.wait_ready(Duration::from_secs(3)).await.unwrap();
    assert!(redis.health().await.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_use_a_dedicated_connection() {
    let redis = connect(&redtower_testkit::shared_url(), "dedicated");
    redis.wait_ready(Duration::from_secs(5)).await.unwrap();
    let list = redis.keyspace().namespace("t").key("list");
    let blocking = redis.dedicated().unwrap();
    let waiter = {
        let list = list.clone();
        tokio::spawn(async move {
            blocking
                .blpop::<Option<(String, String)>, _>(list.as_str(), 5.0)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The shared connection is not stalled by the BLPOP.
    let started = Instant::now();
    let _: i64 = redis.client().rpush(list.as_str(), "job").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    let popped = waiter.await.unwrap().unwrap();
    assert_eq!(popped, Some((list.as_str().to_owned(), "job".to_owned())));
}

/// A command sent with fail-fast options the moment the handle is built: what every layer's
/// request path does on a freshly started instance.
async fn first_fail_fast_incr(url: &str, test: &str) -> Result<i64, redtower_client::Error> {
    let redis = connect(url, test);
    redis.first_connection().await?;
    let key = redis.keyspace().namespace("boot").key("n");
    let client = redis.client().with_options(redis.fail_fast_options());
    Ok(client.incr(key.as_str()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_handle_waits_for_its_first_connection_instead_of_failing_fast() {
    let url = redtower_testkit::shared_url();
    let cluster = redtower_testkit::shared_cluster().url();
    for round in 0..50 {
        for (url, kind) in [(&url, "standalone"), (&cluster, "cluster")] {
            let n = first_fail_fast_incr(url, "boot")
                .await
                .unwrap_or_else(|e| panic!("{kind} round {round}: {e}"));
            assert_eq!(n, 1, "{kind} round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_waiting_a_fresh_handle_fails_fast_before_its_first_connection() {
    // What `first_connection` exists for: fred answers a fail-fast command sent before the
    // first connection with `Canceled` although the server is up.
    let redis = connect(&redtower_testkit::shared_url(), "canceled");
    assert!(!redis.has_connected());
    let client = redis.client().with_options(redis.fail_fast_options());
    let err = client.ping::<String>(None).await.unwrap_err();
    assert_eq!(err.kind(), &fred::error::ErrorKind::Canceled);
    redis.first_connection().await.unwrap();
    assert!(redis.has_connected());
    let pong: String = client.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_never_reached_is_an_outage_after_one_command_timeout() {
    let port = redtower_testkit::free_port();
    let redis = Redis::new(
        RedisConfig::from_url(&format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .command_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let started = Instant::now();
    let err = redis.first_connection().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The wait ran out once: later calls fail at once instead of each waiting again.
    let started = Instant::now();
    let err = redis.first_connection().await.unwrap_err();
    assert!(err.is_outage());
    assert!(started.elapsed() < Duration::from_millis(300));
    assert!(!redis.has_connected());

    // When the server appears, the handle connects and waits no more.
    let _server = RedisServer::options().port(port).start();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert!(redis.has_connected());
    redis.first_connection().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_resends_a_command_whose_reply_was_lost() {
    // Why every state-changing script must be idempotent under re-send or sent once: with
    // the default attempts, a command whose reply is lost runs twice.
    let server = RedisServer::start();
    let proxy = redtower_testkit::FaultProxy::start(server.port()).unwrap();
    let redis = connect(&proxy.url(), "resend");
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let key = redis.keyspace().namespace("resend").key("n");

    proxy.lose_next_reply();
    let n: i64 = redis.client().incr(key.as_str()).await.unwrap();
    assert_eq!(n, 2, "the lost INCR ran, and its re-send ran again");
    assert_eq!(proxy.lost_replies(), 1);

    // Sent once, the loss is reported instead.
    let once = fred::types::config::Options {
        max_attempts: Some(1),
        ..Default::default()
    };
    proxy.lose_next_reply();
    let result = redis
        .client()
        .with_options(&once)
        .incr::<i64, _>(key.as_str())
        .await;
    assert!(result.is_err(), "{result:?}");
    let stored = server.cmd(&["GET", key.as_str()]).as_text();
    assert_eq!(stored.as_deref(), Some("3"), "the command ran once");
}
