//! Load harness: many SSE connections on one instance, publishes at a fixed rate, every event
//! checked, publish-to-delivery latency and server memory per idle connection measured.
//!
//! ```text
//! cargo bench -p redtower-pubsub --bench load
//! LOAD_CONNS=10000 LOAD_CHANNELS=10 LOAD_RATE=100 LOAD_SECS=10 LOAD_BACKEND=redis|memory
//! ```
//!
//! The server (this process) and the clients (a child process running this binary with
//! `LOAD_ROLE=client`) are separate, so the server's resident memory is not mixed with the
//! clients'. Latency is measured by the clients against the publish timestamp in each event.

#![allow(missing_docs)]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::Router;
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{MemoryStore, PubSub, RedisStore, SseEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn main() {
    if std::env::var("LOAD_ROLE").as_deref() == Ok("client") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
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

async fn server() {
    let conns = env("LOAD_CONNS", 10_000);
    let channels = env("LOAD_CHANNELS", 10);
    let rate = env("LOAD_RATE", 100);
    let secs = env("LOAD_SECS", 10);
    let backend = std::env::var("LOAD_BACKEND").unwrap_or_else(|_| "redis".into());

    let _redis_server;
    let pubsub = if backend == "memory" {
        PubSub::new(MemoryStore::new())
    } else {
        let server = redtower_testkit::RedisServer::start();
        let redis = Redis::new(RedisConfig::from_url(&server.url()).unwrap()).unwrap();
        redis.wait_ready(Duration::from_secs(10)).await.unwrap();
        _redis_server = server;
        PubSub::new(RedisStore::new(redis).unwrap())
    };
    let sse = SseEndpoint::new(pubsub.clone());
    let app = Router::new().route("/events/{channel}", sse.method_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

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

    // Publish at the rate, round robin over the channels.
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut publish_us = Vec::with_capacity(total as usize);
    for seq in 0..total {
        tick.tick().await;
        let ch = format!("c{}", seq % channels);
        let t0 = Instant::now();
        pubsub
            .publish(&ch, &serde_json::json!({ "t": now_micros(), "seq": seq }))
            .await
            .unwrap();
        publish_us.push(t0.elapsed().as_micros() as u64);
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let rss_busy = rss_kib();
    writeln!(stdin, "DONE {}", total / channels).unwrap();
    let result = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    let _ = child.wait();
    publish_us.sort_unstable();
    let p = |q: f64| publish_us[((publish_us.len() as f64 - 1.0) * q) as usize];
    println!("backend={backend} conns={conns} channels={channels} rate={rate}/s secs={secs}");
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
}

async fn client() {
    let addr = std::env::var("LOAD_ADDR").unwrap();
    let conns = env("LOAD_CONNS", 10_000);
    let channels = env("LOAD_CHANNELS", 10);
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let counts: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..conns).map(|_| Default::default()).collect());
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..conns {
        let addr = addr.clone();
        let latencies = latencies.clone();
        let counts = counts.clone();
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let req = format!(
                "GET /events/c{} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
                i % channels
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut opened = Some(opened_tx);
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 2048];
            let mut local = Vec::new();
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(tx) = opened.take() {
                    let _ = tx.send(());
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    if let Some(data) = line.strip_prefix(b"data: {\"seq\":") {
                        // {"seq":N,"t":T}: read T without a JSON parser, to keep the clients light.
                        let t = data
                            .windows(4)
                            .position(|w| w == b"\"t\":")
                            .map(|at| &data[at + 4..])
                            .map(|rest| {
                                rest.iter()
                                    .take_while(|b| b.is_ascii_digit())
                                    .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
                            });
                        {
                            if let Some(t) = t {
                                local.push(now_micros().saturating_sub(t));
                                counts[i as usize]
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if local.len() >= 16 {
                                    latencies.lock().unwrap().append(&mut local);
                                }
                            }
                        }
                    }
                }
                if !local.is_empty() {
                    latencies.lock().unwrap().append(&mut local);
                }
            }
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
        let done = counts
            .iter()
            .all(|c| c.load(std::sync::atomic::Ordering::Relaxed) >= expected);
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered: u64 = counts
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let p = |q: f64| {
        if l.is_empty() {
            0
        } else {
            l[((l.len() as f64 - 1.0) * q) as usize]
        }
    };
    println!(
        "{delivered}/{} events delivered; publish-to-delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        expected * conns,
        p(0.5) as f64 / 1000.0,
        p(0.99) as f64 / 1000.0,
        p(1.0) as f64 / 1000.0
    );
    std::io::stdout().flush().unwrap();
}
