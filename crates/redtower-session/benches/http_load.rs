//! HTTP load run (see BENCHMARKS.md): each variant of `common` served by axum on a loopback
//! port, driven by N keep-alive connections (a minimal HTTP/1.1 client on its own thread) for
//! a few seconds. Reports requests/s, p50/p99 latency, Redis commands per request and Redis
//! CPU per call from `INFO commandstats`, Redis and server CPU per request.
//!
//! ```text
//! cargo bench -p redtower-session --bench http_load
//! HTTP_LOAD_SECS=5 HTTP_LOAD_CONNS=1,64 HTTP_LOAD_ROUNDS=3 HTTP_LOAD_ONLY=redtower_redis cargo bench ...
//! ```
//!
//! With several rounds the variants run interleaved (A B C D A B C D ...), so a change in the
//! machine's load hits them alike; ratios are reported per round and as the median.

#![allow(missing_docs)]

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use redtower_testkit::RedisServer;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

const SERVER_THREAD: &str = "srv-worker";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One HTTP/1.1 exchange on a keep-alive connection: (status, `set-cookie`).
async fn exchange(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> std::io::Result<(u16, Option<String>)> {
    conn.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(std::io::Error::other)?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let mut length = 0usize;
        let mut cookie = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(std::io::Error::other)?;
            } else if name.eq_ignore_ascii_case("set-cookie") {
                cookie = Some(value.to_owned());
            }
        }
        let need = end + 4 + length;
        while buf.len() < need {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, cookie));
    }
}

