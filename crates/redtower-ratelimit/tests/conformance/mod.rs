//! The behaviour every [`RateLimitStore`] must have, written once and run per backend by
//! `conformance!` (memory, Redis standalone, Redis Cluster). Time comes from a
//! [`ManualClock`], so every number is exact.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use redtower_ratelimit::{
    Algorithm, Decision, ManualClock, Policy, Quota, RateLimitStore, Subject, nonzero,
};

/// Whole seconds, rounded up (what `Retry-After` says).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A day-aligned instant (so also hour, minute and second aligned), in µs.
pub const T0: u64 = 19_676 * 86_400 * 1_000_000;

pub fn subject(name: &str) -> Subject {
    Subject::new(format!("{name}-{:08x}", rand_u32()))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u32
}

async fn ok(store: &impl RateLimitStore, s: &Subject, p: &[Policy], cost: u32) -> Decision {
    store.check(s, p, cost).await.expect("store answers")
}

pub async fn check_gcra_burst_and_refill(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    let p = [Policy::new(
        "gcra",
        Quota::per_second(nonzero!(10)).burst(nonzero!(20)),
    )];
    let s = subject("gcra");
    for i in 0..20u64 {
        let d = ok(&store, &s, &p, 1).await;
        assert!(d.is_allowed(), "request {i} of the burst");
        assert_eq!(d.policies()[0].remaining(), 19 - i);
        assert_eq!(
            d.policies()[0].reset(),
            Duration::from_millis(100 * (i + 1))
        );
    }
    let denied = ok(&store, &s, &p, 1).await;
    assert!(!denied.is_allowed());
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(100)));
    assert_eq!(denied.policies()[0].remaining(), 0);
    assert_eq!(denied.policies()[0].reset(), Duration::from_secs(2));
    // Denied requests are not counted: the wait does not grow.
    let again = ok(&store, &s, &p, 1).await;
    assert_eq!(again.retry_after(), Some(Duration::from_millis(100)));

    clock.advance(Duration::from_millis(100));
    let refilled = ok(&store, &s, &p, 1).await;
    assert!(refilled.is_allowed());
    assert_eq!(refilled.policies()[0].remaining(), 0);
    assert!(!ok(&store, &s, &p, 1).await.is_allowed());

    // Fully replenished after 2 s of silence.
    clock.advance(Duration::from_secs(2));
    let full = ok(&store, &s, &p, 1).await;
    assert_eq!(full.policies()[0].remaining(), 19);
}

pub async fn check_fixed_window_boundaries(store: impl RateLimitStore, clock: ManualClock) {
    let p = [Policy::new(
        "fixed",
        Quota::per_minute(nonzero!(3)).fixed_window(),
    )];
    let s = subject("fixed");
    clock.set_micros(T0 + 59_500_000);
    for i in 0..3u64 {
        let d = ok(&store, &s, &p, 1).await;
        assert!(d.is_allowed());
        assert_eq!(d.policies()[0].remaining(), 2 - i);
        assert_eq!(d.policies()[0].reset(), Duration::from_millis(500));
    }
    let denied = ok(&store, &s, &p, 1).await;
    assert!(!denied.is_allowed());
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(500)));
    clock.advance(Duration::from_micros(499_999));
    assert!(
        !ok(&store, &s, &p, 1).await.is_allowed(),
        "1 µs before the boundary"
    );
    clock.advance(Duration::from_micros(1));
    let next = ok(&store, &s, &p, 1).await;
    assert!(next.is_allowed(), "a new calendar minute");
    assert_eq!(next.policies()[0].remaining(), 2);
    assert_eq!(next.policies()[0].reset(), Duration::from_secs(60));
}

