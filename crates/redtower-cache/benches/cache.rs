//! Response cache benchmarks: a cached route (hit) against the same handler without the layer,
//! measured in the same run. Redis comes from `REDIS_URL` or a `redis-server` started here.
//!
//! Two parts:
//!
//! * criterion groups (in-process `oneshot`, batches of concurrent requests) and the envelope
//!   codec;
//! * a load run over real HTTP/1.1 keep-alive connections on loopback (an axum server, 64
//!   connections, 8 s per variant in 5 interleaved rounds, like `wrk -c64`): requests per
//!   second, p50/p99 latency, the ratio to the uncached route (median of the rounds), Redis
//!   commands per request (`INFO commandstats`) and CPU time per request, of this process
//!   (server and load generator) and of redis-server (`INFO cpu`). The 50 ms handler runs at
//!   1 and at 64 connections.
//!
//! Run with: `cargo bench -p redtower-cache --bench cache` (everything), `... -- load` (only
//! the load run), or a criterion filter such as `... -- envelope` (no load run).
#![allow(missing_docs)]

use std::{
    hint::black_box,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::Request, routing::get};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use redtower_cache::{Cache, MemoryStore, RedisStore, ResponseCacheLayer, envelope::Entry};
use redtower_client::{
    Redis, RedisConfig,
    fred::{interfaces::ClientLike, types::InfoKind},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const BATCH: usize = 32;

fn json_1kb() -> String {
    let items: Vec<String> = (0..24)
        .map(|i| format!("{{\"id\":{i:03},\"name\":\"product {i:03}\",\"price\":12.5}}"))
        .collect();
    let mut s = format!("[{}]", items.join(","));
    while s.len() < 1024 {
        s.push(' ');
    }
    s
}

fn router(layer: Option<ResponseCacheLayer>, delay: Duration) -> Router {
    let body = json_1kb();
    let handler = get(move || {
        let body = body.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            ([(http::header::CONTENT_TYPE, "application/json")], body)
        }
    });
    let handler = match layer {
        Some(layer) => handler.layer(layer),
        None => handler,
    };
    Router::new().route("/products/featured", handler)
}

