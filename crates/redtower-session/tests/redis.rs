//! The conformance suite and HTTP checks on Redis standalone and Cluster, plus Redis-only
//! tests: key layout and TTLs, two app instances, outages, round trips per request.

mod conformance;

use std::time::Duration;

use axum::http::StatusCode;
use conformance::{
    Backend, Opts,
    app::{Counting, app, id_of, login_as, send},
};
use fred::interfaces::{KeysInterface as _, SortedSetsInterface as _};
use redtower_client::{Redis, RedisConfig};
use redtower_session::{RedisStore, UserSessions, tower_sessions::cookie::Key};
use redtower_testkit::{RedisServer, unique_prefix};
use serde_json::json;
use tower_sessions_core::SessionStore as _;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

#[tokio::test]
async fn a_short_secret_is_a_config_error() {
    let redis =
        Redis::new(RedisConfig::from_url(&redtower_testkit::shared_url()).unwrap()).unwrap();
    let err = RedisStore::new(redis.clone(), &SECRET[..31]).unwrap_err();
    assert!(
        matches!(
            err,
            redtower_session::Error::Config(redtower_session::ConfigError::SecretTooShort {
                len: 31,
                min: 32
            })
        ),
        "{err:?}"
    );
    assert_eq!(RedisStore::MIN_SECRET_LEN, 32);
    assert!(RedisStore::new(redis, &SECRET[..32]).is_ok());
}

async fn redis_at(url: &str, prefix: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    redis
}

fn url(cluster: bool) -> String {
    if cluster {
        redtower_testkit::shared_cluster().url()
    } else {
        redtower_testkit::shared_url()
    }
}

async fn store(cluster: bool) -> RedisStore {
    RedisStore::new(
        redis_at(&url(cluster), &unique_prefix("session")).await,
        SECRET,
    )
    .unwrap()
}

/// Cluster or standalone, and whether loads are coalesced.
struct RedisBackend(bool, bool);

impl Backend for RedisBackend {
    type Store = RedisStore;

    async fn store(&self, o: Opts) -> RedisStore {
        let mut s = store(self.0)
            .await
            .touch_interval(Duration::ZERO)
            .coalesce_loads(self.1);
        if let Some(d) = o.idle {
            s = s.idle_timeout(d);
        }
        if let Some(d) = o.absolute {
            s = s.absolute_timeout(d);
        }
        if let Some(n) = o.max_data {
            s = s.max_data_size(n);
        }
        if let Some(n) = o.max_per_user {
            s = s.max_sessions_per_user(n);
        }
        s
    }

    async fn index_len(&self, store: &RedisStore, user: &str) -> usize {
        let n: i64 = store
            .redis()
            .client()
            .zcard(store.index_key(user).as_str())
            .await
            .unwrap();
        usize::try_from(n).unwrap()
    }

    async fn records(&self, store: &RedisStore) -> usize {
        use futures::TryStreamExt as _;
        let pattern = store.redis().keyspace().namespace("s").pattern();
        let keys: Vec<String> = store.redis().scan(&pattern).try_collect().await.unwrap();
        // Index (`:u:`) and epoch (`:g:`) keys are not records.
        keys.iter()
            .filter(|k| !k.contains("}:u:") && !k.contains("}:g:"))
            .count()
    }

    fn watched(&self, store: &RedisStore) -> usize {
        store.watched()
    }

    async fn index_exists(&self, store: &RedisStore, user: &str) -> bool {
        let n: i64 = store
            .redis()
            .client()
            .exists(store.index_key(user).as_str())
            .await
            .unwrap();
        n == 1
    }
}

/// "Log out everywhere" when the index is incomplete (here: deleted behind the store's back, as
/// an eviction or an operator could): the user's epoch still kills every session. Redis only:
/// the memory store's index and sessions change under one lock and cannot drift apart.
async fn check_revoke_all_without_index(b: RedisBackend) {
    let s = b.store(Opts::default()).await;
    let a1 = conformance::create(&s, conformance::bound("alice", "UA1")).await;
    let a2 = conformance::create(&s, conformance::bound("alice", "UA2")).await;
    let deleted: i64 = s
        .redis()
        .client()
        .del(s.index_key("alice").as_str())
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the index existed");
    assert_eq!(s.revoke_all("alice").await.unwrap(), 0, "nothing indexed");
    for id in [&a1.id, &a2.id] {
        assert!(
            s.load(id).await.unwrap().is_none(),
            "the epoch kills unindexed sessions"
        );
    }
}