pub async fn check_sliding_window_weights_previous(store: impl RateLimitStore, clock: ManualClock) {
    let p = [Policy::new(
        "sliding",
        Quota::per_second(nonzero!(4)).with_algorithm(Algorithm::SlidingWindow),
    )];
    let s = subject("sliding");
    clock.set_micros(T0);
    for i in 0..4u64 {
        let d = ok(&store, &s, &p, 1).await;
        assert!(d.is_allowed());
        assert_eq!(d.policies()[0].remaining(), 3 - i);
        assert_eq!(d.policies()[0].reset(), Duration::from_secs(2));
    }
    let denied = ok(&store, &s, &p, 1).await;
    // Next window, the previous 4 weigh floor(4 × (1 s − e) / 1 s): 3 once e >= 1 µs.
    assert_eq!(denied.retry_after(), Some(Duration::from_micros(1_000_001)));
    clock.advance(Duration::from_micros(1_000_000));
    assert!(!ok(&store, &s, &p, 1).await.is_allowed());
    clock.advance(Duration::from_micros(1));
    let d = ok(&store, &s, &p, 1).await;
    assert!(d.is_allowed());
    assert_eq!(d.policies()[0].remaining(), 0);
    // Half-way: the previous window weighs 2, this one 1.
    clock.set_micros(T0 + 1_500_000);
    let d = ok(&store, &s, &p, 1).await;
    assert!(d.is_allowed());
    assert_eq!(d.policies()[0].remaining(), 0);
    assert!(!ok(&store, &s, &p, 1).await.is_allowed());
}

pub async fn check_cost(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    let p = [Policy::new("cost", Quota::per_second(nonzero!(10)))];
    let s = subject("cost");
    let d = ok(&store, &s, &p, 4).await;
    assert_eq!(d.policies()[0].remaining(), 6);
    let d = ok(&store, &s, &p, 4).await;
    assert_eq!(d.policies()[0].remaining(), 2);
    let denied = ok(&store, &s, &p, 4).await;
    assert!(!denied.is_allowed());
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(200)));
    let d = ok(&store, &s, &p, 2).await;
    assert!(d.is_allowed(), "a lighter request still fits");
    assert_eq!(d.policies()[0].remaining(), 0);

    let w = [Policy::new(
        "cost-fixed",
        Quota::per_minute(nonzero!(10)).fixed_window(),
    )];
    assert_eq!(ok(&store, &s, &w, 10).await.policies()[0].remaining(), 0);
    assert!(!ok(&store, &s, &w, 1).await.is_allowed());
}

pub async fn check_multiple_policies_all_or_nothing(
    store: impl RateLimitStore,
    clock: ManualClock,
) {
    clock.set_micros(T0);
    let burst = Policy::new("burst", Quota::per_second(nonzero!(5)));
    let hourly = Policy::new("hourly", Quota::per_hour(nonzero!(3)).fixed_window());
    let both = [burst, hourly];
    let s = subject("multi");
    for i in 0..3u64 {
        let d = ok(&store, &s, &both, 1).await;
        assert!(d.is_allowed());
        assert_eq!(d.get("burst").unwrap().remaining(), 4 - i);
        assert_eq!(d.get("hourly").unwrap().remaining(), 2 - i);
    }
    let denied = ok(&store, &s, &both, 1).await;
    assert!(!denied.is_allowed());
    assert!(denied.get("burst").unwrap().allowed());
    let violated: Vec<_> = denied.violated().map(|d| d.name()).collect();
    assert_eq!(violated, ["hourly"]);
    assert_eq!(denied.retry_after(), Some(Duration::from_secs(3600)));
    // "burst" was not consumed by the denied request (nor by a second one).
    let _ = ok(&store, &s, &both, 1).await;
    let d = ok(&store, &s, &[burst], 1).await;
    assert_eq!(d.policies()[0].remaining(), 1);
    // The longest wait wins when several deny.
    let d = ok(&store, &s, &[burst, hourly], 2).await;
    assert_eq!(d.retry_after(), Some(Duration::from_secs(3600)));
}

pub async fn check_retry_after_never_early(store: impl RateLimitStore, clock: ManualClock) {
    let quotas = [
        Quota::per_second(nonzero!(3)),
        Quota::per_minute(nonzero!(7)).burst(nonzero!(2)),
        Quota::per_second(nonzero!(3)).fixed_window(),
        Quota::per_second(nonzero!(5)).sliding_window(),
        Quota::per_minute(nonzero!(7)).sliding_window(),
    ];
    for (i, q) in quotas.iter().enumerate() {
        let p = [Policy::new("retry", *q)];
        let s = subject(&format!("retry{i}"));
        clock.set_micros(T0 + 123_457 * i as u64);
        let denied = loop {
            let d = ok(&store, &s, &p, 1).await;
            if !d.is_allowed() {
                break d;
            }
        };
        let wait = denied.retry_after().expect("a denial has a wait");
        let start = clock.now_micros();
        clock.set_micros(start + wait.as_micros() as u64 - 1);
        assert!(
            !ok(&store, &s, &p, 1).await.is_allowed(),
            "quota {i}: 1 µs early"
        );
        // Retry-After (whole seconds, rounded up) is never early.
        clock.set_micros(start + ceil_secs(wait) * 1_000_000);
        assert!(
            ok(&store, &s, &p, 1).await.is_allowed(),
            "quota {i}: at Retry-After"
        );
    }
}

