//! Benchmarks: the same axum route bare, behind the memory limiter, behind the Redis limiter
//! (1 and 3 policies), behind `tower_governor` (in-process GCRA), and behind a naive `INCR` + `EXPIRE` pipeline limiter (the Node
//! original), all in one run against one `redis-server` started for it.
//!
//! Run with `cargo bench -p redtower-ratelimit --bench ratelimit`. Besides criterion's groups
//! (in-process, `oneshot`), it prints a load run over real HTTP/1.1 keep-alive connections on
//! loopback (64 connections, like `wrk -c64`; variants interleaved over 3 rounds): requests per
//! second, p50/p99 latency, and Redis round trips per request from `INFO commandstats`; then a paced run at a fixed 2,000 req/s
//! (open loop) with p50/p99 per variant and what each adds to the bare route.
//!
//! `-- <filter>` filters criterion's groups as usual (a filter matching none of them, such as
//! `-- load`, leaves only the load and paced runs); `RATELIMIT_BENCH_VARIANTS=bare,memory`
//! restricts every part to the named variants.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use criterion::{BenchmarkId, Criterion, criterion_group};
use http::StatusCode;
use redtower_client::{Redis, RedisConfig, fred::interfaces::KeysInterface};
use redtower_ratelimit::{
    Headers, MemoryStore, PeerIp, Policy, Quota, RateLimitLayer, RedisStore, Subject, nonzero,
};
use redtower_testkit::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt;

const CLIENTS: usize = 64;

fn huge() -> Quota {
    Quota::per_second(nonzero!(4_000_000_000))
}

fn route() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

fn limited(layer: RateLimitLayer) -> Router {
    route().layer(
        layer
            .key(PeerIp)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    )
}

/// `tower_governor` with the same quota; `headers` adds its `x-ratelimit-limit` and
/// `x-ratelimit-remaining` to every response (`use_headers`).
fn governor(headers: bool) -> Router {
    let mut builder = tower_governor::governor::GovernorConfigBuilder::default();
    builder.per_nanosecond(1).burst_size(1_000_000_000);
    if headers {
        route().layer(tower_governor::GovernorLayer::new(
            builder.use_headers().finish().unwrap(),
        ))
    } else {
        route().layer(tower_governor::GovernorLayer::new(
            builder.finish().unwrap(),
        ))
    }
}

/// The Node original: `INCR` then `EXPIRE` in a pipeline on every request.
async fn naive(State(redis): State<Redis>, req: Request, next: Next) -> Response {
    let client = req
        .headers()
        .get("x-client")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anon")
        .to_owned();
    let key = redis.keyspace().namespace("naive").key(client.as_str());
    let pipe = redis.client().pipeline();
    let _: Result<(), _> = pipe.incr::<(), _>(key.as_str()).await;
    let _: Result<(), _> = pipe.expire::<(), _>(key.as_str(), 3600, None).await;
    match pipe.all::<(i64, i64)>().await {
        Ok((n, _)) if n > 4_000_000_000 => StatusCode::TOO_MANY_REQUESTS.into_response(),
        Ok(_) => next.run(req).await,
        Err(_) => next.run(req).await,
    }
}

struct Apps {
    variants: Vec<(&'static str, Router)>,
}

fn apps(rt: &tokio::runtime::Runtime, url: &str) -> Apps {
    rt.block_on(async {
        let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix("bench")).unwrap();
        redis.wait_ready(Duration::from_secs(10)).await.unwrap();
        let store = RedisStore::new(redis.clone());
        let three = RateLimitLayer::new(store.clone(), Policy::new("a", huge()))
            .policy(Policy::new(
                "b",
                Quota::per_day(nonzero!(4_000_000_000)).fixed_window(),
            ))
            .policy(Policy::new(
                "c",
                Quota::per_hour(nonzero!(1_000_000)).sliding_window(),
            ));
        let variants: Vec<(&'static str, Router)> = vec![
            ("bare", route()),
            (
                "memory",
                limited(RateLimitLayer::new(MemoryStore::new(), huge())),
            ),
            (
                "memory-no-headers",
                limited(
                    RateLimitLayer::new(MemoryStore::new(), huge()).headers(Headers {
                        draft: false,
                        legacy: false,
                    }),
                ),
            ),
            ("tower_governor", governor(false)),
            ("tower_governor-headers", governor(true)),
            (
                "redis-1-policy",
                limited(RateLimitLayer::new(store.clone(), huge())),
            ),
            (
                "redis-1-policy-uncoalesced",
                limited(RateLimitLayer::new(store.clone().coalesce(false), huge())),
            ),
            ("redis-3-policies", limited(three)),
            (
                // Every connection its own subject (its `x-client` header), so a batch writes
                // one key per request, as with many clients; the other variants share the
                // loopback peer's one key.
                "redis-per-connection",
                route().layer(
                    RateLimitLayer::new(store.clone(), huge())
                        .key(|parts: &http::request::Parts| {
                            let client = parts.headers.get("x-client")?.to_str().ok()?;
                            Some(Subject::new(client))
                        })
                        .timeout(Duration::from_secs(2))
                        .build()
                        .unwrap(),
                ),
            ),
            (
                "naive-incr-expire",
                route().layer(middleware::from_fn_with_state(redis.clone(), naive)),
            ),
        ];
        // Finalised once, as `axum::serve` does: otherwise a `Router` called directly turns its
        // handlers into routes (and applies their layers) again on every request.
        Apps {
            variants: variants
                .into_iter()
                .map(|(name, app)| (name, app.with_state(())))
                .collect(),
        }
    })
}

