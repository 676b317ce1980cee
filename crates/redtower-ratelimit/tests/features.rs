//! Layer features on every backend (memory, Redis standalone, Redis Cluster), with two
//! instances sharing one store where it applies: counting by outcome (refunds), tiers chosen
//! per request, peek and reset through the layer's handle, allow and deny lists.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
use http::{Request, StatusCode, request::Parts};
use redtower_client::{Redis, RedisConfig};
use redtower_ratelimit::{
    ClientIp, Global, IpLists, MemoryStore, Policy, Quota, RateLimitLayer, RateLimitStore,
    RedisStore, RefundWhen, Subject, nonzero,
};
use redtower_testkit::unique_prefix;
use tower::ServiceExt;

/// Which store two instances share.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Standalone,
    Cluster,
}

/// Two stores on one backend, as two instances of an application would hold them.
async fn two_stores(backend: Backend, test: &str) -> [Arc<dyn RateLimitStore>; 2] {
    match backend {
        Backend::Memory => {
            let store = MemoryStore::new();
            [Arc::new(store.clone()), Arc::new(store)]
        }
        Backend::Standalone | Backend::Cluster => {
            let url = match backend {
                Backend::Standalone => redtower_testkit::shared_url(),
                _ => redtower_testkit::shared_cluster().url(),
            };
            // One prefix for both instances: they share the counters.
            let prefix = unique_prefix(test);
            let mut out = Vec::new();
            for _ in 0..2 {
                let redis =
                    Redis::new(RedisConfig::from_url(&url).unwrap().key_prefix(&prefix)).unwrap();
                redis.wait_ready(Duration::from_secs(20)).await.unwrap();
                out.push(Arc::new(RedisStore::new(redis)) as Arc<dyn RateLimitStore>);
            }
            [out[0].clone(), out[1].clone()]
        }
    }
}

fn get_from(path: &str, peer: &str) -> Request<Body> {
    let peer: SocketAddr = peer.parse().unwrap();
    Request::get(path)
        .extension(ConnectInfo(peer))
        .body(Body::empty())
        .unwrap()
}

async fn status(app: &Router, req: Request<Body>) -> StatusCode {
    app.clone().oneshot(req).await.unwrap().status()
}