pub async fn check_shadow_policy_never_denies(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    let p = [
        Policy::new("enforced", Quota::per_second(nonzero!(10))),
        Policy::new("dry", Quota::per_second(nonzero!(1))).shadow(true),
    ];
    let s = subject("shadow");
    assert!(ok(&store, &s, &p, 1).await.is_allowed());
    let d = ok(&store, &s, &p, 1).await;
    assert!(d.is_allowed());
    assert!(!d.get("dry").unwrap().allowed());
    assert_eq!(d.get("enforced").unwrap().remaining(), 8);
    assert_eq!(d.violated().count(), 0);
}

pub async fn check_subjects_are_independent(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    let p = [Policy::new("indep", Quota::per_minute(nonzero!(1)))];
    let (a, b) = (subject("a"), subject("b"));
    assert!(ok(&store, &a, &p, 1).await.is_allowed());
    assert!(!ok(&store, &a, &p, 1).await.is_allowed());
    assert!(ok(&store, &b, &p, 1).await.is_allowed());
}

pub async fn check_peek_does_not_consume(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    for (i, q) in [
        Quota::per_second(nonzero!(3)),
        Quota::per_second(nonzero!(3)).fixed_window(),
        Quota::per_second(nonzero!(3)).sliding_window(),
    ]
    .into_iter()
    .enumerate()
    {
        let p = [Policy::new("peek", q)];
        let s = subject(&format!("peek{i}"));
        let fresh = store.peek(&s, &p).await.unwrap();
        assert!(fresh.is_allowed());
        assert_eq!(fresh.remaining(), Some(3), "algorithm {i}");
        assert_eq!(ok(&store, &s, &p, 2).await.remaining(), Some(1));
        for _ in 0..3 {
            let d = store.peek(&s, &p).await.unwrap();
            assert!(d.is_allowed());
            assert_eq!(d.remaining(), Some(1), "peeking {i} consumes nothing");
        }
        assert!(ok(&store, &s, &p, 1).await.is_allowed());
        let empty = store.peek(&s, &p).await.unwrap();
        assert!(!empty.is_allowed(), "algorithm {i}: no unit left");
        assert_eq!(empty.remaining(), Some(0));
        // The wait a peek reports is the one a check would report.
        let denied = ok(&store, &s, &p, 1).await;
        assert_eq!(empty.retry_after(), denied.retry_after(), "algorithm {i}");
    }
}

pub async fn check_reset_gives_a_full_allowance(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    let p = [
        Policy::new("reset-a", Quota::per_hour(nonzero!(2))),
        Policy::new("reset-b", Quota::per_hour(nonzero!(5)).fixed_window()),
    ];
    let (s, other) = (subject("reset"), subject("reset-other"));
    for _ in 0..2 {
        assert!(ok(&store, &s, &p, 1).await.is_allowed());
        assert!(ok(&store, &other, &p, 1).await.is_allowed());
    }
    assert!(!ok(&store, &s, &p, 1).await.is_allowed());
    store.reset(&s, &p).await.unwrap();
    let d = ok(&store, &s, &p, 1).await;
    assert!(d.is_allowed());
    assert_eq!(d.get("reset-a").unwrap().remaining(), 1);
    assert_eq!(d.get("reset-b").unwrap().remaining(), 4);
    // Another subject keeps its counts; resetting nothing is fine.
    assert!(!ok(&store, &other, &p, 1).await.is_allowed());
    store.reset(&subject("never-seen"), &p).await.unwrap();
}

