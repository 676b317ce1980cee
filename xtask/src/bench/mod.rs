//! `cargo xtask bench`: the whole app under load, next to its baselines, in one run.
//!
//! Installs `wrk` and the Node baselines' packages when missing, builds the example app and
//! `benches/baselines` in release (plus the `redtower-pubsub` and `redtower-jobs` load
//! benches), starts a private `redis-server` and every server on free loopback ports, warms
//! up and runs each scenario for a bounded time, and prints one table. A full run (no
//! `--filter`) also writes `BENCHMARKS.md` and `benchmarks.svg` at the repository root.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use crate::deps;

mod cases;
mod chart;
mod external;
mod http;
mod procs;
mod report;
mod run;
mod wrk;

const USAGE: &str = "\
usage: cargo xtask bench [options]

  --duration SECS     timed run per scenario (default 6, env BENCH_DURATION)
  --warmup SECS       warm-up per scenario before it (default 2, env BENCH_WARMUP)
  --connections N     wrk connections (default 64, env BENCH_CONNECTIONS)
  --threads N         wrk threads (default 2, env BENCH_THREADS)
  --rounds N          rounds of the HTTP scenarios, run in turn (default 3, env BENCH_ROUNDS):
                      throughput is the median round, ratios the median of per-round ratios
  --sessions N        logged-in sessions the session scenarios spread their requests over,
                      one cookie after another (default: one per connection, env
                      BENCH_SESSIONS; 1 replays one cookie on every request)
  --filter A,B        only the scenarios whose id or name contains A or B (e.g. plain,
                      hello, cache, session, stacked, sse, jobs); env BENCH_FILTER.
                      A filtered run prints its table but writes no file.
  --sse-conns N       SSE streams held open (default 2000)
  --jobs N            jobs per jobs scenario (default 20000)
  --pin               servers under test on CPU 0, `wrk` and redis-server on the other
                      CPUs (`taskset`), as with the load and Redis on machines of their own
                      (env BENCH_PIN=1); the SSE and jobs scenarios are not pinned
  --no-write          print the table only
  --build-only        install and build everything, measure nothing
  --no-build          measure with what the last build left (after --build-only)";

/// The release binaries the run starts.
const BINARIES: &[&str] = &[
    "redtower-example",
    "naive-limiter",
    "governor",
    "memory-limiter",
    "tower-sessions-redis",
    "apalis-jobs",
];

