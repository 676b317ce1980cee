//! The table, the targets and `BENCHMARKS.md`.

use std::{fmt::Write as _, path::Path};

use super::{
    Row,
    cases::{GOALS, Goal, ONE_COMMAND},
};

/// Where the run happened.
#[derive(Debug, Default)]
pub(crate) struct Machine {
    pub(crate) nproc: String,
    pub(crate) cpu: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) redis: String,
    pub(crate) node: String,
    pub(crate) wrk: String,
    pub(crate) date: String,
    pub(crate) commit: String,
}

fn find<'a>(rows: &'a [Row], id: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.id == id)
}

/// `num / den`: the median of the per-round ratios when both rows ran the same rounds (each
/// round's two measurements were taken minutes apart at most), else the ratio of the rates.
pub(crate) fn ratio(rows: &[Row], goal: &Goal) -> Option<f64> {
    let (num, den) = (find(rows, goal.num)?, find(rows, goal.den)?);
    if num.rounds.len() > 1 && num.rounds.len() == den.rounds.len() {
        let per_round: Vec<f64> = num
            .rounds
            .iter()
            .zip(&den.rounds)
            .filter(|(_, d)| **d > 0.0)
            .map(|(n, d)| n / d)
            .collect();
        return super::run::median(per_round);
    }
    let (num, den) = (num.rate?, den.rate?);
    (den > 0.0).then(|| num / den)
}