/// A login route: `?ok` succeeds, anything else is a failed attempt (401).
fn login_app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route(
            "/login",
            get(|parts: Parts| async move {
                if parts.uri.query() == Some("ok") {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .layer(layer)
}

/// Failed logins only: successes are refunded before their response leaves, so across two
/// instances exactly `burst` failures pass, then everything is denied (a denied success is
/// not refunded), and a reset through the handle opens the door again.
async fn login_counts_failed_attempts_only(backend: Backend) {
    let stores = two_stores(backend, "login").await;
    let quota = Quota::per_hour(nonzero!(1)).burst(nonzero!(3));
    let layers = stores.map(|s| {
        RateLimitLayer::new(s, Policy::new("login", quota))
            .key(Global)
            .refund_when(RefundWhen::Successful)
    });
    let handle = layers[0].handle();
    let apps = layers.map(login_app);
    let peer = "192.0.2.1:1000";
    for i in 0..10 {
        let app = &apps[i % 2];
        assert_eq!(
            status(app, get_from("/login?ok", peer)).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        handle.peek(&Subject::global()).await.unwrap().remaining(),
        Some(3)
    );
    for i in 0..3 {
        let app = &apps[i % 2];
        assert_eq!(
            status(app, get_from("/login", peer)).await,
            StatusCode::UNAUTHORIZED,
            "{backend:?}: failure {i} is within the limit"
        );
    }
    for (i, app) in apps.iter().enumerate() {
        assert_eq!(
            status(app, get_from("/login", peer)).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{backend:?}: instance {i}, a fourth failure"
        );
        assert_eq!(
            status(app, get_from("/login?ok", peer)).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{backend:?}: instance {i}, denied even with the right password"
        );
    }
    let peeked = handle.peek(&Subject::global()).await.unwrap();
    assert!(!peeked.is_allowed());
    assert_eq!(peeked.remaining(), Some(0));
    handle.reset(&Subject::global()).await.unwrap();
    // Instance 0's handle dropped instance 0's cached denial.
    assert_eq!(
        status(&apps[0], get_from("/login", peer)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        handle.peek(&Subject::global()).await.unwrap().remaining(),
        Some(2)
    );
}

/// The opposite count: only successful requests count.
async fn failed_requests_can_be_skipped(backend: Backend) {
    let stores = two_stores(backend, "skipfailed").await;
    let layers = stores.map(|s| {
        RateLimitLayer::new(
            s,
            Policy::new("ok-only", Quota::per_hour(nonzero!(2)).fixed_window()),
        )
        .key(Global)
        .refund_when(RefundWhen::Failed)
    });
    let apps = layers.map(login_app);
    let peer = "192.0.2.1:1000";
    for i in 0..6 {
        assert_eq!(
            status(&apps[i % 2], get_from("/login", peer)).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        status(&apps[0], get_from("/login?ok", peer)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&apps[1], get_from("/login?ok", peer)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&apps[0], get_from("/login?ok", peer)).await,
        StatusCode::TOO_MANY_REQUESTS,
        "{backend:?}"
    );
}

#[derive(Clone, Copy)]
enum Tier {
    Free,
    Pro,
}

/// A tier per request, from an extension; the counter is shared between tiers, and the new
/// quota applies to the very next request.
async fn tier_is_chosen_per_request(backend: Backend) {
    let stores = two_stores(backend, "tiers").await;
    let layers = stores.map(|s| {
        RateLimitLayer::new(
            s,
            Policy::new("hourly", Quota::per_hour(nonzero!(2)).fixed_window()),
        )
        .tier(
            "pro",
            [Policy::new(
                "hourly",
                Quota::per_hour(nonzero!(5)).fixed_window(),
            )],
        )
        .quota_for(|parts: &Parts| match parts.extensions.get::<Tier>()? {
            Tier::Pro => Some("pro"),
            Tier::Free => None,
        })
        .key(Global)
        .denied_cache(0)
    });
    let apps = layers.map(|l| Router::new().route("/", get(|| async { "ok" })).layer(l));
    let with = |tier: Tier| {
        let mut r = get_from("/", "192.0.2.1:1");
        r.extensions_mut().insert(tier);
        r
    };
    assert_eq!(status(&apps[0], with(Tier::Free)).await, StatusCode::OK);
    assert_eq!(status(&apps[1], with(Tier::Free)).await, StatusCode::OK);
    assert_eq!(
        status(&apps[0], with(Tier::Free)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Upgraded: the same counter (2 used), a quota of 5, on the other instance too.
    for i in 0..3 {
        assert_eq!(
            status(&apps[(i + 1) % 2], with(Tier::Pro)).await,
            StatusCode::OK,
            "{backend:?} {i}"
        );
    }
    assert_eq!(
        status(&apps[0], with(Tier::Pro)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Deny wins over allow, an allowed address is not limited, and both lists reload.
async fn allow_and_deny_lists_reload(backend: Backend) {
    let [store, _] = two_stores(backend, "lists").await;
    let lists = IpLists::new();
    lists.set_allow(["10.0.0.0/8".parse().unwrap()]);
    lists.set_deny([
        "203.0.113.0/24".parse().unwrap(),
        "10.9.0.0/16".parse().unwrap(),
    ]);
    let layer = RateLimitLayer::new(store, Quota::per_hour(nonzero!(1)))
        .ip_lists(lists.clone(), ClientIp::peer());
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    for _ in 0..5 {
        assert_eq!(
            status(&app, get_from("/", "10.1.2.3:1")).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        status(&app, get_from("/", "10.9.0.1:1")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&app, get_from("/", "203.0.113.7:1")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&app, get_from("/", "198.51.100.1:1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, get_from("/", "198.51.100.1:1")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "{backend:?}: not listed, limited"
    );
    lists.set_deny([]);
    lists.set_allow(["198.51.100.0/24".parse().unwrap()]);
    assert_eq!(
        status(&app, get_from("/", "203.0.113.7:1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, get_from("/", "198.51.100.1:1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, get_from("/", "10.1.2.3:1")).await,
        StatusCode::OK,
        "first request of a no-longer-allowed address"
    );
    assert_eq!(
        status(&app, get_from("/", "10.1.2.3:1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// At most two exports in flight per subject across two instances; a lease ends with the
/// response body, or when the request is dropped.
async fn concurrency_is_limited_across_instances(backend: Backend) {
    use std::num::NonZeroU32;
    use tokio::sync::{Semaphore, mpsc};
    let stores = two_stores(backend, "concurrency").await;
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let apps = stores.map(|s| {
        let (gate, entered_tx) = (gate.clone(), entered_tx.clone());
        let export = move || {
            let (gate, entered_tx) = (gate.clone(), entered_tx.clone());
            async move {
                let _ = entered_tx.send(());
                gate.acquire().await.unwrap().forget();
                "csv"
            }
        };
        Router::new().route("/export", get(export)).layer(
            redtower_ratelimit::ConcurrencyLimitLayer::new(
                s,
                "exports",
                NonZeroU32::new(2).unwrap(),
            )
            .key(Global),
        )
    });
    let spawn = |app: Router| {
        tokio::spawn(async move {
            let res = app
                .oneshot(get_from("/export", "192.0.2.1:1"))
                .await
                .unwrap();
            let status = res.status();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap();
            (status, body.to_bytes())
        })
    };
    let first = spawn(apps[0].clone());
    let second = spawn(apps[1].clone());
    entered.recv().await.unwrap();
    entered.recv().await.unwrap();
    for app in &apps {
        assert_eq!(
            status(app, get_from("/export", "192.0.2.1:1")).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{backend:?}: a third export while two run"
        );
    }
    // One export ends: its body has been read to the end, and its lease is released.
    gate.add_permits(1);
    let (finished, _, rest) = futures::future::select_all([first, second]).await;
    let (s, body) = finished.unwrap();
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"csv"[..]));
    // The release is sent once the body ends, on its own task: wait for it by retrying (a
    // 429 means it has not landed yet), each retry after a short pause.
    let third = eventually_admitted(&apps[1], backend, &mut entered).await;
    // Dropping an export in flight releases its lease too.
    third.abort();
    let _ = third.await;
    let fourth = eventually_admitted(&apps[0], backend, &mut entered).await;
    gate.add_permits(10);
    let _ = fourth.await;
    for h in rest {
        assert_eq!(h.await.unwrap().0, StatusCode::OK);
    }
}

/// Sends an export (spawned) until one is admitted; returns its task, blocked in the handler.
async fn eventually_admitted(
    app: &Router,
    backend: Backend,
    entered: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> tokio::task::JoinHandle<()> {
    for _ in 0..200 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let app2 = app.clone();
        let task = tokio::spawn(async move {
            let res = app2
                .oneshot(get_from("/export", "192.0.2.1:1"))
                .await
                .unwrap();
            let _ = tx.send(res.status());
            let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        });
        tokio::select! {
            _ = entered.recv() => return task,
            status = rx => {
                assert_eq!(status.unwrap(), StatusCode::TOO_MANY_REQUESTS, "{backend:?}");
                // The release runs on a spawned task that no event here observes.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    panic!("{backend:?}: a released lease was never given back");
}

/// Leased quotas over two instances: each takes slices of 3 from a limit of 10 per hour and
/// decides locally; together they admit at most the limit (here exactly the limit: the last
/// units are checked exactly), well within the documented `limit + instances x slice`; unused
/// units go back.
async fn leased_quotas_stay_within_the_bound(backend: Backend) {
    use redtower_ratelimit::LeasedStore;
    let stores = two_stores(backend, "leased").await;
    let leased = stores
        .clone()
        .map(|s| LeasedStore::new(s, 3, Duration::from_secs(60)));
    let p = [Policy::new(
        "hot",
        Quota::per_hour(nonzero!(10)).fixed_window(),
    )];
    let s = Subject::new("hot-subject");
    let mut admitted = [0u32; 2];
    for i in 0..30 {
        if leased[i % 2].check(&s, &p, 1).await.unwrap().is_allowed() {
            admitted[i % 2] += 1;
        }
    }
    let total = admitted[0] + admitted[1];
    assert!(total <= 10 + 2 * 3, "{backend:?}: the bound");
    assert_eq!(total, 10, "{backend:?}: {admitted:?}");
    // The shared counter is used up exactly.
    let exact = RateLimitLayer::new(stores[0].clone(), p[0]).handle();
    assert_eq!(exact.peek(&s).await.unwrap().remaining(), Some(0));

    // Unused units go back: a slice of 3 taken for 1 request returns 2.
    let fresh = Subject::new("returned");
    assert!(leased[0].check(&fresh, &p, 1).await.unwrap().is_allowed());
    assert_eq!(
        exact.peek(&fresh).await.unwrap().remaining(),
        Some(7),
        "{backend:?}: slice taken"
    );
    leased[0].flush().await.unwrap();
    assert_eq!(
        exact.peek(&fresh).await.unwrap().remaining(),
        Some(9),
        "{backend:?}: returned"
    );

    // Each request of a slice sees what an exact check would have told it, the first one
    // (which took the slice) included.
    let counted = Subject::new("counted");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(leased[1].check(&counted, &p, 1).await.unwrap().remaining());
    }
    assert_eq!(
        seen,
        [Some(9), Some(8), Some(7), Some(6)],
        "{backend:?}: remaining"
    );
}

/// One instance's store (`name` its own keys), leasing it in slices of 10 for a minute, a
/// policy of 1,000 per hour and a subject.
async fn one_leased_subject(
    backend: Backend,
    name: &'static str,
) -> (
    Arc<dyn RateLimitStore>,
    redtower_ratelimit::LeasedStore,
    [Policy; 1],
    Subject,
) {
    let [store, _] = two_stores(backend, &format!("leased-{name}")).await;
    let leased = redtower_ratelimit::LeasedStore::new(store.clone(), 10, Duration::from_secs(60));
    let p = [Policy::new(
        name,
        Quota::per_hour(nonzero!(1000)).fixed_window(),
    )];
    (store, leased, p, Subject::new(format!("{name}-subject")))
}

/// Concurrent requests of one subject on one instance share its slices: when a slice runs
/// out, one request takes the next while the others wait for it (instead of each taking a
/// slice of its own and all but the last being forgotten, their units lost to the quota). Once
/// the instance returns what it did not use, the store counts exactly the admitted requests.
async fn leased_slices_are_taken_one_at_a_time(backend: Backend) {
    let (store, leased, p, s) = one_leased_subject(backend, "herd").await;
    for round in 0..3 {
        let checks = (0..100).map(|_| {
            let (leased, s) = (leased.clone(), s.clone());
            tokio::spawn(async move { leased.check(&s, &p, 1).await.unwrap().is_allowed() })
        });
        let admitted = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(admitted, 100, "{backend:?}: round {round}");
    }
    leased.flush().await.unwrap();
    let exact = RateLimitLayer::new(store, p[0]).handle();
    assert_eq!(
        exact.peek(&s).await.unwrap().remaining(),
        Some(1000 - 300),
        "{backend:?}: every unit not admitted went back"
    );
}

/// A busy subject's next slice is taken before the current one runs out: once half of a slice
/// of 10 is used, the store counts the next one (5 units: what tops the 5 left up to a slice)
/// without any request waiting for it, and the requests after the first ten are decided from
/// it.
async fn leased_next_slice_is_taken_ahead(backend: Backend) {
    let (store, leased, p, s) = one_leased_subject(backend, "ahead").await;
    let exact = RateLimitLayer::new(store, p[0]).handle();
    let counted = || async { exact.peek(&s).await.unwrap().remaining() };
    // Waits until the store counts at most `most` units left.
    let settles_at = |most: u64| async move {
        for _ in 0..500 {
            if counted().await.is_some_and(|left| left <= most) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{backend:?}: the store never counted {most} left or fewer");
    };
    for i in 0..5 {
        assert!(leased.check(&s, &p, 1).await.unwrap().is_allowed(), "{i}");
    }
    settles_at(985).await;
    assert_eq!(
        counted().await,
        Some(985),
        "{backend:?}: one slice taken ahead"
    );
    // The rest of the first slice and half of the second: no slice taken on the way.
    let mut seen = Vec::new();
    for _ in 5..15 {
        seen.push(leased.check(&s, &p, 1).await.unwrap().remaining());
    }
    let want: Vec<_> = (985..=994).rev().map(Some).collect();
    assert_eq!(seen, want, "{backend:?}: what each request saw");
    // Half of the second slice used: the third is taken ahead in turn (8 to 10 units, as it
    // tops up what the second one has left when it is taken).
    settles_at(977).await;
    leased.flush().await.unwrap();
    assert_eq!(counted().await, Some(1000 - 15), "{backend:?}: returned");
}

macro_rules! on_every_backend {
    ($($test:ident),*) => {
        mod memory {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(Backend::Memory).await })*
        }
        mod standalone {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(Backend::Standalone).await })*
        }
        mod cluster {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(Backend::Cluster).await })*
        }
    };
}

on_every_backend!(
    login_counts_failed_attempts_only,
    failed_requests_can_be_skipped,
    tier_is_chosen_per_request,
    allow_and_deny_lists_reload,
    concurrency_is_limited_across_instances,
    leased_quotas_stay_within_the_bound,
    leased_slices_are_taken_one_at_a_time,
    leased_next_slice_is_taken_ahead
);