/// The run's settings.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) duration: u32,
    pub(crate) warmup: u32,
    pub(crate) connections: u32,
    pub(crate) threads: u32,
    pub(crate) sessions: u32,
    pub(crate) rounds: u32,
    pub(crate) filter: Vec<String>,
    pub(crate) sse_conns: u32,
    pub(crate) jobs: u32,
    pub(crate) pin: bool,
    pub(crate) write: bool,
    pub(crate) build: bool,
    pub(crate) measure: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let env_num = |k: &str, d: u32| {
            env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0 || k == "BENCH_WARMUP" || k == "BENCH_SESSIONS")
                .unwrap_or(d)
        };
        let mut o = Self {
            duration: env_num("BENCH_DURATION", 6),
            warmup: env_num("BENCH_WARMUP", 2),
            connections: env_num("BENCH_CONNECTIONS", 64),
            threads: env_num("BENCH_THREADS", 2),
            sessions: env_num("BENCH_SESSIONS", 0),
            rounds: env_num("BENCH_ROUNDS", 3),
            filter: env::var("BENCH_FILTER")
                .map(|f| split(&f))
                .unwrap_or_default(),
            sse_conns: 2000,
            jobs: 20_000,
            pin: env::var("BENCH_PIN").is_ok_and(|v| v == "1"),
            write: true,
            build: true,
            measure: true,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut num = |name: &str| -> Result<u32, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0 || name == "--warmup")
                    .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--duration" => o.duration = num(arg)?,
                "--warmup" => o.warmup = num(arg)?,
                "--connections" => o.connections = num(arg)?,
                "--threads" => o.threads = num(arg)?,
                "--sessions" => o.sessions = num(arg)?,
                "--rounds" => o.rounds = num(arg)?,
                "--sse-conns" => o.sse_conns = num(arg)?,
                "--jobs" => o.jobs = num(arg)?,
                "--filter" => {
                    o.filter = split(
                        it.next()
                            .ok_or_else(|| format!("--filter needs a list\n{USAGE}"))?,
                    );
                }
                "--pin" => o.pin = true,
                "--no-write" => o.write = false,
                "--build-only" => o.measure = false,
                "--no-build" => o.build = false,
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
        }
        if !o.filter.is_empty() {
            o.write = false;
        }
        if o.sessions == 0 {
            o.sessions = o.connections;
        }
        Ok(Some(o))
    }

    fn wants(&self, id: &str, name: &str) -> bool {
        self.filter.is_empty()
            || self
                .filter
                .iter()
                .any(|f| id.contains(f.as_str()) || name.to_lowercase().contains(f.as_str()))
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One line of the table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) scenario: String,
    pub(crate) variant: String,
    pub(crate) ours: bool,
    pub(crate) unit: &'static str,
    /// The median of `rounds` (or the one measurement).
    pub(crate) rate: Option<f64>,
    /// The throughput of each round, in round order (empty when measured once).
    pub(crate) rounds: Vec<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Commands clients sent to Redis per request (`MONITOR`, scripts' own commands excluded).
    pub(crate) round_trips: Option<f64>,
    /// Commands Redis ran per request, those inside scripts included (`INFO commandstats`).
    pub(crate) cmds_per_req: Option<f64>,
    pub(crate) peak_rss_kib: Option<u64>,
    pub(crate) errors: u64,
    pub(crate) note: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn shell(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> report::Machine {
    report::Machine {
        nproc: shell("nproc 2>/dev/null || sysctl -n hw.ncpu"),
        cpu: shell(
            "grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' \
             || sysctl -n machdep.cpu.brand_string",
        ),
        load_before: loadavg(),
        redis: shell("redis-server --version | cut -d' ' -f1-3"),
        node: shell("node --version"),
        wrk: shell("wrk --version 2>&1 | head -1 | cut -d' ' -f1-2"),
        date: shell("date -u '+%Y-%m-%d %H:%M UTC'"),
        commit: shell("git describe --always --dirty --exclude '*'"),
        ..report::Machine::default()
    }
}

fn loadavg() -> String {
    shell("cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || sysctl -n vm.loadavg")
}

/// Entry point of `cargo xtask bench`.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let Some(opts) = Options::parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let root = root();
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let logs = target.join("xtask-bench");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let node_dir = root.join("benches/node");
    let jobs_dir = root.join("crates/redtower-jobs");
    let pubsub_dir = root.join("crates/redtower-pubsub");
    let want_sse = opts.wants("sse", "sse fan-out");
    let want_jobs = opts.wants("jobs", "jobs");
    let want_near = opts.wants("near", "near-cache invalidation delay");
    let cases: Vec<&cases::Case> = cases::CASES
        .iter()
        .filter(|c| opts.wants(c.id, c.scenario))
        .collect();

    deps::ensure_redis()?;
    deps::ensure_wrk()?;
    if cases.iter().any(|c| c.server == cases::Server::Node) {
        deps::ensure_node_modules(&node_dir)?;
    }
    if want_jobs {
        deps::ensure_node_modules(&jobs_dir.join("bench"))?;
    }
    let exes = logs.join("bench-executables.txt");
    if opts.build {
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        deps::run(
            &cargo,
            &[
                "build",
                "--release",
                "-p",
                "redtower-example",
                "-p",
                "redtower-baselines",
            ],
        )?;
        // Copies, so that a later build in the same target directory cannot swap them.
        std::fs::create_dir_all(logs.join("bin")).map_err(|e| e.to_string())?;
        for bin in BINARIES {
            std::fs::copy(target.join("release").join(bin), logs.join("bin").join(bin))
                .map_err(|e| format!("copying {bin}: {e}"))?;
        }
        let sse = external::build_bench(&cargo, "redtower-pubsub", "load")?;
        let jobs = external::build_bench(&cargo, "redtower-jobs", "jobs")?;
        let near = external::build_bench(&cargo, "redtower-client", "near")?;
        std::fs::write(
            &exes,
            format!(
                "{}\n{}\n{}\n",
                sse.display(),
                jobs.display(),
                near.display()
            ),
        )
        .map_err(|e| e.to_string())?;
    }
    if !opts.measure {
        return Ok(());
    }
    let listed = std::fs::read_to_string(&exes).unwrap_or_default();
    let mut listed = listed.lines().map(PathBuf::from);
    let (sse_exe, jobs_exe, near_exe) = (listed.next(), listed.next(), listed.next());

    let layout = if opts.pin {
        procs::pin()?
    } else {
        "unpinned: servers, `wrk` and redis-server share every CPU".to_owned()
    };
    let mut machine = machine();
    let bins = run::Bins {
        bin_dir: &logs.join("bin"),
        node_dir: &node_dir,
    };
    let (mut rows, usec) = if cases.is_empty() {
        (Vec::new(), String::new())
    } else {
        run::http_cases(&cases, &bins, &logs, &opts)?
    };
    if want_sse {
        let exe = sse_exe.ok_or("the SSE load bench was not built: run without --no-build")?;
        rows.push(external::sse(
            &exe,
            &pubsub_dir,
            opts.sse_conns,
            opts.duration,
        )?);
    }
    if want_jobs {
        let exe = jobs_exe.ok_or("the jobs bench was not built: run without --no-build")?;
        let apalis = logs.join("bin").join("apalis-jobs");
        rows.extend(external::jobs(
            &exe,
            &jobs_dir,
            opts.jobs,
            apalis.exists().then_some(apalis.as_path()),
        )?);
    }
    if want_near {
        let exe = near_exe.ok_or("the near bench was not built: run without --no-build")?;
        rows.extend(external::near(&exe, &root.join("crates/redtower-client"))?);
    }
    machine.load_after = loadavg();

    let mut command = String::from("cargo xtask bench");
    for arg in args
        .iter()
        .filter(|a| !matches!(a.as_str(), "--no-build" | "--no-write"))
    {
        command.push(' ');
        command.push_str(arg);
    }
    println!("\n{}", report::table(&rows));
    println!("{}", report::targets(&rows));
    println!(
        "{layout}; load average {} before, {} after; logs in {}",
        machine.load_before,
        machine.load_after,
        logs.display()
    );
    if opts.write {
        let settings = format!(
            "HTTP scenarios: {} rounds, each {} s timed after {} s of warm-up per scenario, `wrk` \
             with {} threads and {} connections, {} logged-in users for the session scenarios; \
             {layout}.",
            opts.rounds, opts.duration, opts.warmup, opts.threads, opts.connections, opts.sessions
        );
        let md = report::markdown(&rows, &machine, &command, &settings, &usec);
        report::write(&root.join("BENCHMARKS.md"), &md)?;
        let subtitle = format!(
            "{} CPUs{}, load {} / {}, {} rounds of {} s per scenario at {} connections, {}",
            machine.nproc,
            if opts.pin {
                " (servers pinned to CPU 0)"
            } else {
                ""
            },
            machine.load_before,
            machine.load_after,
            opts.rounds,
            opts.duration,
            opts.connections,
            machine.date
        );
        chart::draw(&root.join("benchmarks.svg"), &rows, &subtitle)?;
        println!("wrote BENCHMARKS.md and benchmarks.svg");
    }
    Ok(())
}