fn request(client: usize) -> http::Request<Body> {
    let peer = SocketAddr::from(([10, 0, (client / 250) as u8, (client % 250) as u8], 40_000));
    http::Request::get("/")
        .header("x-client", client.to_string())
        .extension(ConnectInfo(peer))
        .body(Body::empty())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut apps = apps(&rt, &server.url());
    // `RATELIMIT_BENCH_VARIANTS=bare,memory` runs only those (e.g. under a profiler).
    if let Ok(only) = std::env::var("RATELIMIT_BENCH_VARIANTS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        apps.variants.retain(|(name, _)| only.contains(name));
    }

    let mut group = c.benchmark_group("latency-c1");
    for (name, app) in &apps.variants {
        group.bench_function(BenchmarkId::new("request", name), |b| {
            b.to_async(&rt).iter(|| async {
                let res = app.clone().oneshot(request(0)).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("throughput-c64");
    for (name, app) in &apps.variants {
        group.bench_function(BenchmarkId::new("request", name), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let app = app.clone();
                async move {
                    let per = (iters as usize).div_ceil(CLIENTS);
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..CLIENTS)
                        .map(|client| {
                            let app = app.clone();
                            tokio::spawn(async move {
                                for _ in 0..per {
                                    let res = app.clone().oneshot(request(client)).await.unwrap();
                                    assert_eq!(res.status(), StatusCode::OK);
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * CLIENTS) as f64)
                }
            });
        });
    }
    group.finish();

    rt.block_on(load_run(&apps, &server));
    rt.block_on(paced_run(&apps));
}

/// One keep-alive HTTP/1.1 connection sending `GET /` until `deadline`, recording latencies.
/// With `every`, requests leave on a fixed schedule (one every `every` per connection, or at
/// once when late).
async fn connection(
    addr: SocketAddr,
    client: usize,
    deadline: Instant,
    every: Option<Duration>,
) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let req = format!("GET / HTTP/1.1\r\nhost: bench\r\nx-client: {client}\r\n\r\n");
    let mut lat = Vec::new();
    let mut line = String::new();
    // Spread the connections' schedules over one interval.
    let mut next = Instant::now()
        + every.map_or(Duration::ZERO, |e| {
            e.mul_f64(client as f64 / PACED_CONNECTIONS as f64)
        });
    while Instant::now() < deadline {
        if let Some(e) = every {
            // Tokio's timers fire up to 1 ms late: measure from the actual send, not from the
            // schedule (at this rate no request waits for another).
            tokio::time::sleep_until(next.into()).await;
            next += e;
        }
        let t = Instant::now();
        w.write_all(req.as_bytes()).await.unwrap();
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line.starts_with("HTTP/1.1") {
                assert!(line.contains(" 200 "), "{line}");
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.unwrap();
        lat.push(t.elapsed());
    }
    lat
}

fn serve(app: &Router, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    })
}

/// Requests per second of the paced run: well below what every variant sustains, so the
/// latencies are the limiter's own cost, not queueing.
const PACED_RPS: u32 = 2_000;
const PACED_CONNECTIONS: usize = 16;

/// The fixed-rate run: p50/p99 of every variant at `PACED_RPS`, and what each adds to bare.
async fn paced_run(apps: &Apps) {
    println!(
        "\npaced run: HTTP/1.1 keep-alive, {PACED_CONNECTIONS} connections, {PACED_RPS} req/s in total, 3 s per variant"
    );
    println!("| variant | req/s | p50 | p99 | p99.9 | added p50 | added p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let every = Duration::from_secs(1) * PACED_CONNECTIONS as u32 / PACED_RPS;
    let mut bare = None;
    for (name, app) in &apps.variants {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(app, listener);
        let warm = Instant::now() + Duration::from_millis(300);
        let _ = futures::future::join_all(
            (0..PACED_CONNECTIONS).map(|c| connection(addr, c, warm, Some(every))),
        )
        .await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3);
        let all = futures::future::join_all(
            (0..PACED_CONNECTIONS)
                .map(|c| tokio::spawn(connection(addr, c, deadline, Some(every)))),
        )
        .await;
        let elapsed = started.elapsed();
        server.abort();
        let mut lat: Vec<Duration> = all.into_iter().flat_map(Result::unwrap).collect();
        lat.sort();
        let n = lat.len();
        let (p50, p99, p999) = (lat[n / 2], lat[n * 99 / 100], lat[n * 999 / 1000]);
        let (b50, b99) = *bare.get_or_insert((p50, p99));
        let added = |a: Duration, b: Duration| {
            let us = a.as_secs_f64() * 1e6 - b.as_secs_f64() * 1e6;
            format!("{us:+.0} µs")
        };
        println!(
            "| {name} | {:.0} | {p50:.2?} | {p99:.2?} | {p999:.2?} | {} | {} |",
            n as f64 / elapsed.as_secs_f64(),
            added(p50, b50),
            added(p99, b99),
        );
    }
}

/// Rounds of the load run (`RATELIMIT_LOAD_ROUNDS`, default 3): every variant once per round,
/// in turn, so a change in the machine's load during the run hits every variant alike; each
/// variant's req/s is its median round. More rounds, a steadier median.
fn rounds() -> usize {
    std::env::var("RATELIMIT_LOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

fn redis_calls(s: &RedisServer) -> i64 {
    let info = s
        .cmd(&["INFO", "commandstats"])
        .as_text()
        .unwrap_or_default();
    // The commandstats of scripts count the commands they run inside, so count EVALSHA only
    // for the limiter and INCR+EXPIRE for the naive one.
    info.lines()
        .filter(|l| {
            ["evalsha", "incr", "expire"]
                .iter()
                .any(|c| l.starts_with(&format!("cmdstat_{c}:")))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

async fn load_run(apps: &Apps, server: &RedisServer) {
    let rounds = rounds();
    println!(
        "\nload run: HTTP/1.1 keep-alive, {CLIENTS} connections, {rounds} rounds of 2 s per variant, interleaved"
    );
    let n = apps.variants.len();
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut calls = vec![(0i64, 0usize); n];
    for _ in 0..rounds {
        for (i, (_, app)) in apps.variants.iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let serve = serve(app, listener);
            // Warm up, then measure.
            let warm = Instant::now() + Duration::from_millis(200);
            let _ =
                futures::future::join_all((0..CLIENTS).map(|c| connection(addr, c, warm, None)))
                    .await;
            let before = redis_calls(server);
            let started = Instant::now();
            let deadline = started + Duration::from_secs(2);
            let all = futures::future::join_all(
                (0..CLIENTS).map(|c| tokio::spawn(connection(addr, c, deadline, None))),
            )
            .await;
            let elapsed = started.elapsed();
            let after = redis_calls(server);
            serve.abort();
            let round: Vec<Duration> = all.into_iter().flat_map(Result::unwrap).collect();
            rps[i].push(round.len() as f64 / elapsed.as_secs_f64());
            calls[i].0 += after - before;
            calls[i].1 += round.len();
            lat[i].extend(round);
        }
    }
    println!(
        "| variant | req/s (median) | rounds | ratio to bare | p50 | p99 | Redis calls/request |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    // The mean of the two middle values for an even count.
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    // Ratios of two variants within each round (the same machine load), then their median:
    // steadier than a ratio of medians taken from different rounds.
    let pairs = [
        ("memory", "tower_governor"),
        ("memory-no-headers", "tower_governor"),
        ("memory", "tower_governor-headers"),
        ("redis-1-policy", "bare"),
        ("redis-1-policy", "naive-incr-expire"),
    ];
    let index = |name: &str| apps.variants.iter().position(|(n, _)| *n == name);
    for (a, b) in pairs {
        let (Some(a_i), Some(b_i)) = (index(a), index(b)) else {
            continue;
        };
        let mut per_round: Vec<f64> = rps[a_i]
            .iter()
            .zip(&rps[b_i])
            .filter(|(_, y)| **y > 0.0)
            .map(|(x, y)| x / y)
            .collect();
        if per_round.is_empty() {
            continue;
        }
        let shown: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{a} / {b}: {:.2}x median of rounds ({})",
            median(&mut per_round),
            shown.join(", ")
        );
    }
    let bare = median(&mut rps[0].clone());
    for (i, (name, _)) in apps.variants.iter().enumerate() {
        let rounds: Vec<String> = rps[i].iter().map(|r| format!("{r:.0}")).collect();
        let m = median(&mut rps[i]);
        lat[i].sort();
        let l = &lat[i];
        println!(
            "| {name} | {m:.0} | {} | {:.2} | {:.2?} | {:.2?} | {:.2} |",
            rounds.join(" / "),
            m / bare,
            l[l.len() / 2],
            l[l.len() * 99 / 100],
            calls[i].0 as f64 / calls[i].1 as f64,
        );
    }
}

mod group {
    #![allow(missing_docs)]
    use super::*;
    criterion_group! {
        name = benches;
        config = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        targets = bench
    }
}

fn main() {
    group::benches();
    Criterion::default().configure_from_args().final_summary();
}
