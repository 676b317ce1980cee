//! The conformance suite on [`MemoryStore`], plus memory-only behaviour (Tokio clock).

mod common;

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