pub async fn check_refund_gives_back_in_the_same_window(
    store: impl RateLimitStore,
    clock: ManualClock,
) {
    for (i, q) in [
        Quota::per_minute(nonzero!(3)),
        Quota::per_minute(nonzero!(3)).fixed_window(),
        Quota::per_minute(nonzero!(3)).sliding_window(),
    ]
    .into_iter()
    .enumerate()
    {
        clock.set_micros(T0 + 10_000_000);
        let p = [Policy::new("refund", q)];
        let s = subject(&format!("refund{i}"));
        let first = ok(&store, &s, &p, 1).await;
        let second = ok(&store, &s, &p, 1).await;
        assert_eq!(second.remaining(), Some(1));
        store.refund(&s, &second, 1).await.unwrap();
        assert_eq!(
            store.peek(&s, &p).await.unwrap().remaining(),
            Some(2),
            "algorithm {i}"
        );
        // Never beyond a full allowance: refunding more than was taken stops at full.
        store.refund(&s, &first, 3).await.unwrap();
        assert_eq!(
            store.peek(&s, &p).await.unwrap().remaining(),
            Some(3),
            "algorithm {i}"
        );
        // A denied request gives nothing back.
        for _ in 0..3 {
            assert!(ok(&store, &s, &p, 1).await.is_allowed());
        }
        let denied = ok(&store, &s, &p, 1).await;
        assert!(!denied.is_allowed());
        store.refund(&s, &denied, 1).await.unwrap();
        assert_eq!(
            store.peek(&s, &p).await.unwrap().remaining(),
            Some(0),
            "algorithm {i}"
        );
    }
    // Windows: a refund after the request's window has ended changes nothing in the new one.
    clock.set_micros(T0 + 59_000_000);
    let p = [Policy::new(
        "refund-late",
        Quota::per_minute(nonzero!(3)).fixed_window(),
    )];
    let s = subject("refund-late");
    let old = ok(&store, &s, &p, 1).await;
    clock.set_micros(T0 + 61_000_000);
    assert_eq!(ok(&store, &s, &p, 1).await.remaining(), Some(2));
    store.refund(&s, &old, 1).await.unwrap();
    assert_eq!(store.peek(&s, &p).await.unwrap().remaining(), Some(2));
    // Sliding: a refund in the next window lowers the weight of the previous one.
    clock.set_micros(T0 + 119_000_000);
    let p = [Policy::new(
        "refund-slide",
        Quota::per_minute(nonzero!(4)).sliding_window(),
    )];
    let s = subject("refund-slide");
    let mut last = None;
    for _ in 0..4 {
        last = Some(ok(&store, &s, &p, 1).await);
    }
    clock.set_micros(T0 + 150_000_000);
    // Half-way through the next window the previous 4 weigh 2.
    assert_eq!(ok(&store, &s, &p, 1).await.remaining(), Some(1));
    store.refund(&s, &last.unwrap(), 2).await.unwrap();
    // The previous window now holds 2, weighing 1; this window 1.
    assert_eq!(store.peek(&s, &p).await.unwrap().remaining(), Some(2));
}

pub async fn check_concurrency_leases(store: impl RateLimitStore, clock: ManualClock) {
    clock.set_micros(T0);
    let s = subject("leases");
    let ttl = Duration::from_secs(10);
    let take = |token: u64| store.acquire(&s, "inflight", 2, ttl, token);
    assert_eq!(
        take(1).await.unwrap(),
        redtower_ratelimit::Acquired {
            taken: true,
            held: 1
        }
    );
    assert!(take(2).await.unwrap().taken);
    let full = take(3).await.unwrap();
    assert!(!full.taken);
    assert_eq!(full.held, 2);
    // Taking a lease again under the same token holds it once.
    assert_eq!(
        take(2).await.unwrap(),
        redtower_ratelimit::Acquired {
            taken: true,
            held: 2
        }
    );
    store.release(&s, "inflight", 1).await.unwrap();
    store.release(&s, "inflight", 1).await.unwrap();
    assert!(take(3).await.unwrap().taken);
    assert!(!take(4).await.unwrap().taken);
    // Another subject, another limit name: independent.
    assert!(
        store
            .acquire(&subject("other"), "inflight", 2, ttl, 4)
            .await
            .unwrap()
            .taken
    );
    assert!(store.acquire(&s, "exports", 1, ttl, 4).await.unwrap().taken);
    // Leases that were never released run out.
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        take(5).await.unwrap(),
        redtower_ratelimit::Acquired {
            taken: true,
            held: 1
        }
    );
}