async fn batch(app: &Router) {
    let requests = (0..BATCH).map(|_| {
        let app = app.clone();
        async move {
            let req = Request::get("/products/featured")
                .body(Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            black_box(resp.into_body().collect().await.unwrap().to_bytes());
        }
    });
    futures::future::join_all(requests).await;
}

/// The runtime, Redis and the caches shared by both parts of the bench.
struct Setup {
    rt: tokio::runtime::Runtime,
    _server: Option<redtower_testkit::RedisServer>,
    redis: Redis,
}

impl Setup {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, url) = {
            let _guard = rt.enter();
            match std::env::var("REDIS_URL") {
                Ok(url) => (None, url),
                Err(_) => {
                    let server = redtower_testkit::RedisServer::start();
                    let url = server.url();
                    (Some(server), url)
                }
            }
        };
        let redis = rt.block_on(async {
            let redis = Redis::new(
                RedisConfig::from_url(&url)
                    .unwrap()
                    .key_prefix(format!("bench-{:x}", rand::random::<u32>())),
            )
            .unwrap();
            redis.wait_ready(Duration::from_secs(10)).await.unwrap();
            redis
        });
        Self {
            rt,
            _server: server,
            redis,
        }
    }

    /// Every hit goes to Redis (concurrent hits coalesced into one `MGET`, the default).
    fn redis_cache(&self) -> Cache {
        Cache::new(RedisStore::new(self.redis.clone()))
    }

    /// Every hit is its own `GET` (coalescing off).
    fn redis_cache_single(&self) -> Cache {
        Cache::new(RedisStore::new(self.redis.clone()).coalesce_reads(false))
    }

    /// Hits are served by the in-process L1 (Redis behind it).
    fn l1_cache(&self) -> Cache {
        Cache::builder(RedisStore::new(self.redis.clone()))
            .l1(1000, Duration::from_secs(1))
            .build()
    }

    /// CPU seconds redis-server has used so far (`INFO cpu`: user + sys).
    fn redis_cpu(&self) -> f64 {
        let info: String = self
            .rt
            .block_on(self.redis.client().info(Some(InfoKind::Cpu)))
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
            .sum()
    }

    /// Redis commands run so far (`INFO commandstats`, without `INFO` itself).
    fn redis_commands(&self) -> u64 {
        let info: String = self
            .rt
            .block_on(self.redis.client().info(Some(InfoKind::CommandStats)))
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

fn layer(cache: Cache) -> ResponseCacheLayer {
    ResponseCacheLayer::new(cache, Duration::from_secs(300))
}

fn benches(c: &mut Criterion, setup: &Setup) {
    let rt = &setup.rt;
    let mut g = c.benchmark_group("trivial_handler_1kb");
    g.throughput(Throughput::Elements(BATCH as u64));
    let routes = [
        ("uncached", router(None, Duration::ZERO)),
        (
            "hit_l1",
            router(Some(layer(setup.l1_cache())), Duration::ZERO),
        ),
        (
            "hit_redis",
            router(Some(layer(setup.redis_cache())), Duration::ZERO),
        ),
        (
            "hit_memory",
            router(Some(layer(Cache::new(MemoryStore::new()))), Duration::ZERO),
        ),
    ];
    for (name, app) in &routes {
        rt.block_on(batch(app));
        g.bench_with_input(BenchmarkId::new("get", name), app, |b, app| {
            b.to_async(rt).iter(|| batch(app));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("handler_50ms_1kb");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    let slow = Duration::from_millis(50);
    let routes = [
        ("uncached", router(None, slow)),
        ("hit_redis", router(Some(layer(setup.redis_cache())), slow)),
    ];
    for (name, app) in &routes {
        rt.block_on(batch(app));
        g.bench_with_input(BenchmarkId::new("get", name), app, |b, app| {
            b.to_async(rt).iter(|| batch(app));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("envelope");
    let entry = Entry {
        flags: 0,
        status: StatusCode::OK,
        stored_at: 1,
        fresh_until: 2,
        stale_until: 3,
        error_until: 4,
        key_digest: [0; 32],
        tags: Vec::new(),
        headers: {
            let mut h = HeaderMap::new();
            h.insert("content-type", "application/json".parse().unwrap());
            h
        },
        body: Bytes::from(vec![b'x'; 128 * 1024]),
    };
    let bytes = entry.encode().unwrap();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decode_128k", |b| {
        b.iter(|| Entry::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("encode_128k", |b| {
        b.iter(|| black_box(&entry).encode().unwrap())
    });
    g.finish();
}

const REQUEST: &[u8] = b"GET /products/featured HTTP/1.1\r\nhost: bench\r\n\r\n";
/// Measured time per variant, split into interleaved rounds.
const LOAD_TIME: Duration = Duration::from_secs(8);
const ROUNDS: u32 = 5;
const WARM_UP: Duration = Duration::from_millis(300);

/// What one keep-alive connection saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    /// Responses without the expected `x-cache` value (a cached variant that missed).
    unexpected: u64,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive HTTP/1.1 connection sending `GET /products/featured` until `deadline`.
/// A lean client (one reused buffer, no per-response allocation), so the client's share of
/// the two cores stays small and equal across variants.
async fn connection(addr: SocketAddr, deadline: Instant, expect: Option<&'static [u8]>) -> Seen {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut seen = Seen::default();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    while Instant::now() < deadline {
        let t = Instant::now();
        stream.write_all(REQUEST).await.unwrap();
        buf.clear();
        let (head, len) = loop {
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                panic!("connection closed");
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = &buf[..end];
                assert!(
                    head.starts_with(b"HTTP/1.1 200 "),
                    "{:?}",
                    String::from_utf8_lossy(head)
                );
                let at = find(head, b"content-length: ").expect("content-length") + 16;
                let digits = head[at..].iter().take_while(|b| b.is_ascii_digit());
                let len = digits.fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
                if let Some(x) = expect
                    && find(head, x).is_none()
                {
                    seen.unexpected += 1;
                }
                break (end + 4, len);
            }
        };
        while buf.len() < head + len {
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                panic!("connection closed");
            }
        }
        seen.latencies.push(t.elapsed());
    }
    seen
}

/// CPU seconds this process (server, cache and load generator) has used so far.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

struct Measured {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    commands: u64,
    app_cpu: f64,
    redis_cpu: f64,
    unexpected: u64,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn add(&mut self, other: Measured) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.commands += other.commands;
        self.app_cpu += other.app_cpu;
        self.redis_cpu += other.redis_cpu;
        self.unexpected += other.unexpected;
    }
}

/// Serves `app` on loopback and drives it with `clients` connections for `time`.
fn measure(
    setup: &Setup,
    app: &Router,
    clients: usize,
    expect: Option<&'static [u8]>,
    time: Duration,
) -> Measured {
    let rt = &setup.rt;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.clone();
    let serve = rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let run = |time: Duration| {
        let deadline = Instant::now() + time;
        rt.block_on(async {
            let tasks: Vec<_> = (0..clients)
                .map(|_| tokio::spawn(connection(addr, deadline, expect)))
                .collect();
            let mut all = Vec::with_capacity(clients);
            for t in tasks {
                all.push(t.await.unwrap());
            }
            all
        })
    };
    run(WARM_UP);
    let before = setup.redis_commands();
    let (cpu, redis_cpu) = (own_cpu(), setup.redis_cpu());
    let started = Instant::now();
    let seen = run(time);
    let elapsed = started.elapsed();
    let (cpu, redis_cpu) = (own_cpu() - cpu, setup.redis_cpu() - redis_cpu);
    let after = setup.redis_commands();
    serve.abort();
    let unexpected = seen.iter().map(|s| s.unexpected).sum();
    let latencies: Vec<Duration> = seen.into_iter().flat_map(|s| s.latencies).collect();
    Measured {
        requests: latencies.len(),
        elapsed,
        latencies,
        commands: after.saturating_sub(before),
        app_cpu: cpu,
        redis_cpu,
        unexpected,
    }
}

/// A load-run variant: name, app, the `x-cache` value every response must carry.
type Variant = (&'static str, Router, Option<&'static [u8]>);

fn load_run(setup: &Setup) {
    let hit: Option<&'static [u8]> = Some(b"x-cache: HIT");
    let miss: Option<&'static [u8]> = None;
    let slow = Duration::from_millis(50);
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload run: HTTP/1.1 keep-alive on loopback, {} s per variant in {ROUNDS} interleaved rounds; load average before: {}",
        LOAD_TIME.as_secs(),
        uptime
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| variant | connections | req/s | ratio (median of rounds) | p50 | p99 | Redis cmds/req | app CPU µs/req | Redis CPU µs/req | not HIT |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let groups: [(&str, usize, Vec<Variant>); 3] = [
        (
            "trivial",
            64,
            vec![
                ("uncached (baseline)", router(None, Duration::ZERO), miss),
                (
                    "hit_l1",
                    router(Some(layer(setup.l1_cache())), Duration::ZERO),
                    hit,
                ),
                (
                    "hit_memory",
                    router(Some(layer(Cache::new(MemoryStore::new()))), Duration::ZERO),
                    hit,
                ),
                (
                    "hit_redis",
                    router(Some(layer(setup.redis_cache())), Duration::ZERO),
                    hit,
                ),
                (
                    "hit_redis, one GET each",
                    router(Some(layer(setup.redis_cache_single())), Duration::ZERO),
                    hit,
                ),
            ],
        ),
        (
            "50ms",
            1,
            vec![
                ("uncached (baseline)", router(None, slow), miss),
                (
                    "hit_redis",
                    router(Some(layer(setup.redis_cache())), slow),
                    hit,
                ),
            ],
        ),
        (
            "50ms",
            64,
            vec![
                ("uncached (baseline)", router(None, slow), miss),
                (
                    "hit_redis",
                    router(Some(layer(setup.redis_cache())), slow),
                    hit,
                ),
            ],
        ),
    ];
    for (group, clients, variants) in &groups {
        // Rounds interleave the variants, so a change in the machine's load hits all of them;
        // the ratio is the median of the per-round ratios to the baseline.
        let mut total: Vec<Option<Measured>> = variants.iter().map(|_| None).collect();
        let mut ratios: Vec<Vec<f64>> = variants.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            let mut base = None;
            for (i, (_, app, expect)) in variants.iter().enumerate() {
                let m = measure(setup, app, *clients, *expect, LOAD_TIME / ROUNDS);
                let b = *base.get_or_insert(m.rps());
                ratios[i].push(m.rps() / b);
                match &mut total[i] {
                    Some(t) => t.add(m),
                    None => total[i] = Some(m),
                }
            }
        }
        for (i, (name, _, _)) in variants.iter().enumerate() {
            let Some(mut m) = total[i].take() else {
                continue;
            };
            let r = &mut ratios[i];
            r.sort_by(f64::total_cmp);
            let ratio = r[r.len() / 2];
            m.latencies.sort_unstable();
            let n = m.latencies.len().max(1);
            let per = |x: f64| x * 1e6 / n as f64;
            println!(
                "| {group} {name} | {clients} | {:.0} | {ratio:.2}x | {:.0?} | {:.0?} | {:.2} | {:.1} | {:.1} | {} |",
                m.rps(),
                m.latencies.get(n / 2).copied().unwrap_or_default(),
                m.latencies.get(n * 99 / 100).copied().unwrap_or_default(),
                m.commands as f64 / n as f64,
                per(m.app_cpu),
                per(m.redis_cpu),
                m.unexpected,
            );
        }
    }
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average after: {}",
        uptime
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let load_only = filters.iter().any(|f| f == "load");
    let setup = Setup::new();
    if !load_only {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .configure_from_args();
        benches(&mut c, &setup);
        c.final_summary();
    }
    if filters.is_empty() || load_only {
        load_run(&setup);
    }
}
