//! `cargo xtask cache-conformance --suite DIR`: the response cache on the public HTTP cache
//! test suite (cache-tests, the suite behind cache-tests.fyi), through the caching proxy
//! example.
//!
//! Needs Node.js and a writable checkout of the suite at `DIR` (`npm install --omit=dev` is run
//! in it when `node_modules` is missing); copies nothing into the repository. Builds
//! `examples/caching-proxy` (debug by default, `--release` for a release build), starts the
//! suite's origin server and the proxy in front of it on free loopback ports, runs the suite's
//! CLI against the proxy, scores the result and every published result in the suite's
//! `results/` with the suite's own `determineTestResult` (a small Node script importing the
//! suite's modules, so the scoring is identical), and writes
//! `crates/redtower-cache/CONFORMANCE.md`. The raw results and the processes' logs are kept in
//! `target/cache-conformance/`.
//!
//! The suite's `npm run server` and `npm run cli` scripts are run as the `node` commands they
//! stand for, with the `npm_config_*` variables they read, so the xtask owns (and stops) the
//! processes themselves rather than an npm wrapper.

use std::{
    collections::BTreeMap,
    env,
    fmt::Write as _,
    fs::{self, File},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::deps;

const USAGE: &str = "\
usage: cargo xtask cache-conformance --suite DIR [options]

  --suite DIR        a writable checkout of https://github.com/http-tests/cache-tests
                     (`npm install --omit=dev` is run in it when node_modules is missing)
  --release          build and run the proxy in release mode (default: debug)
  --redis URL        run the proxy on the Redis store at URL (default: the memory store)
  --id TEST          run one test and print the suite's dump of it; writes nothing
  --results FILE     score this result file of the suite's CLI instead of running it
  --failures FILE    also write the failing required and optimal test ids, one a line,
                     with the reason, to FILE
  --no-write         print the table only";

/// The scoring script: imports the suite's own modules.
const SCORE_MJS: &str = include_str!("score.mjs");

/// The reason each known failure has, by test id (see the file's header).
const REASONS: &str = include_str!("reasons.txt");

const OUT: &str = "crates/redtower-cache/CONFORMANCE.md";

#[derive(Debug, Default)]
struct Options {
    suite: Option<PathBuf>,
    release: bool,
    redis: Option<String>,
    id: Option<String>,
    failures: Option<PathBuf>,
    results: Option<PathBuf>,
    write: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        write: true,
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--suite" => o.suite = Some(PathBuf::from(value()?)),
            "--release" => o.release = true,
            "--redis" => o.redis = Some(value()?),
            "--id" => o.id = Some(value()?),
            "--failures" => o.failures = Some(PathBuf::from(value()?)),
            "--results" => o.results = Some(PathBuf::from(value()?)),
            "--no-write" => o.write = false,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown option {a}\n{USAGE}")),
        }
    }
    if o.suite.is_none() {
        return Err(format!("--suite DIR is required\n{USAGE}"));
    }
    Ok(o)
}

/// The task's entry point.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let suite = o.suite.clone().unwrap_or_default();
    let suite = fs::canonicalize(&suite).map_err(|e| format!("{}: {e}", suite.display()))?;
    if !suite.join("test-engine/cli.mjs").is_file() {
        return Err(format!(
            "{} is not a cache-tests checkout (no test-engine/cli.mjs)",
            suite.display()
        ));
    }
    if !deps::has("node") || !deps::has("npm") {
        return Err("cache-conformance needs Node.js and npm on the PATH".to_owned());
    }
    ensure_installed(&suite)?;

    let root = workspace_root();
    let out_dir = target_dir(&root).join("cache-conformance");
    fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;

    let results = match &o.results {
        Some(file) => file.clone(),
        None => match run_suite(&o, &suite, &root, &out_dir)? {
            Some(file) => file,
            None => return Ok(()),
        },
    };

    let script = out_dir.join("score.mjs");
    fs::write(&script, SCORE_MJS).map_err(|e| e.to_string())?;
    let scored = Command::new("node")
        .arg(&script)
        .arg(&suite)
        .arg(&results)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("node: {e}"))?;
    if !scored.status.success() {
        return Err(format!("scoring failed ({})", scored.status));
    }
    let scored: Value = serde_json::from_slice(&scored.stdout).map_err(|e| e.to_string())?;

    let store = match &o.redis {
        Some(_) => "Redis store",
        None => "memory store",
    };
    let reasons = reasons();
    let rev = revision(&root);
    let md = render(&scored, &reasons, &suite_commit(&suite), &rev, store);
    println!("{}", table(&scored, store, &rev));
    if let Some(path) = &o.failures {
        fs::write(path, failure_list(&scored, &reasons, store, &rev)).map_err(|e| e.to_string())?;
        eprintln!("xtask: wrote {}", path.display());
    }
    if o.write {
        fs::write(root.join(OUT), md).map_err(|e| e.to_string())?;
        eprintln!("xtask: wrote {OUT}");
    }
    Ok(())
}

