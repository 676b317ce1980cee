//! Starting the servers and measuring the HTTP cases.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    path::Path,
};

use super::{
    Options, Row,
    cases::{Case, Server},
    http,
    procs::{self, Proc, Role},
    wrk::{self, Load},
};

/// Requests sent one by one under `MONITOR` to count round trips per request.
const SAMPLE: u32 = 200;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-bench-secret-bench-secret-0123";

/// The binaries the run starts.
pub(crate) struct Bins<'a> {
    pub(crate) bin_dir: &'a Path,
    pub(crate) node_dir: &'a Path,
}

fn start(server: Server, bins: &Bins<'_>, redis: u16, logs: &Path) -> Result<Proc, String> {
    let port = procs::free_port()?;
    let redis_url = format!("redis://127.0.0.1:{redis}");
    let mut cmd;
    if server.is_app() {
        cmd = procs::command(bins.bin_dir.join("redtower-example"), Role::Server);
        cmd.env("BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env("WORKER", "off")
            .env("SESSION_SECRET", SECRET)
            .env("API_RATE_LIMIT", "4000000000/1h")
            .env("LOGIN_RATE_LIMIT", "4000000000/1h")
            .env("LOGIN_USER_RATE_LIMIT", "4000000000/1h")
            .env("REDIS_KEY_PREFIX", server.name())
            .env_remove("REDIS_URL");
        match server {
            Server::AppRedis => {
                cmd.env("REDIS_URL", &redis_url)
                    .env("CACHE_L1", "off")
                    .env("NEAR_CACHE", "off");
            }
            Server::AppRedisL1 => {
                cmd.env("REDIS_URL", &redis_url)
                    .env("CACHE_L1", "on")
                    .env("NEAR_CACHE", "off");
            }
            Server::AppRedisNear => {
                cmd.env("REDIS_URL", &redis_url)
                    .env("CACHE_L1", "off")
                    .env("NEAR_CACHE", "on");
            }
            _ => {}
        }
    } else if server == Server::Node {
        cmd = procs::command("node", Role::Server);
        cmd.arg("server.mjs")
            .arg(port.to_string())
            .current_dir(bins.node_dir)
            .env("REDIS_URL", &redis_url);
    } else {
        let (binary, headers) = server.baseline();
        cmd = procs::command(bins.bin_dir.join(binary), Role::Server);
        cmd.arg(port.to_string())
            .env("REDIS_URL", &redis_url)
            .env("RATELIMIT_HEADERS", headers);
    }
    let mut proc = Proc::spawn(server.name(), port, cmd, logs)?;
    proc.wait_ready(server.is_app().then_some("/health"))?;
    Ok(proc)
}

/// Logs in on `server` as `user` and returns the `Cookie` header to send.
fn login(proc: &Proc, user: &str) -> Result<String, String> {
    let res = http::post_json(proc.port, "/login", &format!(r#"{{"user":"{user}"}}"#))?;
    let cookie = res.cookie_header();
    if res.status != 200 || cookie.is_empty() {
        return Err(format!(
            "{}: POST /login answered {} without a cookie: {}",
            proc.name, res.status, res.body
        ));
    }
    Ok(cookie)
}

fn redis_calls(redis: u16) -> Result<u64, String> {
    Ok(http::commandstats(redis)?
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(_, (calls, _))| calls)
        .sum())
}

/// One round of one case: its row, the requests served and the commands Redis ran meanwhile.
struct Sample {
    row: Row,
    requests: u64,
    redis_cmds: u64,
}

/// Measures one case: a sanity request, a warm-up, then the timed run with `INFO
/// commandstats` around it and the peak RSS reset before it; with `round_trips`, then the
/// round trips of sequential requests under `MONITOR`.
fn measure(
    case: &Case,
    proc: &mut Proc,
    cookies: &[String],
    redis: u16,
    opts: &Options,
    round_trips: bool,
) -> Result<Sample, String> {
    let cookie = cookies.first().map(String::as_str);
    proc.check_alive()?;
    let first = http::get(proc.port, case.path, cookie)?;
    if first.status != 200 {
        return Err(format!(
            "{} {} answered {}: {}",
            proc.name, case.path, first.status, first.body
        ));
    }
    let load = Load {
        threads: opts.threads,
        connections: opts.connections,
        seconds: opts.duration,
    };
    proc.reset_peak_rss();
    if opts.warmup > 0 {
        let warm = Load {
            seconds: opts.warmup,
            ..load.clone()
        };
        wrk::run(&warm, proc.port, case.path, cookies)?;
    }
    let last = http::get(proc.port, case.path, cookie)?;
    let cache_state = last.header("x-cache").map(str::to_owned);
    let before = redis_calls(redis)?;
    let r = wrk::run(&load, proc.port, case.path, cookies)?;
    let after = redis_calls(redis)?;
    proc.check_alive()?;
    // Round trips: sequential requests with MONITOR on (too slow to leave on under load).
    let sent = if round_trips {
        let (sent, ()) = http::client_commands(redis, || {
            for _ in 0..SAMPLE {
                http::get(proc.port, case.path, cookie)?;
            }
            Ok(())
        })?;
        Some(sent as f64 / f64::from(SAMPLE))
    } else {
        None
    };
    let mut note = String::new();
    if let Some(state) = cache_state.filter(|s| s != "HIT") {
        note = format!("X-Cache {state} after warm-up");
    }
    let redis_cmds = after.saturating_sub(before);
    Ok(Sample {
        row: Row {
            id: case.id.to_owned(),
            scenario: case.scenario.to_owned(),
            variant: case.variant.to_owned(),
            ours: case.ours,
            unit: "req/s",
            rate: Some(r.rps),
            rounds: Vec::new(),
            p50_ms: Some(r.p50_ms),
            p99_ms: Some(r.p99_ms),
            round_trips: sent,
            cmds_per_req: (r.requests > 0).then(|| redis_cmds as f64 / r.requests as f64),
            peak_rss_kib: proc.peak_rss_kib(),
            errors: r.errors,
            note,
        },
        requests: r.requests,
        redis_cmds,
    })
}

/// The median (the mean of the two middle values for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One row from a case's rounds: the median throughput and latencies, the rounds' rates,
/// Redis commands per request over all rounds, the first round's round trips, the highest RSS.
fn combine(samples: Vec<Sample>) -> Option<Row> {
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    let cmds: u64 = samples.iter().map(|s| s.redis_cmds).sum();
    let rounds: Vec<f64> = samples.iter().filter_map(|s| s.row.rate).collect();
    let p50 = median(samples.iter().filter_map(|s| s.row.p50_ms).collect());
    let p99 = median(samples.iter().filter_map(|s| s.row.p99_ms).collect());
    let rss = samples.iter().filter_map(|s| s.row.peak_rss_kib).max();
    let errors = samples.iter().map(|s| s.row.errors).sum();
    let note = samples
        .iter()
        .map(|s| s.row.note.as_str())
        .find(|n| !n.is_empty())
        .unwrap_or("")
        .to_owned();
    let first = samples.into_iter().next()?.row;
    Some(Row {
        rate: median(rounds.clone()),
        rounds: if rounds.len() > 1 { rounds } else { Vec::new() },
        p50_ms: p50,
        p99_ms: p99,
        cmds_per_req: (requests > 0).then(|| cmds as f64 / requests as f64),
        peak_rss_kib: rss,
        errors,
        note,
        ..first
    })
}

/// Starts a private Redis and every server `cases` need, then measures each case in order.
pub(crate) fn http_cases(
    cases: &[&Case],
    bins: &Bins<'_>,
    logs: &Path,
    opts: &Options,
) -> Result<(Vec<Row>, String), String> {
    let redis = procs::redis_server(logs)?;
    let mut servers: BTreeMap<Server, Proc> = BTreeMap::new();
    for case in cases {
        if let Entry::Vacant(slot) = servers.entry(case.server) {
            eprintln!("xtask: starting {}", case.server.name());
            slot.insert(start(case.server, bins, redis.port, logs)?);
        }
    }
    let mut cookies: BTreeMap<Server, Vec<String>> = BTreeMap::new();
    let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
    // Rounds in turn: a change in the machine's load during the run hits every case alike,
    // and a ratio taken within one round compares measurements minutes apart at most.
    for round in 0..opts.rounds {
        for (i, case) in cases.iter().enumerate() {
            let Some(proc) = servers.get_mut(&case.server) else {
                continue;
            };
            let none = Vec::new();
            let jar = if case.login {
                if let Entry::Vacant(slot) = cookies.entry(case.server) {
                    // One user per session, as many sessions as `--sessions`.
                    let jar = (0..opts.sessions)
                        .map(|i| login(proc, &format!("bench-{i}")))
                        .collect::<Result<Vec<_>, _>>()?;
                    slot.insert(jar);
                }
                cookies.get(&case.server).unwrap_or(&none)
            } else {
                &none
            };
            eprintln!(
                "xtask: round {}/{}: {} / {} ({} {})",
                round + 1,
                opts.rounds,
                case.scenario,
                case.variant,
                case.server.name(),
                case.path
            );
            let sample = measure(case, proc, jar, redis.port, opts, round == 0)?;
            let row = &sample.row;
            eprintln!(
                "xtask:   {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} round trips/req, {:.2} Redis cmds/req, errors {}",
                row.rate.unwrap_or(0.0),
                row.p50_ms.unwrap_or(0.0),
                row.p99_ms.unwrap_or(0.0),
                row.round_trips
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                row.cmds_per_req.unwrap_or(0.0),
                row.errors
            );
            samples[i].push(sample);
        }
    }
    let rows = samples.into_iter().filter_map(combine).collect();
    let usec = usec_per_call(redis.port)?;
    Ok((rows, usec))
}

/// `INFO commandstats` of the whole HTTP part: calls and `usec_per_call` per command.
fn usec_per_call(redis: u16) -> Result<String, String> {
    let stats = http::commandstats(redis)?;
    let mut lines = vec![
        "| command | calls | usec per call |".to_owned(),
        "| --- | ---: | ---: |".to_owned(),
    ];
    for (name, (calls, usec)) in stats {
        if calls >= 100 {
            lines.push(format!(
                "| {name} | {calls} | {:.2} |",
                usec as f64 / calls as f64
            ));
        }
    }
    Ok(lines.join("\n"))
}