/// `±7%`: half the gap between the fastest and the slowest round, over the median.
fn spread(row: &Row) -> Option<String> {
    let rate = row.rate.filter(|r| *r > 0.0)?;
    let max = row.rounds.iter().copied().reduce(f64::max)?;
    let min = row.rounds.iter().copied().reduce(f64::min)?;
    Some(format!("±{:.0}%", (max - min) / 2.0 / rate * 100.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio_cell(rows: &[Row], row: &Row) -> String {
    let mut parts = Vec::new();
    for goal in GOALS.iter().filter(|g| g.num == row.id) {
        let Some(r) = ratio(rows, goal) else { continue };
        parts.push(match goal.min {
            Some(min) => format!(
                "{r:.2}x {} (target {min}x: {})",
                goal.versus,
                if r >= min { "met" } else { "**missed**" }
            ),
            None => format!("{r:.2}x {}", goal.versus),
        });
    }
    if parts.is_empty() && !row.ours {
        "baseline".to_owned()
    } else {
        parts.join("; ")
    }
}

/// `0.72x plain, 1.31x naive Rust`: every ratio of `row` (targets and informative).
pub(crate) fn short_ratios(rows: &[Row], row: &Row) -> String {
    GOALS
        .iter()
        .filter(|g| g.num == row.id)
        .filter_map(|g| Some(format!("{:.2}x {}", ratio(rows, g)?, g.versus)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The run's table, in Markdown.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | variant | throughput | ratio | p50 ms | p99 ms | Redis round trips/req | Redis cmds/req | peak RSS MiB |\n\
         | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let mut variant = row.variant.clone();
        if row.errors > 0 {
            let _ = write!(variant, " ({} errors)", row.errors);
        }
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            variant,
            row.rate.map_or_else(
                || "-".to_owned(),
                |r| match spread(row) {
                    Some(s) => format!("{} {} {s}", thousands(r), row.unit),
                    None => format!("{} {}", thousands(r), row.unit),
                }
            ),
            ratio_cell(rows, row),
            opt(row.p50_ms, 2),
            opt(row.p99_ms, 2),
            opt(row.round_trips, 2),
            opt(row.cmds_per_req, 2),
            opt(row.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
        );
    }
    t
}

/// The targets of the issue: met or missed, and by how much.
pub(crate) fn targets(rows: &[Row]) -> String {
    let mut t = String::from("| target | measured | result |\n| --- | ---: | --- |\n");
    for goal in GOALS.iter().filter(|g| g.min.is_some()) {
        let min = goal.min.unwrap_or_default();
        let name = |id: &str| {
            find(rows, id).map_or_else(
                || id.to_owned(),
                |r| format!("{} {}", r.scenario, r.variant),
            )
        };
        let (measured, result) = match ratio(rows, goal) {
            None => ("-".to_owned(), "not measured in this run".to_owned()),
            Some(r) if r >= min => (format!("{r:.2}x"), "met".to_owned()),
            Some(r) => (
                format!("{r:.2}x"),
                format!("**missed by {:.0}%**", (1.0 - r / min) * 100.0),
            ),
        };
        let _ = writeln!(
            t,
            "| {} >= {min}x {} | {measured} | {result} |",
            name(goal.num),
            name(goal.den)
        );
    }
    for id in ONE_COMMAND {
        let Some(row) = find(rows, id) else { continue };
        let c = row.round_trips.unwrap_or(f64::NAN);
        let result = if (c - 1.0).abs() < 0.02 {
            "met".to_owned()
        } else {
            format!("**missed: {c:.2}**")
        };
        let _ = writeln!(
            t,
            "| {} {}: 1 Redis round trip per request | {c:.2} | {result} |",
            row.scenario, row.variant
        );
    }
    t
}

const BEGIN: &str =
    "<!-- bench:begin (written by `cargo xtask bench`; edit outside the markers) -->";
const END: &str = "<!-- bench:end -->";

const MEANING: &str = "\
What the columns mean:

- **throughput**: requests per second over the timed run (`wrk`, all connections), after a \
warm-up on the same connections count. The HTTP scenarios run in rounds, every scenario once \
per round, in turn: the number is the median round, and `±` is half the gap between the \
fastest and the slowest round. Jobs: jobs per second; SSE: events delivered per second.
- **ratio**: this row's throughput divided by the named row's, both from this run on this \
machine: the median of the ratios taken within each round. `plain` is `GET /plain` of the same app binary (no layer at all: the ceiling); \
`naive Rust` is the blog post's `INCR`+`EXPIRE` pipeline limiter ported to Rust on fred \
(`benches/baselines`); `Node` is the blog post's express + ioredis original (`benches/node`), \
route for route; `tower_governor` is the in-process governor layer in a minimal app serving \
the same route, and `memory, minimal app` is that app with redtower's memory limiter instead \
(the two differ only in the limiter; headers on or off as named); \
`tower-sessions-redis-store` reads the same sessions through tower-sessions. Session and \
stacked rows send the cookies of many logged-in users in turn, a different one on each \
request (how many: the line under the command). A ratio above 1 \
means redtower serves more requests per second than that baseline.
- **p50 / p99**: latency percentiles reported by `wrk --latency` (SSE: publish-to-delivery).
- **Redis round trips/req**: commands the server sent to Redis per request, counted with \
`MONITOR` over 200 sequential requests after the timed run (commands that Lua scripts run \
inside Redis are not round trips and are not counted). This is the `1 per single-layer \
scenario` target.
- **Redis cmds/req**: every command the private `redis-server` executed during the timed run, \
those run inside scripts included (`INFO commandstats` delta), divided by the requests served: \
how much work Redis does per request.
- **peak RSS**: the server process's `VmHWM`, reset before the warm-up (Linux).
";

/// The generated part of `BENCHMARKS.md`.
pub(crate) fn markdown(
    rows: &[Row],
    machine: &Machine,
    command: &str,
    settings: &str,
    usec: &str,
) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "{BEGIN}\n");
    let _ = writeln!(
        m,
        "## Run of {} (commit {})\n",
        machine.date, machine.commit
    );
    let _ = writeln!(
        m,
        "Machine: {} CPUs ({}), load average {} before and {} after the run; {}; Node {}; {}.\n",
        machine.nproc,
        machine.cpu,
        machine.load_before,
        machine.load_after,
        machine.redis,
        machine.node,
        machine.wrk
    );
    let _ = writeln!(
        m,
        "Command (from the repository root):\n\n```sh\n{command}\n```\n\n{settings}\n"
    );
    let _ = writeln!(m, "{}", table(rows));
    let _ = writeln!(
        m,
        "![throughput of each scenario next to its baselines](benchmarks.svg)\n"
    );
    let _ = writeln!(m, "### Targets\n\n{}", targets(rows));
    let _ = writeln!(m, "{MEANING}");
    let _ = writeln!(
        m,
        "Redis time per command over the HTTP scenarios (`INFO commandstats`):\n\n{usec}\n"
    );
    let _ = writeln!(m, "{END}");
    m
}

/// Writes `BENCHMARKS.md`, keeping whatever is outside the markers.
pub(crate) fn write(path: &Path, generated: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{}{}",
                &old[..b],
                generated.trim_end(),
                &old[e + END.len()..]
            )
        }
        _ => format!(
            "# Benchmarks\n\nThe whole app under load, redtower against the baselines, all in one \
             run on one machine (`cargo xtask bench`).\n\n{generated}\n## Notes\n"
        ),
    };
    std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, rounds: &[f64]) -> Row {
        Row {
            id: id.to_owned(),
            rate: crate::bench::run::median(rounds.to_vec()),
            rounds: rounds.to_vec(),
            ..Row::default()
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        use crate::bench::run::median;
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn a_ratio_is_the_median_of_per_round_ratios() {
        // The machine's load moved both alike in rounds 1 and 2 and only `b` in round 3: the
        // per-round ratios are 1.0, 1.0 and 0.5, their median 1.0; the ratio of the medians
        // would be 60 / 100 = 0.6.
        let rows = [
            row("a", &[50.0, 100.0, 60.0]),
            row("b", &[50.0, 100.0, 120.0]),
        ];
        let goal = Goal {
            num: "a",
            den: "b",
            versus: "b",
            min: None,
        };
        let r = ratio(&rows, &goal).unwrap_or_default();
        assert!((r - 1.0).abs() < 1e-9, "{r}");
        // Different round counts: the ratio of the rates.
        let rows = [row("a", &[90.0]), row("b", &[50.0, 100.0, 120.0])];
        let r = ratio(&rows, &goal).unwrap_or_default();
        assert!((r - 0.9).abs() < 1e-9, "{r}");
    }

    #[test]
    fn spread_is_half_the_gap_over_the_median() {
        assert_eq!(
            spread(&row("a", &[90.0, 100.0, 110.0])).as_deref(),
            Some("±10%")
        );
        assert_eq!(spread(&row("a", &[])), None);
    }
}
