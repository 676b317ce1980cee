//! Load harness: many SSE connections on one instance, publishes at a fixed rate, every event
//! checked, publish-to-delivery latency, CPU per delivered event and server memory per idle
//! connection measured.
//!
//! ```text
//! cargo bench -p redtower-pubsub --bench load
//! LOAD_CONNS=10000 LOAD_CHANNELS=10 LOAD_RATE=100 LOAD_SECS=10 LOAD_BACKEND=redis|memory
//! LOAD_SERVER=axum|http1   # axum::serve (default) or a hyper HTTP/1-only server
//! LOAD_ROUTE=sse|bare      # bare: a body that sends one comment and then nothing (hyper's floor)
//! ```
//!
//! The server (this process) and the clients (a child process running this binary with
//! `LOAD_ROLE=client`) are separate, so the server's resident memory and CPU time are not
//! mixed with the clients'. Latency is measured by the clients against the publish timestamp
//! in each event. The clients are kept cheap (one thread, no allocation per line or event, a
//! lock-free histogram) because they share the machine's cores with the server.
//!
//! Besides the human-readable lines, the run prints one machine-readable line last:
//! `RESULT {json}` (see `Summary` below for the fields).

#![allow(missing_docs)]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{Router, body::Body};
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{MemoryStore, PubSub, RedisStore, SseEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User + system CPU time of this process, in seconds.
fn cpu_secs() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: u64 = rest.get(11)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    ticks as f64 / 100.0 // USER_HZ
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if std::env::var("LOAD_ROLE").as_deref() == Ok("client") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server());
}

/// `axum::serve`, with `TCP_NODELAY` (an SSE server wants every event on the wire at once).
async fn serve_axum(listener: tokio::net::TcpListener, app: Router) {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.unwrap();
}