fn request(method: &str, path: &str, cookie: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    if !cookie.is_empty() {
        r.push_str(&format!("cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        r.push_str("content-length: 0\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

async fn login(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let (status, cookie) = exchange(&mut conn, &mut buf, &request("POST", "/login", ""))
        .await
        .expect("login");
    assert!(status < 300, "login: {status}");
    common::cookie_pair(&cookie.expect("set-cookie"))
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> Duration {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the command name: utime and stime are the 12th and
        // 13th of them.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += (ut + st) / tick;
    }
    Duration::from_secs_f64(total)
}

struct RedisStats {
    /// command -> (calls, usec)
    commands: BTreeMap<String, (u64, u64)>,
    cpu: f64,
}

fn redis_stats(server: &RedisServer) -> RedisStats {
    let text = server
        .cmd(&["INFO", "commandstats"])
        .as_text()
        .unwrap_or_default();
    let mut commands = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let field = |key: &str| -> u64 {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        commands.insert(name.to_owned(), (field("calls="), field("usec=")));
    }
    let cpu_text = server.cmd(&["INFO", "cpu"]).as_text().unwrap_or_default();
    let cpu = cpu_text
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| {
            l.split_once(':')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .sum();
    RedisStats { commands, cpu }
}

struct Outcome {
    round: usize,
    name: &'static str,
    conns: usize,
    requests: u64,
    errors: u64,
    secs: f64,
    p50_us: u32,
    p99_us: u32,
    /// command -> (calls, usec) during the window, without the stats commands themselves
    commands: BTreeMap<String, (u64, u64)>,
    redis_cpu: f64,
    server_cpu: f64,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    round: usize,
    name: &'static str,
    addr: SocketAddr,
    cookies: Vec<String>,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    redis: &RedisServer,
) -> Outcome {
    let start = Instant::now();
    let t0 = start + warmup;
    let t1 = t0 + measure;
    let mut tasks = Vec::new();
    for cookie in cookies.iter().take(conns) {
        let req = request("GET", "/read", cookie);
        tasks.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            conn.set_nodelay(true).expect("nodelay");
            let mut buf = Vec::with_capacity(1024);
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= t1 {
                    break;
                }
                let status = exchange(&mut conn, &mut buf, &req).await.map(|r| r.0);
                let done = Instant::now();
                if sent >= t0 && done <= t1 {
                    match status {
                        Ok(200) => lat.push(
                            u32::try_from(done.duration_since(sent).as_micros())
                                .unwrap_or(u32::MAX),
                        ),
                        _ => errors += 1,
                    }
                }
                if status.is_err() {
                    break;
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep_until(t0.into()).await;
    let before = redis_stats(redis);
    let cpu_before = thread_cpu(SERVER_THREAD);
    let w0 = Instant::now();
    tokio::time::sleep_until(t1.into()).await;
    let after = redis_stats(redis);
    let cpu_after = thread_cpu(SERVER_THREAD);
    let secs = w0.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("driver task");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    let mut commands = BTreeMap::new();
    for (cmd, (calls, usec)) in &after.commands {
        if cmd == "info" || cmd == "config|resetstat" {
            continue;
        }
        let (c0, u0) = before.commands.get(cmd).copied().unwrap_or((0, 0));
        if *calls > c0 {
            commands.insert(cmd.clone(), (calls - c0, usec - u0));
        }
    }
    Outcome {
        round,
        name,
        conns,
        requests: lat.len() as u64,
        errors,
        secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        commands,
        redis_cpu: after.cpu - before.cpu,
        server_cpu: (cpu_after - cpu_before).as_secs_f64(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let secs: f64 = env_or("HTTP_LOAD_SECS", 3.0);
    let warmup: f64 = env_or("HTTP_LOAD_WARMUP", 1.0);
    let conns: Vec<usize> = std::env::var("HTTP_LOAD_CONNS")
        .unwrap_or_else(|_| "64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = env_or("HTTP_LOAD_ROUNDS", 1);
    let only = std::env::var("HTTP_LOAD_ONLY").unwrap_or_default();
    let selected = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);

    let redis = RedisServer::start();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    let url = redis.url();
    let servers: Vec<(&'static str, SocketAddr)> = server_rt.block_on(async {
        let mut out = Vec::new();
        for (name, app) in common::apps(&url).await {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                axum::serve(listener, app).await.expect("serve");
            });
            out.push((name, addr));
        }
        out
    });

    println!(
        "http_load: {secs} s per variant after {warmup} s warm-up, connections {conns:?}, {rounds} round(s), load average before: {}",
        loadavg()
    );
    let mut results = Vec::new();
    for &n in &conns {
        for (round, &(name, addr)) in (1..=rounds).flat_map(|r| servers.iter().map(move |s| (r, s)))
        {
            if !selected(name) {
                continue;
            }
            let out = client_rt.block_on(async {
                // One session per connection (each its own user's browser).
                let mut cookies = Vec::with_capacity(n);
                for _ in 0..n {
                    cookies.push(if name == common::VARIANTS[0] {
                        String::new()
                    } else {
                        login(addr).await
                    });
                }
                drive(
                    round,
                    name,
                    addr,
                    cookies,
                    n,
                    Duration::from_secs_f64(warmup),
                    Duration::from_secs_f64(secs),
                    &redis,
                )
                .await
            });
            results.push(out);
        }
    }
    println!("load average after: {}\n", loadavg());
    report(&results);
}

/// Commands the app sent per request: `EVALSHA`s for a script-based store (the commands a
/// script runs are counted by `INFO commandstats` too, but cost no round trip), every command
/// otherwise.
fn round_trips(r: &Outcome) -> f64 {
    let scripts: u64 = ["evalsha", "eval"]
        .iter()
        .filter_map(|c| r.commands.get(*c).map(|x| x.0))
        .sum();
    let calls = if scripts > 0 {
        scripts
    } else {
        r.commands.values().map(|c| c.0).sum()
    };
    calls as f64 / r.requests.max(1) as f64
}

fn rps(r: &Outcome) -> f64 {
    r.requests as f64 / r.secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(results: &[Outcome]) {
    println!(
        "| conns | round | variant | req/s | p50 µs | p99 µs | errors | round trips/req | Redis cmds/req | Redis CPU µs/req | server CPU µs/req |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        let per = |x: f64| x * 1e6 / r.requests.max(1) as f64;
        let calls: u64 = r.commands.values().map(|c| c.0).sum();
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            r.conns,
            r.round,
            r.name,
            rps(r),
            r.p50_us,
            r.p99_us,
            r.errors,
            round_trips(r),
            calls as f64 / r.requests.max(1) as f64,
            per(r.redis_cpu),
            per(r.server_cpu),
        );
    }
    println!("\nRedis commands (calls per request, usec_per_call):");
    for r in results {
        let cmds: Vec<String> = r
            .commands
            .iter()
            .map(|(cmd, (calls, usec))| {
                format!(
                    "{cmd} {:.3}/req {:.2} µs",
                    *calls as f64 / r.requests.max(1) as f64,
                    *usec as f64 / (*calls).max(1) as f64
                )
            })
            .collect();
        println!(
            "  {} @{} r{}: {}",
            r.name,
            r.conns,
            r.round,
            cmds.join(", ")
        );
    }
    println!("\nThroughput ratios (same round; median over rounds):");
    let mut conns: Vec<usize> = results.iter().map(|r| r.conns).collect();
    conns.dedup();
    for n in conns {
        for (a, b) in [
            ("redtower_redis", "tower_sessions_redis_store"),
            ("redtower_redis", "no_session_layer"),
            ("redtower_memory", "no_session_layer"),
            ("tower_sessions_redis_store", "no_session_layer"),
        ] {
            let ratios: Vec<f64> = results
                .iter()
                .filter(|x| x.conns == n && x.name == a)
                .filter_map(|x| {
                    results
                        .iter()
                        .find(|y| y.conns == n && y.name == b && y.round == x.round)
                        .map(|y| rps(x) / rps(y))
                })
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "  @{n}: {a} / {b} = {:.2}x (rounds: {})",
                median(ratios.clone()),
                each.join(", ")
            );
        }
    }
}
