//! The scenarios measured by the crates' own load programs, run as they are and read from
//! their output: SSE fan-out (`redtower-pubsub`'s `load` bench), jobs against BullMQ
//! (`redtower-jobs`'s `jobs` bench) and the near-cache's invalidation delay
//! (`redtower-client`'s `near` bench).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::Row;

/// Builds a bench target without running it and returns its executable.
pub(crate) fn build_bench(cargo: &str, package: &str, bench: &str) -> Result<PathBuf, String> {
    eprintln!("xtask: building cargo bench -p {package} --bench {bench}");
    let out = Command::new(cargo)
        .args(["bench", "-p", package, "--bench", bench, "--no-run"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building the {bench} bench of {package} failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bench)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("no executable for the {bench} bench of {package}"))
}

fn run(exe: &Path, dir: &Path, env: &[(&str, String)]) -> Result<String, String> {
    eprintln!("xtask: running {}", exe.display());
    let out = Command::new(exe)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} failed: {text}{}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// The number after `key` in `text` (`key` followed by optional spaces, then digits).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = if key.is_empty() {
        text
    } else {
        text.split(key).nth(1)?
    }
    .trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn row(id: &str, scenario: &str, variant: &str, ours: bool, unit: &'static str) -> Row {
    Row {
        id: id.to_owned(),
        scenario: scenario.to_owned(),
        variant: variant.to_owned(),
        ours,
        unit,
        ..Row::default()
    }
}

/// SSE fan-out: `conns` streams on `channels` channels, `rate` publishes/s for `secs`.
pub(crate) fn sse(exe: &Path, crate_dir: &Path, conns: u32, secs: u32) -> Result<Row, String> {
    let channels = 10;
    let env = [
        ("LOAD_CONNS", conns.to_string()),
        ("LOAD_CHANNELS", channels.to_string()),
        ("LOAD_RATE", "100".to_owned()),
        ("LOAD_SECS", secs.to_string()),
        ("LOAD_BACKEND", "redis".to_owned()),
    ];
    let text = run(exe, crate_dir, &env)?;
    let delivery = text
        .lines()
        .find(|l| l.starts_with("delivery:"))
        .ok_or_else(|| format!("no delivery line in the SSE load output:\n{text}"))?;
    let delivered = delivery
        .trim_start_matches("delivery:")
        .trim()
        .split('/')
        .next()
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot read {delivery:?}"))?;
    let expected = number_after(delivery, "/").unwrap_or(0.0);
    let mut r = row(
        "sse/redis",
        "SSE fan-out",
        &format!("{conns} streams, 100 publishes/s, Redis"),
        true,
        "events/s",
    );
    r.rate = Some(delivered / f64::from(secs));
    r.p50_ms = number_after(delivery, "p50");
    r.p99_ms = number_after(delivery, "p99");
    r.peak_rss_kib = text
        .lines()
        .find(|l| l.starts_with("server RSS:"))
        .and_then(|l| number_after(l, "streams,"))
        .map(|kib| kib as u64);
    r.errors = (expected - delivered).max(0.0) as u64;
    r.note = "latency is publish-to-delivery; errors = events not delivered".to_owned();
    Ok(r)
}