/// Builds and starts the proxy and the suite's origin, runs the suite's CLI; returns the result
/// file (`None` for a single `--id` run, whose dump is printed).
fn run_suite(
    o: &Options,
    suite: &Path,
    root: &Path,
    out_dir: &Path,
) -> Result<Option<PathBuf>, String> {
    let profile = if o.release { "release" } else { "debug" };
    eprintln!("xtask: building the caching proxy ({profile})");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = vec![
        "build",
        "-p",
        "redtower-caching-proxy",
        "--bin",
        "caching-proxy",
    ];
    if o.release {
        build.push("--release");
    }
    deps::run(&cargo, &build)?;
    let proxy_bin = target_dir(root).join(profile).join("caching-proxy");

    let origin_port = free_port()?;
    let mut origin = Command::new("node");
    origin
        .arg("test-engine/server/server.mjs")
        .current_dir(suite)
        .env("npm_config_protocol", "http")
        .env("npm_config_port", origin_port.to_string())
        .env("npm_config_pidfile", out_dir.join("origin.pid"));
    let mut origin = Proc::spawn("origin", origin_port, origin, out_dir)?;
    origin.wait_ready()?;

    let proxy_port = free_port()?;
    let mut proxy = Command::new(&proxy_bin);
    proxy
        .args(["--listen", &format!("127.0.0.1:{proxy_port}")])
        .args(["--upstream", &format!("http://127.0.0.1:{origin_port}")])
        .env_remove("REDIS_URL")
        .env(
            "RUST_LOG",
            env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    if let Some(url) = &o.redis {
        proxy.env("REDIS_URL", url);
    }
    let mut proxy = Proc::spawn("proxy", proxy_port, proxy, out_dir)?;
    proxy.wait_ready()?;

    let base = format!("http://127.0.0.1:{proxy_port}");
    eprintln!("xtask: running the suite against {base} (origin on port {origin_port})");
    let started = Instant::now();
    let cli = Command::new("node")
        .args(["--no-warnings", "test-engine/cli.mjs"])
        .current_dir(suite)
        .env("npm_config_base", &base)
        // `npm run` would set the package.json default (`""`: every test) as well.
        .env("npm_package_config_id", "")
        .env("npm_config_id", o.id.as_deref().unwrap_or(""))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("node: {e}"))?;
    proxy.check_alive()?;
    drop(proxy);
    drop(origin);
    let stdout = String::from_utf8_lossy(&cli.stdout).into_owned();
    if !cli.status.success() {
        return Err(format!(
            "the suite's CLI failed ({}):\n{stdout}",
            cli.status
        ));
    }
    if o.id.is_some() {
        print!("{stdout}");
        return Ok(None);
    }
    eprintln!("xtask: the suite ran in {:.0?}", started.elapsed());
    let results = out_dir.join("results.json");
    fs::write(&results, &stdout).map_err(|e| e.to_string())?;
    Ok(Some(results))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn ensure_installed(suite: &Path) -> Result<(), String> {
    if suite.join("node_modules").is_dir() {
        return Ok(());
    }
    eprintln!(
        "xtask: running npm install --omit=dev in {}",
        suite.display()
    );
    let status = Command::new("npm")
        .args(["install", "--omit=dev", "--no-audit", "--no-fund"])
        .current_dir(suite)
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "npm install in {} failed: {status}",
            suite.display()
        ))
    }
}

