//! Project tasks.
//!
//! * `cargo xtask test`: makes sure `redis-server` (7+) and, for the browser test of the example
//!   app, Chromium and ChromeDriver are installed, installing them with the system package
//!   manager when they are missing (apt-get on Debian/Ubuntu, Homebrew on macOS), or saying
//!   exactly what to run when it cannot; then runs every test of the workspace: unit,
//!   integration (against real servers the tests start themselves) and doc tests.
//! * `cargo xtask ensure-deps`: only the first half.
//! * `cargo xtask bench`: the whole-app load run (see `BENCHMARKS.md` and
//!   `cargo xtask bench --help`): installs `wrk` and the Node baseline's packages when missing,
//!   starts its own `redis-server`, the example app and the baselines, and writes
//!   `BENCHMARKS.md` and `benchmarks.svg`.
//! * `cargo xtask cache-conformance --suite DIR`: the response cache on the public HTTP cache
//!   test suite, through `examples/caching-proxy`; writes `crates/redtower-cache/CONFORMANCE.md`
//!   (needs Node.js and a checkout of the suite; not part of `test`).
//!
//! Extra arguments after `test` go to `cargo test` (e.g. `cargo xtask test -p redtower-client`).

use std::{env, process::ExitCode};

mod bench;
mod conformance;
mod deps;

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "test" => deps::ensure_deps().and_then(|()| test(&rest)),
        "ensure-deps" => deps::ensure_deps(),
        "bench" => bench::main(&rest),
        "cache-conformance" => conformance::main(&rest),
        _ => Err(
            "usage: cargo xtask <test [cargo test args]|ensure-deps|bench [--help]|cache-conformance --suite DIR [--help]>"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn test(extra: &[String]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut args: Vec<&str> = vec!["test"];
    if extra.is_empty() {
        args.extend(["--workspace", "--all-features", "--no-fail-fast"]);
    } else {
        args.extend(extra.iter().map(String::as_str));
    }
    deps::run(&cargo, &args)
}