/// A leaner server for many long-lived streams: hyper's HTTP/1 connection directly (no
/// HTTP/2 detection, no upgrade support, no graceful-shutdown watch per connection).
async fn serve_http1(listener: tokio::net::TcpListener, app: Router) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.max_buf_size(8192).writev(true);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http1.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn server() {
    let conns = env("LOAD_CONNS", 10_000);
    let channels = env("LOAD_CHANNELS", 10);
    let rate = env("LOAD_RATE", 100);
    let secs = env("LOAD_SECS", 10);
    let backend = env_str("LOAD_BACKEND", "redis");
    let server_kind = env_str("LOAD_SERVER", "axum");
    let route = env_str("LOAD_ROUTE", "sse");
    let load_start = loadavg();

    let _redis_server;
    let mut redis_store = None;
    let pubsub = if backend == "memory" {
        PubSub::new(MemoryStore::new())
    } else {
        let server = redtower_testkit::RedisServer::start();
        let redis = Redis::new(RedisConfig::from_url(&server.url()).unwrap()).unwrap();
        redis.wait_ready(Duration::from_secs(10)).await.unwrap();
        _redis_server = server;
        let store = RedisStore::new(redis);
        redis_store = Some(store.clone());
        PubSub::new(store)
    };
    // The harness holds `conns` streams itself: room for all of them.
    let sse = SseEndpoint::new(pubsub.clone())
        .max_connections(usize::try_from(conns).unwrap_or(usize::MAX));
    let app = if route == "bare" {
        Router::new().route(
            "/events/{channel}",
            axum::routing::get(|| async {
                let first = futures::stream::once(async {
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b": ok\n\n"))
                });
                Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
            }),
        )
    } else {
        Router::new().route("/events/{channel}", sse.method_router())
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if server_kind == "http1" {
        tokio::spawn(serve_http1(listener, app));
    } else {
        tokio::spawn(serve_axum(listener, app));
    }

    // Warm up allocator and runtime with one connection's worth of work.
    pubsub.publish("warmup", &0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kib();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("LOAD_ROLE", "client")
        .env("LOAD_ADDR", addr.to_string())
        .env("LOAD_CONNS", conns.to_string())
        .env("LOAD_CHANNELS", channels.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let line = lines.next().unwrap().unwrap();
        (line, lines)
    })
    .await
    .unwrap();
    let (line, mut lines) = ready;
    assert!(line.starts_with("READY"), "{line}");
    let connect_secs: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_kib();
    let per_conn = (rss_idle.saturating_sub(rss_before)) as f64 * 1024.0 / conns as f64;

    // Publish at the rate, round robin over the channels. Each publish is its own task, as
    // in an app where requests publish, so a slow publish does not lower the offered rate.
    let total = if route == "bare" { 0 } else { rate * secs };
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_start = cpu_secs();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for seq in 0..total {
        tick.tick().await;
        let ch = format!("c{}", seq % channels);
        let pubsub = pubsub.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            pubsub
                .publish(&ch, &serde_json::json!({ "t": now_micros(), "seq": seq }))
                .await
                .unwrap();
            t0.elapsed().as_micros() as u64
        }));
    }
    let mut publish_us = Vec::with_capacity(total as usize);
    for task in tasks {
        publish_us.push(task.await.unwrap());
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let rss_busy = rss_kib();
    writeln!(stdin, "DONE {}", total / channels).unwrap();
    let (result, client_line) = tokio::task::spawn_blocking(move || {
        let human = lines.next().unwrap().unwrap();
        let machine = lines.next().unwrap().unwrap();
        (human, machine)
    })
    .await
    .unwrap();
    // The server's CPU time while the events were published and delivered.
    let server_cpu = cpu_secs() - cpu_start;
    let _ = child.wait();
    let load_end = loadavg();
    publish_us.sort_unstable();
    let p = |q: f64| {
        if publish_us.is_empty() {
            0
        } else {
            publish_us[((publish_us.len() as f64 - 1.0) * q) as usize]
        }
    };
    // CLIENT <delivered> <expected> <p50 us> <p99 us> <max us> <client cpu s>
    let c: Vec<f64> = client_line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let delivered = c.first().copied().unwrap_or(0.0);
    let per_delivery_us = if delivered > 0.0 {
        server_cpu * 1e6 / delivered
    } else {
        0.0
    };
    println!(
        "backend={backend} server={server_kind} route={route} conns={conns} channels={channels} rate={rate}/s secs={secs}"
    );
    println!("load average: {load_start} before, {load_end} after");
    println!("connect: all {conns} streams open in {connect_secs:.2} s");
    println!(
        "server RSS: {rss_before} KiB before, {rss_idle} KiB with idle streams, {rss_busy} KiB after publishing"
    );
    println!("memory per idle connection: {:.1} KiB", per_conn / 1024.0);
    println!(
        "publish call: p50 {} us, p99 {} us, max {} us; {total} publishes in {publish_secs:.2} s",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    println!("delivery: {result}");
    // The hub's repairs: fred's message buffer overflowing shows as lagged messages.
    let hub = redis_store.map(|s| s.stats()).unwrap_or_default();
    if backend != "memory" {
        println!(
            "redis hub: {} lagged messages, {} repaired events, {} lost",
            hub.lagged_messages, hub.repaired_events, hub.lost
        );
    }
    println!(
        "cpu: server {server_cpu:.2} s ({per_delivery_us:.2} us per delivered event), client {:.2} s",
        c.get(5).copied().unwrap_or(0.0)
    );
    println!(
        "RESULT {}",
        serde_json::json!({
            "backend": backend,
            "server": server_kind,
            "route": route,
            "conns": conns,
            "channels": channels,
            "rate": rate,
            "secs": secs,
            "loadavg_before": load_start,
            "loadavg_after": load_end,
            "connect_secs": connect_secs,
            "rss_before_kib": rss_before,
            "rss_idle_kib": rss_idle,
            "rss_busy_kib": rss_busy,
            "memory_per_idle_conn_kib": (per_conn / 1024.0 * 10.0).round() / 10.0,
            "publishes": total,
            "publish_secs": publish_secs,
            "publish_p50_us": p(0.5),
            "publish_p99_us": p(0.99),
            "publish_max_us": p(1.0),
            "delivered": delivered as u64,
            "expected": c.get(1).copied().unwrap_or(0.0) as u64,
            "latency_p50_ms": c.get(2).copied().unwrap_or(0.0) / 1000.0,
            "latency_p99_ms": c.get(3).copied().unwrap_or(0.0) / 1000.0,
            "latency_max_ms": c.get(4).copied().unwrap_or(0.0) / 1000.0,
            "server_cpu_secs": server_cpu,
            "server_cpu_us_per_delivery": per_delivery_us,
            "client_cpu_secs": c.get(5).copied().unwrap_or(0.0),
            "hub_lagged_messages": hub.lagged_messages,
            "hub_repaired_events": hub.repaired_events,
            "hub_lost": hub.lost,
        })
    );
}

/// Latency histogram: 10 us buckets up to 5 s, then one overflow bucket.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 500_000;

struct Stats {
    hist: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Stats {
    fn record(&self, us: u64) {
        let b = usize::try_from(us / BUCKET_US)
            .unwrap_or(BUCKETS)
            .min(BUCKETS);
        self.hist[b].fetch_add(1, Relaxed);
        self.max.fetch_max(us, Relaxed);
    }

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.hist.iter().map(|c| c.load(Relaxed)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 - 1.0) * q) as u64;
        let mut seen = 0;
        for (b, c) in self.hist.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen > rank {
                return (b as u64 * BUCKET_US + BUCKET_US / 2).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }
}

/// Reads one connection: counts the events and records their latency, without allocating
/// per line (lines are scanned in the read buffer; only a line split across reads is
/// carried over).
async fn read_conn(
    mut stream: tokio::net::TcpStream,
    opened: tokio::sync::oneshot::Sender<()>,
    count: &AtomicU64,
    stats: &Stats,
) {
    let mut opened = Some(opened);
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(tx) = opened.take() {
            let _ = tx.send(());
        }
        filled += n;
        let mut start = 0;
        while let Some(len) = buf[start..filled].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + len];
            start += len + 1;
            // data: {"seq":N,"t":T}: read T without a JSON parser.
            let Some(data) = line.strip_prefix(b"data: {\"seq\":") else {
                continue;
            };
            let Some(at) = data.windows(4).position(|w| w == b"\"t\":") else {
                continue;
            };
            let t = data[at + 4..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
            stats.record(now_micros().saturating_sub(t));
            count.fetch_add(1, Relaxed);
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
}

async fn client() {
    let addr = std::env::var("LOAD_ADDR").unwrap();
    let conns = env("LOAD_CONNS", 10_000);
    let channels = env("LOAD_CHANNELS", 10);
    let stats = Arc::new(Stats {
        hist: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        max: AtomicU64::new(0),
    });
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..conns).map(|_| Default::default()).collect());
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..conns {
        let addr = addr.clone();
        let stats = stats.clone();
        let counts = counts.clone();
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let req = format!(
                "GET /events/c{} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
                i % channels
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            read_conn(stream, opened_tx, &counts[i as usize], &stats).await;
        });
        batch.push(opened_rx);
        if batch.len() == 500 {
            for rx in batch.drain(..) {
                let _ = rx.await;
            }
        }
    }
    for rx in batch.drain(..) {
        let _ = rx.await;
    }
    let cpu_ready = cpu_secs();
    println!("READY {:.2}", started.elapsed().as_secs_f64());
    std::io::stdout().flush().unwrap();

    let expected: u64 = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = counts.iter().all(|c| c.load(Relaxed) >= expected);
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered: u64 = counts.iter().map(|c| c.load(Relaxed)).sum();
    let (p50, p99, max) = (
        stats.quantile(0.5),
        stats.quantile(0.99),
        stats.max.load(Relaxed),
    );
    println!(
        "{delivered}/{} events delivered; publish-to-delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        expected * conns,
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        max as f64 / 1000.0
    );
    // The client's CPU time from all streams open to all events read, for the server to print.
    println!(
        "CLIENT {delivered} {} {p50} {p99} {max} {:.2}",
        expected * conns,
        cpu_secs() - cpu_ready
    );
    std::io::stdout().flush().unwrap();
}