/// The suite's commit: `git rev-parse HEAD`, else the one its `UPSTREAM.md` names.
fn suite_commit(suite: &Path) -> String {
    let git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(suite)
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = git {
        let rev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && rev.len() == 40 {
            return rev;
        }
    }
    fs::read_to_string(suite.join("UPSTREAM.md"))
        .ok()
        .and_then(|t| {
            t.split(|c: char| !c.is_ascii_hexdigit())
                .find(|w| w.len() == 40)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This repository's commit (short), with `+` when the working tree has changes.
fn revision(root: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let rev = run(&["rev-parse", "--short=10", "HEAD"]);
    let dirty = !run(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty { format!("{rev}+") } else { rev }
}

/// `id -> reason` from `reasons.txt` (`<id> <reason>` per line, `#` comments; an id ending in
/// `*` stands for every id it is a prefix of).
fn reasons() -> BTreeMap<String, String> {
    REASONS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(id, r)| (id.to_owned(), r.trim().to_owned()))
        .collect()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

fn pct(a: u64, b: u64) -> u64 {
    (a * 100 + b / 2).checked_div(b).unwrap_or(0)
}

/// The score table (Markdown), ours first, the others by required then required + optimal.
fn table(scored: &Value, store: &str, rev: &str) -> String {
    let counts = &scored["counts"];
    let (req, opt) = (n(counts, "required"), n(counts, "optimal"));
    let mut caches: Vec<&Value> = scored["caches"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let ours = if caches.is_empty() {
        None
    } else {
        Some(caches.remove(0))
    };
    caches
        .sort_by_key(|c| std::cmp::Reverse((n(c, "required"), n(c, "required") + n(c, "optimal"))));
    let mut t = format!(
        "| cache | kind | version | required passed /{req} | required + optimal /{} |\n\
         | --- | --- | --- | ---: | ---: |\n",
        req + opt
    );
    for (i, c) in ours.into_iter().chain(caches).enumerate() {
        let (r, o) = (n(c, "required"), n(c, "optimal"));
        let (name, kind, version) = if i == 0 {
            (
                "**redtower** (`examples/caching-proxy`)".to_owned(),
                format!("this run, {store}"),
                format!("`{rev}`"),
            )
        } else {
            (
                s(c, "name").to_owned(),
                s(c, "type").to_owned(),
                s(c, "version").to_owned(),
            )
        };
        let _ = writeln!(
            t,
            "| {name} | {kind} | {version} | {r} ({}%) | {} ({}%) |",
            pct(r, req),
            r + o,
            pct(r + o, req + opt)
        );
    }
    t
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn failure_rows<'a>(scored: &'a Value, kind: &str) -> Vec<&'a Value> {
    scored["failures"]
        .as_array()
        .map(|a| a.iter().filter(|f| s(f, "kind") == kind).collect())
        .unwrap_or_default()
}

/// The reason of `id`: its own line, else the longest `prefix*` line matching it.
fn reason_of<'a>(reasons: &'a BTreeMap<String, String>, id: &str) -> &'a str {
    if let Some(r) = reasons.get(id) {
        return r;
    }
    reasons
        .iter()
        .filter_map(|(k, r)| {
            let prefix = k.strip_suffix('*')?;
            id.starts_with(prefix).then_some((prefix.len(), r))
        })
        .max_by_key(|(len, _)| *len)
        .map_or("TODO reason", |(_, r)| r.as_str())
}

fn render(
    scored: &Value,
    reasons: &BTreeMap<String, String>,
    suite: &str,
    rev: &str,
    store: &str,
) -> String {
    let mut md = String::from(
        "# HTTP cache conformance\n\n\
         <!-- Generated by `cargo xtask cache-conformance --suite DIR`; edit the reasons in \
         xtask/src/conformance/reasons.txt, not here. -->\n\n",
    );
    let _ = write!(
        md,
        "How the response cache does on [cache-tests](https://github.com/http-tests/cache-tests) \
         (the suite behind [cache-tests.fyi](https://cache-tests.fyi), commit `{suite}`), run \
         through `examples/caching-proxy` (the layer as `redtower_caching_proxy::cache_layer` configures \
         it for a shared proxy cache, {store}) at redtower `{rev}`. Every cache, ours and the \
         published results in the suite's `results/`, is scored the same way, with the suite's \
         own `determineTestResult`: a test passes only if its `depends_on` prerequisites pass \
         too; tests without a `kind` are required, `optimal` ones count in the second column, \
         `check` ones (informational) in neither. The set is the tests the suite runs against a \
         reverse proxy (all but the `browser_only` ones), so the browsers' rows are on tests \
         written partly for proxies.\n\n\
         Reproduce: `cargo xtask cache-conformance --suite /path/to/cache-tests` (Node.js \
         needed; not part of `cargo xtask test`).\n\n"
    );
    md.push_str(&table(scored, store, rev));
    for (kind, title) in [("required", "Required"), ("optimal", "Optimal")] {
        let rows = failure_rows(scored, kind);
        let _ = write!(
            md,
            "\n## {title} tests redtower does not pass ({})\n\n",
            rows.len()
        );
        if rows.is_empty() {
            md.push_str("None.\n");
            continue;
        }
        md.push_str(
            "A `dependency_fail` result is a test whose prerequisite failed; the suite's \
             message says whether the test passes on its own.\n\n\
             | test | name | result | the suite says | reason |\n| --- | --- | --- | --- | --- |\n",
        );
        for f in rows {
            let id = s(f, "id");
            let _ = writeln!(
                md,
                "| `{id}` | {} | {} | {} | {} |",
                cell(s(f, "name")),
                s(f, "result"),
                cell(s(f, "detail")),
                cell(reason_of(reasons, id))
            );
        }
    }
    md
}

fn failure_list(
    scored: &Value,
    reasons: &BTreeMap<String, String>,
    store: &str,
    rev: &str,
) -> String {
    let mut out = table(scored, store, rev);
    for kind in ["required", "optimal"] {
        let _ = writeln!(out, "\n# {kind}");
        for f in failure_rows(scored, kind) {
            let id = s(f, "id");
            let _ = writeln!(
                out,
                "{id}\t{}\t{}\treason: {}",
                s(f, "result"),
                s(f, "detail"),
                reason_of(reasons, id)
            );
        }
    }
    out
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// A child process with its output in `<dir>/<name>.log`, killed when dropped.
struct Proc {
    name: &'static str,
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, port: u16, mut cmd: Command, dir: &Path) -> Result<Self, String> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting the {name}: {e}"))?;
        Ok(Self {
            name,
            port,
            log,
            child,
        })
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the {} exited ({status}); see {}",
                self.name,
                self.log.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {} is not listening on port {}",
                    self.name, self.port
                ));
            }
            // Polled: the origin and the proxy are other processes, which announce nothing
            // when they start listening; the wait is bounded by `deadline`.
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_the_exact_line_else_the_longest_prefix() {
        let reasons: BTreeMap<String, String> = [
            ("vary-*", "any vary"),
            ("vary-normalise-*", "normalising"),
            ("vary-match", "exact"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(reason_of(&reasons, "vary-match"), "exact");
        assert_eq!(reason_of(&reasons, "vary-normalise-space"), "normalising");
        assert_eq!(reason_of(&reasons, "vary-omit"), "any vary");
        assert_eq!(reason_of(&reasons, "age-parse-suffix"), "TODO reason");
    }

    #[test]
    fn the_bundled_reasons_all_have_text() {
        let reasons = reasons();
        assert!(reasons.len() > 5);
        assert!(reasons.values().all(|r| r.len() > 10));
    }

    #[test]
    fn the_table_puts_this_run_first_and_sorts_the_others() {
        let scored = serde_json::json!({
            "counts": { "required": 160, "optimal": 105, "check": 100 },
            "caches": [
                { "name": "redtower", "type": "this run", "version": "", "required": 80, "optimal": 10 },
                { "name": "low", "type": "rev-proxy", "version": "1", "required": 90, "optimal": 50 },
                { "name": "high", "type": "rev-proxy", "version": "2", "required": 132, "optimal": 70 },
            ],
            "failures": [],
        });
        let t = table(&scored, "memory store", "abc");
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert!(rows[0].starts_with("| **redtower**"), "{t}");
        assert!(rows[0].contains("| 80 (50%) | 90 (34%) |"), "{t}");
        assert!(rows[1].starts_with("| high |"), "{t}");
        assert!(rows[1].contains("| 132 (83%) | 202 (76%) |"), "{t}");
        assert!(rows[2].starts_with("| low |"), "{t}");
    }
}