mod standalone {
    use super::*;

    conformance!([#[tokio::test(flavor = "multi_thread", worker_threads = 2)]] RedisBackend(false, true));
    http_checks!([#[tokio::test(flavor = "multi_thread", worker_threads = 2)]] store(false).await);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoke_all_without_index() {
        check_revoke_all_without_index(RedisBackend(false, true)).await;
    }
}

/// The store chosen at run time: the HTTP checks through an `Arc<dyn SessionBackend>`.
mod standalone_erased {
    use std::sync::Arc;

    use redtower_session::SessionBackend;

    use super::*;

    http_checks!(erased [#[tokio::test(flavor = "multi_thread", worker_threads = 2)]]
        Arc::new(store(false).await) as Arc<dyn SessionBackend>);
}

/// The same conformance suite with every load its own script call.
mod standalone_single_loads {
    use super::*;

    conformance!([#[tokio::test(flavor = "multi_thread", worker_threads = 2)]] RedisBackend(false, false));
}

mod cluster {
    use super::*;

    conformance!([#[tokio::test(flavor = "multi_thread", worker_threads = 2)]] RedisBackend(true, true));
    http_checks!([#[tokio::test(flavor = "multi_thread", worker_threads = 2)]] store(true).await);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoke_all_without_index() {
        check_revoke_all_without_index(RedisBackend(true, true)).await;
    }
}

fn cmd_int(server: &RedisServer, args: &[&str]) -> i64 {
    server.cmd(args).as_int().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hmacs_with_ms_ttls_and_one_slot_per_user() {
    let server = redtower_testkit::shared();
    let s = store(false).await;
    let mut r = conformance::bound("alice", "UA");
    r.expiry_date = time::OffsetDateTime::now_utc() + Duration::from_secs(30);
    s.create(&mut r).await.unwrap();
    let rk = s.record_key(&r.id);
    let (ik, gk) = (s.index_key("alice"), s.epoch_key("alice"));
    assert!(
        !rk.as_str().contains(&r.id.to_string()),
        "no raw id in keys"
    );
    assert!(rk.as_str().contains(":s:{"));
    assert_eq!(rk.slot(), ik.slot());
    assert_eq!(rk.slot(), gk.slot());
    let want_ms = i64::try_from(r.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap();
    assert_eq!(
        cmd_int(server, &["PEXPIRETIME", rk.as_str()]),
        want_ms,
        "ms precision"
    );
    assert_eq!(
        cmd_int(server, &["PEXPIRETIME", ik.as_str()]),
        want_ms,
        "index lives as long as its last session"
    );
    assert!(
        cmd_int(server, &["PEXPIRETIME", gk.as_str()]) >= want_ms,
        "epoch outlives the session"
    );
    let pttl = cmd_int(server, &["PTTL", rk.as_str()]);
    assert!(pttl > 25_000 && pttl <= 30_000, "{pttl}");
    // A second, longer session raises the index TTL; deleting it lowers it back.
    let mut r2 = conformance::bound("alice", "UA2");
    r2.expiry_date = time::OffsetDateTime::now_utc() + Duration::from_secs(60);
    s.create(&mut r2).await.unwrap();
    let want2 = i64::try_from(r2.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap();
    assert_eq!(cmd_int(server, &["PEXPIRETIME", ik.as_str()]), want2);
    s.delete(&r2.id).await.unwrap();
    assert_eq!(cmd_int(server, &["PEXPIRETIME", ik.as_str()]), want_ms);
    s.delete(&r.id).await.unwrap();
    assert_eq!(cmd_int(server, &["EXISTS", ik.as_str()]), 0);
    assert_eq!(cmd_int(server, &["EXISTS", rk.as_str()]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_refresh_idle_without_rewriting_data() {
    let server = redtower_testkit::shared();
    let s = store(false)
        .await
        .idle_timeout(Duration::from_secs(60))
        .touch_interval(Duration::ZERO);
    let mut r = conformance::bound("alice", "UA");
    s.create(&mut r).await.unwrap();
    let rk = s.record_key(&r.id);
    let data_before = server.cmd(&["HGET", rk.as_str(), "d"]).as_text();
    let e0 = cmd_int(server, &["PEXPIRETIME", rk.as_str()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let loaded = s.load(&r.id).await.unwrap().unwrap();
    let e1 = cmd_int(server, &["PEXPIRETIME", rk.as_str()]);
    assert!(e1 > e0, "the read slid the expiry");
    assert_eq!(
        i64::try_from(loaded.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap(),
        e1
    );
    assert_eq!(
        server.cmd(&["HGET", rk.as_str(), "d"]).as_text(),
        data_before
    );
    let score = server
        .cmd(&["ZSCORE", s.index_key("alice").as_str(), &s.handle(&r.id)])
        .as_text()
        .unwrap();
    assert_eq!(
        score.parse::<i64>().unwrap(),
        e1,
        "index score follows the record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_across_instances() {
    revocation_across_instances_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_across_instances_on_a_cluster() {
    revocation_across_instances_on(true).await;
}

async fn revocation_across_instances_on(cluster: bool) {
    let prefix = unique_prefix("instances");
    let key = Key::generate();
    let a = RedisStore::new(redis_at(&url(cluster), &prefix).await, SECRET).unwrap();
    let b = RedisStore::new(redis_at(&url(cluster), &prefix).await, SECRET).unwrap();
    let (app_a, _) = app(a, key.clone());
    let (app_b, _) = app(b, key);
    let alice = login_as(&app_a, "alice").await;
    let alice2 = login_as(&app_b, "alice").await;
    let bob = login_as(&app_a, "bob").await;
    assert_eq!(
        send(&app_b, "GET", "/me", Some(&alice), None).await.status,
        StatusCode::OK
    );
    // Revoke one through B: A rejects it on its next request.
    let list = send(&app_b, "GET", "/me/sessions", Some(&alice2), None)
        .await
        .json;
    let handle = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == json!(false))
        .unwrap()["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = send(
        &app_b,
        "DELETE",
        &format!("/me/sessions/{handle}"),
        Some(&alice2),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        send(&app_a, "GET", "/me", Some(&alice), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Log out everywhere through A: B rejects alice, not bob.
    let alice3 = login_as(&app_b, "alice").await;
    let r = send(&app_a, "POST", "/logout-everywhere", Some(&alice2), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for c in [&alice2, &alice3] {
        assert_eq!(
            send(&app_b, "GET", "/me", Some(c), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        send(&app_b, "GET", "/me", Some(&bob), None).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_503_and_keeps_the_user_logged_in() {
    let mut server = RedisServer::start();
    let redis = Redis::new(
        RedisConfig::from_url(&server.url())
            .unwrap()
            .key_prefix("outage")
            .command_timeout(Duration::from_millis(300))
            .max_command_attempts(1)
            .reconnect_delay(Duration::from_millis(20), Duration::from_millis(100)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let (router, _) = app(
        RedisStore::new(redis.clone(), SECRET).unwrap(),
        Key::generate(),
    );
    let cookie = login_as(&router, "alice").await;
    server.kill();
    for path in ["/me", "/whoami", "/anon"] {
        let r = send(&router, "GET", path, Some(&cookie), None).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(
            r.set_cookie.is_none(),
            "the cookie is neither cleared nor replaced"
        );
    }
    let r = send(
        &router,
        "POST",
        "/login",
        None,
        Some(json!({"user": "bob"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        send(&router, "GET", "/public", Some(&cookie), None)
            .await
            .status,
        StatusCode::OK
    );
    server.restart();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    // No AOF: the data is gone, so the session is now unknown (401), never a 500 or a panic.
    let r = send(&router, "GET", "/whoami", Some(&cookie), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cookies_cause_no_redis_command() {
    let server = RedisServer::start();
    let redis = redis_at(&server.url(), "forged").await;
    let counting = Counting::new(RedisStore::new(redis, SECRET).unwrap());
    let (router, _) = app(counting, Key::generate());
    let good = login_as(&router, "alice").await;
    let (name, value) = good.split_once('=').unwrap();
    let mut monitor = server.monitor();
    for cookie in [
        format!("{name}={}x", &value[..value.len() - 1]),
        format!("{name}={}", &value[..30]),
        format!("{name}={}", "B".repeat(8000)),
    ] {
        assert_eq!(
            send(&router, "GET", "/me", Some(&cookie), None)
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(monitor.take(), Vec::<String>::new(), "no command at all");
}

/// Round trips per request, counted with `MONITOR` on a private server: every command the app
/// sends, whatever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_request() {
    let server = RedisServer::start();
    let redis = redis_at(&server.url(), "rtt").await;
    // Every read refreshes the idle expiry.
    let store = RedisStore::new(redis, SECRET)
        .unwrap()
        .idle_timeout(Duration::from_secs(600))
        .touch_interval(Duration::ZERO);
    let (router, _) = app(store.clone(), Key::generate());
    let cookie = login_as(&router, "alice").await;
    // Every command the app sends is a round trip (fred pipelines nothing across requests
    // here: they are sequential); commands run inside the scripts are not.
    let monitor = std::sync::Mutex::new(server.monitor());
    let measure =
        async |method: &str, path: &str, body: Option<serde_json::Value>, c: Option<&str>| {
            monitor.lock().unwrap().take();
            let r = send(&router, method, path, c, body).await;
            assert!(r.status.is_success(), "{path}: {}", r.status);
            let sent = monitor.lock().unwrap().take();
            assert!(
                sent.iter().all(|c| c.starts_with("\"EVALSHA\"")),
                "{path}: one script call per round trip: {sent:?}"
            );
            sent.len()
        };
    // Warm up: every script loaded once.
    for (m, p) in [("GET", "/whoami"), ("GET", "/me"), ("POST", "/logout")] {
        let c = login_as(&router, "warm").await;
        send(&router, m, p, Some(&c), None).await;
    }
    assert_eq!(
        measure("GET", "/public", None, Some(&cookie)).await,
        0,
        "untouched"
    );
    let record = store.record_key(&id_of(&cookie)).as_str().to_owned();
    let before = cmd_int(&server, &["PTTL", &record]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        measure("GET", "/whoami", None, Some(&cookie)).await,
        1,
        "read + idle refresh"
    );
    assert!(
        cmd_int(&server, &["PTTL", &record]) > before,
        "the read refreshed the idle expiry"
    );
    assert_eq!(
        measure("GET", "/me", None, Some(&cookie)).await,
        2,
        "read + write"
    );
    let anon_login = measure("POST", "/login", Some(json!({"user": "bob"})), None).await;
    assert_eq!(
        anon_login, 2,
        "login from no session: create + the layer's save"
    );
}

/// Sessions of several users (bound: one slot per user) and anonymous ones (random slots),
/// some deleted or revoked, loaded concurrently many times: every load gets its own record,
/// or `None` for the gone ones.
async fn concurrent_loads_get_their_own_sessions(store: RedisStore) -> RedisStore {
    use std::sync::Arc;

    use conformance::{bound, record};
    use tower_sessions_core::session::Id;

    let mut live: Vec<(Id, serde_json::Value)> = Vec::new();
    let mut gone: Vec<Id> = Vec::new();
    for i in 0..24 {
        let mut r = if i % 2 == 0 {
            bound(&format!("user{}", i % 6), &format!("ua{i}"))
        } else {
            record(vec![("n", json!(i))], Duration::from_secs(600))
        };
        store.create(&mut r).await.unwrap();
        if i % 5 == 0 {
            store.delete(&r.id).await.unwrap();
            gone.push(r.id);
        } else {
            live.push((r.id, serde_json::to_value(&r.data).unwrap()));
        }
    }
    // Log user0 out everywhere: its remaining sessions are revoked through the epoch.
    store.revoke_all("user0").await.unwrap();
    let revoked = |data: &serde_json::Value| data["redtower.user"]["user"] == "user0";
    gone.push(Id::default());
    let store = Arc::new(store);
    let loads = (0..1200).map(|i| {
        let store = store.clone();
        let (id, want) = if i % 4 == 3 {
            (gone[i % gone.len()], None)
        } else {
            let (id, data) = &live[i % live.len()];
            (*id, (!revoked(data)).then(|| data.clone()))
        };
        tokio::spawn(async move {
            let got = store.load(&id).await.unwrap();
            let got = got.map(|r| serde_json::to_value(&r.data).unwrap());
            assert_eq!(got, want, "load {i}");
        })
    });
    for r in futures::future::join_all(loads).await {
        r.unwrap();
    }
    Arc::into_inner(store).unwrap()
}

/// Script calls the server ran for `concurrent_loads_get_their_own_sessions` on a private
/// server: 24 creates, 5 deletes and one revoke_all, then 1,200 loads.
async fn script_calls_for_concurrent_loads(coalesce: bool) -> i64 {
    let server = RedisServer::start();
    let store = RedisStore::new(redis_at(&server.url(), "batch").await, SECRET)
        .unwrap()
        .coalesce_loads(coalesce);
    server.cmd(&["CONFIG", "RESETSTAT"]);
    let _ = concurrent_loads_get_their_own_sessions(store).await;
    let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_share_script_calls() {
    let calls = script_calls_for_concurrent_loads(true).await;
    assert!(
        calls < 30 + 1200,
        "concurrent loads coalesced: {calls} script calls"
    );
}

/// One browser's parallel requests: many concurrent loads of one session each get the record,
/// and a batch reads that record once, not once per load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_session_read_it_once_per_batch() {
    use std::sync::Arc;

    let server = RedisServer::start();
    let store = RedisStore::new(redis_at(&server.url(), "same").await, SECRET).unwrap();
    let mut r = conformance::bound("alice", "phone");
    store.create(&mut r).await.unwrap();
    let want = serde_json::to_value(&r.data).unwrap();
    server.cmd(&["CONFIG", "RESETSTAT"]);
    let store = Arc::new(store);
    let loads = (0..600).map(|_| {
        let (store, id, want) = (store.clone(), r.id, want.clone());
        tokio::spawn(async move {
            let got = store.load(&id).await.unwrap().expect("the session");
            assert_eq!(serde_json::to_value(&got.data).unwrap(), want);
        })
    });
    for l in futures::future::join_all(loads).await {
        l.unwrap();
    }
    let stats = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
    // Calls that ran: `calls` less `failed_calls` (the first one, answered NOSCRIPT before
    // the script was loaded).
    let calls = |cmd: &str| -> i64 {
        let Some(line) = stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
        else {
            return 0;
        };
        let field = |name: &str| -> i64 {
            line.split(',')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        field("calls") - field("failed_calls")
    };
    let (scripts, reads) = (calls("evalsha"), calls("hmget"));
    assert!(
        scripts < 600,
        "the loads were coalesced: {scripts} script calls"
    );
    assert_eq!(reads, scripts, "one record read per script call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncoalesced_loads_are_one_script_call_each() {
    let calls = script_calls_for_concurrent_loads(false).await;
    assert!(
        calls >= 30 + 1200,
        "one call per load: {calls} script calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_on_a_cluster_each_get_their_own_session() {
    let _ = concurrent_loads_get_their_own_sessions(store(true).await).await;
}

/// A watch on one instance ends when another instance (its own Redis handle, same prefix and
/// secret) revokes, logs out, or logs out everywhere.
async fn watch_across_instances(cluster: bool) {
    let prefix = unique_prefix("session-watch");
    let a = RedisStore::new(redis_at(&url(cluster), &prefix).await, SECRET).unwrap();
    let b = RedisStore::new(redis_at(&url(cluster), &prefix).await, SECRET).unwrap();
    let mut ids = Vec::new();
    for (user, ua) in [
        ("alice", "UA1"),
        ("alice", "UA2"),
        ("bob", "UA3"),
        ("carol", "UA4"),
    ] {
        ids.push(
            conformance::create(&a, conformance::bound(user, ua))
                .await
                .id,
        );
    }
    let watches: Vec<_> = ids.iter().map(|id| a.watch(id).unwrap()).collect();
    let mut watches = watches.into_iter();
    let (w_revoked, w_all, w_logout, mut w_live) = (
        watches.next().unwrap(),
        watches.next().unwrap(),
        watches.next().unwrap(),
        watches.next().unwrap(),
    );
    assert!(b.revoke("alice", &b.handle(&ids[0])).await.unwrap());
    let t1 = conformance::resolves(w_revoked, conformance::WATCH_SLACK, "revoked elsewhere").await;
    b.revoke_all("alice").await.unwrap();
    let t2 = conformance::resolves(w_all, conformance::WATCH_SLACK, "revoked everywhere").await;
    b.delete(&ids[2]).await.unwrap();
    let t3 =
        conformance::resolves(w_logout, conformance::WATCH_SLACK, "logged out elsewhere").await;
    assert!(
        futures::poll!(&mut w_live).is_pending(),
        "carol is still logged in"
    );
    eprintln!(
        "watch across instances ({}): revoke {t1:?}, revoke_all {t2:?}, logout {t3:?}",
        if cluster { "cluster" } else { "standalone" }
    );
    assert_eq!(a.watched(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_across_instances_standalone() {
    watch_across_instances(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_across_instances_on_a_cluster() {
    watch_across_instances(true).await;
}

/// Many watched sessions cost one batched check per interval: 2,000 watches on a Cluster end
/// together after a "log out everywhere" of their user, the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_on_a_cluster() {
    let s = store(true).await;
    let mut alice = Vec::new();
    for i in 0..50 {
        alice.push(
            conformance::create(&s, conformance::bound("alice", &format!("UA{i}")))
                .await
                .id,
        );
    }
    let others: Vec<_> = futures::future::join_all(
        (0..50).map(|i| conformance::create(&s, conformance::bound(&format!("user{i}"), "UA"))),
    )
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();
    let ended: Vec<_> = (0..1000)
        .map(|i| s.watch(&alice[i % 50]).unwrap())
        .collect();
    let mut live: Vec<_> = (0..1000)
        .map(|i| s.watch(&others[i % 50]).unwrap())
        .collect();
    assert_eq!(s.watched(), 2000);
    let started = std::time::Instant::now();
    s.revoke_all("alice").await.unwrap();
    tokio::time::timeout(conformance::WATCH_SLACK, futures::future::join_all(ended))
        .await
        .expect("every watch of alice's sessions ended");
    eprintln!(
        "2,000 watches: 1,000 ended {:?} after revoke_all",
        started.elapsed()
    );
    for w in &mut live {
        assert!(futures::poll!(w).is_pending());
    }
    assert_eq!(s.watched(), 1000);
    drop(live);
    assert_eq!(s.watched(), 0);
}

/// 1,000 logins for one user on a server of its own: the keys stay at the cap (100 records, one
/// index, one epoch), and once the cap has been reached and evicting has warmed up (its first
/// few hundred logins), Redis memory stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_for_one_user_keep_redis_memory_bounded() {
    let server = RedisServer::start();
    let s = RedisStore::new(redis_at(&server.url(), "rt").await, SECRET).unwrap();
    let used = |server: &RedisServer| {
        let info = server.cmd(&["INFO", "memory"]).as_text().unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let before = used(&server);
    for i in 0..400 {
        conformance::create(&s, conformance::bound("alice", &format!("UA{i}"))).await;
    }
    let warm = used(&server);
    for i in 400..1000 {
        conformance::create(&s, conformance::bound("alice", &format!("UA{i}"))).await;
    }
    let after = used(&server);
    assert_eq!(
        cmd_int(&server, &["DBSIZE"]),
        102,
        "100 records, index, epoch"
    );
    assert_eq!(
        cmd_int(&server, &["ZCARD", s.index_key("alice").as_str()]),
        100
    );
    let index_bytes = cmd_int(&server, &["MEMORY", "USAGE", s.index_key("alice").as_str()]);
    eprintln!(
        "1,000 logins for one user: used_memory {before} B empty, {warm} B after 400, {after} B \
         after 1,000 ({:+} B over the last 600); index {index_bytes} B",
        after - warm
    );
    assert!(
        after - warm < 16 * 1024,
        "memory grew by {} B over 600 logins past the cap",
        after - warm
    );
}