pub async fn check_per_subject_overrides(store: impl RateLimitStore, clock: ManualClock) {
    use std::num::NonZeroU32;
    clock.set_micros(T0);
    for (i, q) in [
        Quota::per_hour(nonzero!(2)),
        Quota::per_hour(nonzero!(2)).fixed_window(),
        Quota::per_hour(nonzero!(2)).sliding_window(),
    ]
    .into_iter()
    .enumerate()
    {
        clock.set_micros(T0);
        let p = [
            Policy::new("ov", q).overridable(true),
            Policy::new("plain", Quota::per_hour(nonzero!(100))),
        ];
        let (vip, other) = (subject(&format!("vip{i}")), subject(&format!("other{i}")));
        for _ in 0..2 {
            assert!(ok(&store, &vip, &p, 1).await.is_allowed());
            assert!(ok(&store, &other, &p, 1).await.is_allowed());
        }
        assert!(!ok(&store, &vip, &p, 1).await.is_allowed(), "algorithm {i}");
        store
            .set_override(&vip, "ov", NonZeroU32::new(5))
            .await
            .unwrap();
        if i == 0 {
            // GCRA keeps its time debt (a full hour, under either limit); the override refills
            // one unit every 12 minutes instead of every 30.
            assert!(!ok(&store, &vip, &p, 1).await.is_allowed());
            clock.advance(Duration::from_secs(12 * 60));
            assert!(
                ok(&store, &vip, &p, 1).await.is_allowed(),
                "refilled at the new rate"
            );
            assert!(
                !ok(&store, &other, &p, 1).await.is_allowed(),
                "not overridden"
            );
        } else {
            // Windows keep their count: 3 more under a limit of 5, none for another subject.
            for n in 0..3u64 {
                let d = ok(&store, &vip, &p, 1).await;
                assert!(
                    d.is_allowed(),
                    "algorithm {i}, request {n} under the override"
                );
                assert_eq!(d.get("ov").unwrap().remaining(), 2 - n, "algorithm {i}");
            }
            assert!(
                !ok(&store, &other, &p, 1).await.is_allowed(),
                "algorithm {i}: not overridden"
            );
        }
        assert!(!ok(&store, &vip, &p, 1).await.is_allowed());
        // Lowered, then removed: back to the default.
        store
            .set_override(&vip, "ov", NonZeroU32::new(1))
            .await
            .unwrap();
        assert!(!ok(&store, &vip, &p, 1).await.is_allowed());
        store.set_override(&vip, "ov", None).await.unwrap();
        assert_eq!(
            store
                .peek(&vip, &p)
                .await
                .unwrap()
                .get("ov")
                .unwrap()
                .remaining(),
            0
        );
        // A policy that is not overridable ignores overrides.
        store
            .set_override(&other, "plain", NonZeroU32::new(1))
            .await
            .unwrap();
        assert!(ok(&store, &other, &[p[1]], 1).await.is_allowed());
    }
}

/// `conformance!(make)` where `make` is an expression of type `fn(ManualClock) -> impl Store`.
#[macro_export]
macro_rules! conformance {
    ($flavor:meta, $make:expr) => {
        $crate::conformance!(@one $flavor, $make,
            check_gcra_burst_and_refill,
            check_fixed_window_boundaries,
            check_sliding_window_weights_previous,
            check_cost,
            check_multiple_policies_all_or_nothing,
            check_retry_after_never_early,
            check_shadow_policy_never_denies,
            check_subjects_are_independent,
            check_peek_does_not_consume,
            check_reset_gives_a_full_allowance,
            check_refund_gives_back_in_the_same_window,
            check_concurrency_leases,
            check_per_subject_overrides
        );
    };
    (@one $flavor:meta, $make:expr, $($check:ident),*) => {$(
        #[$flavor]
        async fn $check() {
            let clock = redtower_ratelimit::ManualClock::at_micros($crate::conformance::T0);
            let store = ($make)(clock.clone()).await;
            $crate::conformance::$check(store, clock).await;
        }
    )*};
}
