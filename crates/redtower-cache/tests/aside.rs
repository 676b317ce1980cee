//! Cache-aside time behaviour on the memory backend, with a paused clock.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redtower_cache::{Cache, FetchError, MemoryStore};

const TTL: Duration = Duration::from_secs(10);

fn counted(
    calls: &Arc<AtomicUsize>,
    fail: bool,
) -> impl FnOnce() -> std::future::Ready<Result<usize, String>> + Send + 'static {
    let calls = calls.clone();
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(if fail {
            Err(format!("fail {n}"))
        } else {
            Ok(n)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn values_expire_after_their_ttl() {
    let cache = Cache::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        cache
            .get_or_fetch("k", TTL, counted(&calls, false))
            .await
            .unwrap(),
        1
    );
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(
        cache
            .get_or_fetch("k", TTL, counted(&calls, false))
            .await
            .unwrap(),
        1
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        cache
            .get_or_fetch("k", TTL, counted(&calls, false))
            .await
            .unwrap(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_returns_stale_and_refreshes_in_the_background() {
    let cache = Cache::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let get = |fail| {
        cache
            .fetch("k")
            .ttl(TTL)
            .stale_while_revalidate(Duration::from_secs(30))
            .run(counted(&calls, fail))
    };
    assert_eq!(get(false).await.unwrap(), 1);
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    let stale = futures::future::join_all((0..10).map(|_| get(false))).await;
    assert!(
        stale.into_iter().all(|v| v.unwrap() == 1),
        "stale served at once"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one refresh in the background"
    );
    assert_eq!(get(false).await.unwrap(), 2);
    assert_eq!(cache.stats().refreshes, 1);
    assert_eq!(cache.stats().stale, 10);
    // A failing refresh keeps the stale value and stores nothing.
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    assert_eq!(get(true).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        get(false).await.unwrap(),
        2,
        "still stale after the failed refresh"
    );
    // Past the window of the last refresh: a miss.
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::advance(TTL + Duration::from_secs(31)).await;
    assert!(matches!(get(true).await, Err(FetchError::Fetch(_))));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_a_failing_fetcher() {
    let cache = Cache::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let get = |fail| {
        cache
            .fetch("k")
            .ttl(TTL)
            .stale_if_error(Duration::from_secs(30))
            .run(counted(&calls, fail))
    };
    assert_eq!(get(false).await.unwrap(), 1);
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    assert_eq!(
        get(true).await.unwrap(),
        1,
        "the error is covered by the stale value"
    );
    assert_eq!(
        get(false).await.unwrap(),
        3,
        "but a working fetcher refreshes it"
    );
    tokio::time::advance(TTL + Duration::from_secs(31)).await;
    assert!(matches!(get(true).await, Err(FetchError::Fetch(e)) if e == "fail 4"));
}

#[tokio::test(start_paused = true)]
async fn negative_results_expire_on_their_own_ttl() {
    let cache = Cache::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let get = || {
        let calls = calls.clone();
        cache
            .fetch("missing")
            .ttl(TTL)
            .negative_ttl(Duration::from_secs(2))
            .run(move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<u8>, String>(None)
            })
    };
    assert_eq!(get().await.unwrap(), None);
    assert_eq!(get().await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(get().await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_leader_lets_waiters_fetch_for_themselves() {
    let cache = Cache::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("k", TTL, move || async move {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if n == 0 { Err("first fails") } else { Ok(n) }
                    })
                    .await
            })
        })
        .collect();
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_err()).count(),
        1,
        "only the leader's error"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .all(|n| *n >= 1)
    );
}

#[tokio::test(start_paused = true)]
async fn l1_serves_hits_without_the_store_and_invalidation_clears_it() {
    let cache = Cache::builder(MemoryStore::new())
        .l1(100, Duration::from_secs(1))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        cache
            .get_or_fetch("k", TTL, counted(&calls, false))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cache
            .get_or_fetch("k", TTL, counted(&calls, false))
            .await
            .unwrap(),
        1
    );
    assert_eq!(cache.stats().l1_hits, 1);
    cache.invalidate("k").await.unwrap();
    assert_eq!(
        cache
            .get_or_fetch("k", TTL, counted(&calls, false))
            .await
            .unwrap(),
        2
    );
}
