//! The conformance suite on [`MemoryStore`], plus memory-only behaviour (Tokio clock).

#[macro_use]
mod conformance;

use std::time::Duration;

use redtower_ratelimit::{
    ManualClock, MemoryStore, Policy, Quota, RateLimitStore, Subject, nonzero,
};

conformance!(tokio::test, |clock: ManualClock| async move {
    MemoryStore::new().clock(clock)
});

#[tokio::test(start_paused = true)]
async fn memory_store_follows_the_tokio_clock() {
    let store = MemoryStore::new();
    let p = [Policy::new("p", Quota::per_second(nonzero!(1)))];
    let s = Subject::new("x");
    assert!(store.check(&s, &p, 1).await.unwrap().is_allowed());
    assert!(!store.check(&s, &p, 1).await.unwrap().is_allowed());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(store.check(&s, &p, 1).await.unwrap().is_allowed());
}

#[tokio::test(start_paused = true)]
async fn memory_store_sweeps_expired_counters() {
    let store = MemoryStore::new();
    let p = [Policy::new("p", Quota::per_second(nonzero!(1)))];
    for i in 0..100 {
        store
            .check(&Subject::new(format!("s{i}")), &p, 1)
            .await
            .unwrap();
    }
    assert_eq!(store.len(), 100);
    tokio::time::advance(Duration::from_secs(2)).await;
    // Sweeping runs as the store is used; enough traffic reaches every shard.
    for _ in 0..(32 * 256) {
        store.check_now(&Subject::new("busy"), &p, 1);
    }
    assert!(
        store.len() <= 2,
        "expired subjects were dropped: {}",
        store.len()
    );
}

/// Clients choose their subjects: a flood of distinct ones is held to `max_subjects`, and a
/// subject deep in debt is not what makes room (it stays limited through the flood).
#[tokio::test(start_paused = true)]
async fn memory_store_holds_at_most_max_subjects() {
    let max = 4_096;
    let store = MemoryStore::new().max_subjects(max);
    let p = [Policy::new("p", Quota::per_hour(nonzero!(10)))];
    let abuser = Subject::new("abuser");
    for _ in 0..10 {
        assert!(store.check_now(&abuser, &p, 1).is_allowed());
    }
    assert!(!store.check_now(&abuser, &p, 1).is_allowed());
    let mut most = 0;
    for i in 0..100_000 {
        store.check_now(&Subject::new(format!("flood-{i}")), &p, 1);
        if i % 1_000 == 0 {
            most = most.max(store.len());
        }
    }
    most = most.max(store.len());
    eprintln!("100,000 distinct subjects, max_subjects {max}: at most {most} held");
    assert!(most <= max, "{most} subjects held");
    assert!(most >= max / 2, "the store is used up to its bound: {most}");
    assert!(
        !store.check_now(&abuser, &p, 1).is_allowed(),
        "flooding did not reset the abuser's counter"
    );
}

/// Hostile values reaching the store directly (an unvalidated quota, a cost above capacity, a
/// clock at the end of time) never panic.
#[test]
fn memory_store_saturates_instead_of_panicking() {
    let century = Duration::from_secs(100 * 365 * 86_400);
    let huge = Quota::with_period(nonzero!(u32::MAX), century)
        .unwrap()
        .burst(nonzero!(u32::MAX));
    let slow = Quota::with_period(nonzero!(1), century)
        .unwrap()
        .burst(nonzero!(u32::MAX));
    let policies = [
        Policy::new("a", huge),
        Policy::new("b", slow),
        Policy::new("c", slow.fixed_window()),
        Policy::new("d", huge.sliding_window()),
    ];
    for now in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        let store = MemoryStore::new().clock(ManualClock::at_micros(now));
        let s = Subject::new("x");
        for cost in [1, u32::MAX] {
            for _ in 0..3 {
                let d = store.check_now(&s, &policies, cost);
                let _ = (d.retry_after(), d.remaining());
            }
        }
    }
}