/// Jobs: redtower-jobs, BullMQ and apalis, each on a fresh Redis, `n` no-op jobs each, rounds
/// alternating, read from the bench's `RESULT {json}` lines (medians of the rounds). `apalis`
/// is the `apalis-jobs` binary of `benches/baselines`.
pub(crate) fn jobs(
    exe: &Path,
    crate_dir: &Path,
    n: u32,
    apalis: Option<&Path>,
) -> Result<Vec<Row>, String> {
    let mut env = vec![("N", n.to_string())];
    if let Some(apalis) = apalis {
        env.push(("APALIS_BENCH", apalis.display().to_string()));
    }
    let text = run(exe, crate_dir, &env)?;
    let results: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    if results.is_empty() {
        return Err(format!("no RESULT line in the jobs bench output:\n{text}"));
    }
    let rounds = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    for (what, key, scenario) in [
        ("bulk", "bulk_enqueue", "jobs: bulk enqueue"),
        ("single", "single_enqueue", "jobs: enqueue, 50 in flight"),
        ("process", "processing_c50", "jobs: process, concurrency 50"),
        (
            "sched",
            "scheduler_first_tick",
            "jobs: schedulers created with their first tick, 50 in flight",
        ),
        (
            "ticks",
            "scheduler_ticks",
            "jobs: repeatable jobs, schedulers every 1 s, tick jobs run",
        ),
        (
            "flows",
            "flows_1p10c",
            "jobs: flows of 1 parent + 10 children, 50 in flight, until every parent completed",
        ),
        (
            "rate",
            "rate_limited_1000_per_s",
            "jobs: queue limited to 1,000 starts/s, steady rate",
        ),
    ] {
        let unit = if what == "flows" { "flows/s" } else { "jobs/s" };
        let Some(result) = results.iter().find(|r| r["scenario"] == key) else {
            continue;
        };
        let mut r = row(
            &format!("jobs/{what}"),
            scenario,
            "redtower-jobs",
            true,
            unit,
        );
        r.rate = result["redtower_per_s"].as_f64();
        r.rounds = rounds(&result["redtower_rounds"]);
        r.round_trips = result["round_trips_per_job"].as_f64();
        if r.round_trips.is_some() {
            r.note = "round trips = scripts per processed job".to_owned();
        }
        if what == "ticks" {
            r.note = format!(
                "{} schedulers; redis-server CPU {} µs per tick",
                result["jobs"], result["redis_cpu_us_per_job"]
            );
        }
        if what == "rate" {
            r.note = rate_note(result, "redtower");
        }
        rows.push(r);
        if let Some(bullmq) = result["bullmq_per_s"].as_f64() {
            let mut b = row(
                &format!("jobs/{what}-bullmq"),
                scenario,
                "BullMQ",
                false,
                unit,
            );
            b.rate = Some(bullmq);
            b.rounds = rounds(&result["bullmq_rounds"]);
            if what == "rate" {
                b.note = rate_note(result, "bullmq");
            }
            if what == "ticks" {
                b.note = format!(
                    "redis-server CPU {} µs per tick",
                    result["bullmq_redis_cpu_us_per_job"]
                );
            }
            rows.push(b);
        }
        if let Some(apalis) = result["apalis_per_s"].as_f64() {
            let mut a = row(
                &format!("jobs/{what}-apalis"),
                scenario,
                "apalis (apalis-redis, defaults)",
                false,
                "jobs/s",
            );
            a.rate = Some(apalis);
            a.rounds = rounds(&result["apalis_rounds"]);
            if let Some(nolock) = result["apalis_nolock_per_s"].as_f64() {
                a.note = format!(
                    "default per-task locks (an LREM of the whole queue per task); {nolock:.0} jobs/s with lock_tasks(false)"
                );
            }
            rows.push(a);
        }
    }
    Ok(rows)
}

/// The note of a rate-limited queue's row: how close its steady rate came to the limit, and
/// its throughput over the whole run (the first window's burst included).
fn rate_note(result: &serde_json::Value, who: &str) -> String {
    format!(
        "accuracy {:.2} % of the {} jobs/s limit; {:.0} jobs/s over the whole run",
        result[format!("{who}_accuracy")].as_f64().unwrap_or(0.0) * 100.0,
        result["limit_per_s"],
        result[format!("{who}_throughput_per_s")]
            .as_f64()
            .unwrap_or(0.0),
    )
}

/// The near-cache's invalidation delay (a write on instance A to the key's disappearance from
/// instance B's tracked tier) and Redis' own round trip, read from the bench's `RESULT {json}`
/// line.
pub(crate) fn near(exe: &Path, crate_dir: &Path) -> Result<Vec<Row>, String> {
    let text = run(exe, crate_dir, &[])?;
    let result: serde_json::Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .find_map(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| format!("no RESULT line in the near bench output:\n{text}"))?;
    let samples = result["samples"].as_u64().unwrap_or(0);
    let mut delay = row(
        "near/invalidation",
        "near-cache invalidation delay",
        "write on A to gone from B's tier",
        true,
        "ms",
    );
    delay.p50_ms = result["delay_p50_ms"].as_f64();
    delay.p99_ms = result["delay_p99_ms"].as_f64();
    delay.note = format!(
        "{samples} samples, loopback; max {:.3} ms",
        result["delay_max_ms"].as_f64().unwrap_or(0.0)
    );
    let mut rtt = row(
        "near/rtt",
        "near-cache invalidation delay",
        "Redis round trip (PING)",
        false,
        "ms",
    );
    rtt.p50_ms = result["rtt_p50_ms"].as_f64();
    rtt.p99_ms = result["rtt_p99_ms"].as_f64();
    rtt.note = "the same client and server, for scale".to_owned();
    Ok(vec![delay, rtt])
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn reads_numbers() {
        let line = "redtower-jobs (20000 jobs): bulk 17055/s, single 12088/s, processing 7168/s, 0.031 scripts per processed job";
        assert_eq!(number_after(line, "bulk "), Some(17055.0));
        assert_eq!(number_after(line, "processing "), Some(7168.0));
        assert_eq!(
            number_after(line.rsplit("/s,").next().unwrap(), ""),
            Some(0.031)
        );
        let d = "delivery: 1990/2000 events delivered; publish-to-delivery p50 1.5 ms, p99 12.0 ms, max 20.1 ms";
        assert_eq!(number_after(d, "p99"), Some(12.0));
        assert_eq!(number_after(d, "/"), Some(2000.0));
    }
}
