//! Invalidation delay of the tracked near-cache: a write on instance A to the key's
//! disappearance from instance B's tier, next to Redis' own round trip, on a fresh local
//! `redis-server`.
//!
//! Run with: `cargo bench -p redtower-client --bench near` (`N=...` changes the sample count,
//! default 2000). Each sample: B reads the key through its tier (so it is cached and tracked);
//! A's `SET` is timed from just before it is sent; B's dispatcher signals each change it
//! applies (`NearCache::changes`), and the sample ends when the key is gone from B's tier.
//! The round trip is A's `PING`, timed the same way.
//!
//! Besides the human lines it prints one machine-readable line, `RESULT ` followed by
//! `{"bench":"near","samples":N,"delay_p50_ms":..,"delay_p99_ms":..,"delay_max_ms":..,
//! "rtt_p50_ms":..,"rtt_p99_ms":..}`.

use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface};
use redtower_client::{NearCache, NearCacheConfig, Redis, RedisConfig};
use redtower_testkit::RedisServer;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn handle(url: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).expect("url")).expect("client");
    redis
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("redis ready");
    redis
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let server = RedisServer::start();
        let a = handle(&server.url()).await;
        let b = handle(&server.url()).await;
        let near: NearCache<String> =
            NearCache::new(&b, NearCacheConfig::new("bench"), String::len).expect("tier");
        assert!(near.wait_ready(Duration::from_secs(20)).await, "tracking never came on");
        let key = "rt:bench:{near}:k";
        let mut delays = Vec::with_capacity(n);
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n {
            let _: () = a
                .client()
                .set(key, i.to_string(), None, None, false)
                .await
                .expect("set");
            near.sync().await.expect("sync");
            // Cache it on B (a tracked read).
            let loaded = near
                .get_or_load(key, |client| async move {
                    client.get::<Option<String>, _>(key).await
                })
                .await
                .expect("load");
            assert_eq!(loaded.as_deref(), Some(i.to_string().as_str()));
            if !near.contains(key) {
                // A push of the previous write arrived after the read: try the next sample.
                continue;
            }
            let mut changes = near.changes();
            changes.borrow_and_update();
            let started = Instant::now();
            let _: () = a
                .client()
                .set(key, "x", None, None, false)
                .await
                .expect("set");
            while near.contains(key) {
                changes.changed().await.expect("tier alive");
            }
            delays.push(started.elapsed().as_secs_f64() * 1000.0);
            let started = Instant::now();
            let _: () = a.client().ping(None).await.expect("ping");
            rtts.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        delays.sort_by(f64::total_cmp);
        rtts.sort_by(f64::total_cmp);
        let (d50, d99, dmax) = (
            percentile(&delays, 50.0),
            percentile(&delays, 99.0),
            delays.last().copied().unwrap_or(0.0),
        );
        let (r50, r99) = (percentile(&rtts, 50.0), percentile(&rtts, 99.0));
        println!(
            "invalidation delay (write on A to gone from B's tier), {} samples: p50 {d50:.3} ms, p99 {d99:.3} ms, max {dmax:.3} ms",
            delays.len()
        );
        println!("redis round trip (PING): p50 {r50:.3} ms, p99 {r99:.3} ms");
        println!(
            "RESULT {{\"bench\":\"near\",\"samples\":{},\"delay_p50_ms\":{d50:.4},\"delay_p99_ms\":{d99:.4},\"delay_max_ms\":{dmax:.4},\"rtt_p50_ms\":{r50:.4},\"rtt_p99_ms\":{r99:.4}}}",
            delays.len()
        );
        let _ = a.client().quit().await;
    });
}
