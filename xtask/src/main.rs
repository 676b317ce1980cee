//! Project tasks.
//!
//! * `cargo xtask test`: makes sure `redis-server` (7+) and, for the browser test of the example
//!   app, Chromium and ChromeDriver are installed, installing them with the system package
//!   manager when they are missing (apt-get on Debian/Ubuntu, Homebrew on macOS), or saying
//!   exactly what to run when it cannot; then runs every test of the workspace: unit,
//!   integration (against real servers the tests start themselves) and doc tests.
//! * `cargo xtask ensure-deps`: only the first half.
//!
//! Extra arguments after `test` go to `cargo test` (e.g. `cargo xtask test -p redtower-client`).

use std::{
    env,
    process::{Command, ExitCode},
};

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "test" => ensure_deps().and_then(|()| test(&rest)),
        "ensure-deps" => ensure_deps(),
        _ => Err("usage: cargo xtask <test [cargo test args]|ensure-deps>".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn redis_version() -> Option<(u32, String)> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text
        .split("v=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_owned();
    let major = v.split('.').next()?.parse().ok()?;
    Some((major, v))
}

fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("xtask: running {cmd} {}", args.join(" "));
    let status = Command::new(cmd)
        .args(args)
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {} failed: {status}", args.join(" ")))
    }
}

/// Installs packages with apt-get (Debian/Ubuntu) or Homebrew (macOS).
fn install(apt_packages: &[&str], brew_args: &[&str]) -> Result<(), String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if cfg!(target_os = "macos") && has("brew") {
        let mut args = vec!["install"];
        args.extend_from_slice(brew_args);
        run("brew", &args)
    } else if has("apt-get") {
        let sudo: &[&str] = if is_root { &[] } else { &["sudo", "-n"] };
        let apt = |args: &[&str]| {
            let mut full: Vec<&str> = sudo.to_vec();
            full.extend_from_slice(&["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            full.extend_from_slice(args);
            run(full[0], &full[1..])
        };
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend_from_slice(apt_packages);
        apt(&args).or_else(|_| apt(&["update", "-qq"]).and_then(|()| apt(&args)))
    } else {
        Err("no supported package manager found".to_owned())
    }
}

fn ensure_deps() -> Result<(), String> {
    ensure_redis()?;
    ensure_chromium()
}

fn ensure_chromium() -> Result<(), String> {
    let found = || has("chromedriver") && (has("chromium") || has("chromium-browser"));
    if found() {
        eprintln!("xtask: chromium and chromedriver found");
        return Ok(());
    }
    let attempt = install(
        &["chromium", "chromium-driver"],
        &["--cask", "chromium", "chromedriver"],
    );
    if found() {
        return Ok(());
    }
    Err(format!(
        "the browser test needs Chromium and ChromeDriver, which could not be installed ({}).\n\
         Install them, then run this command again:\n  \
         Debian:  sudo apt-get install -y chromium chromium-driver\n  \
         macOS:   brew install --cask chromium chromedriver",
        attempt.err().unwrap_or_default()
    ))
}

fn ensure_redis() -> Result<(), String> {
    if let Some((major, v)) = redis_version() {
        if major >= 7 {
            eprintln!("xtask: redis-server {v} found");
            return Ok(());
        }
        eprintln!("xtask: redis-server {v} is older than 7; trying to install a newer one");
    }
    let attempt = install(&["redis-server", "redis-tools"], &["redis"]);
    match (attempt, redis_version()) {
        (_, Some((major, v))) if major >= 7 => {
            eprintln!("xtask: redis-server {v} installed");
            Ok(())
        }
        (res, _) => Err(format!(
            "redis-server 7+ is needed by the tests and could not be installed ({}).\n\
             Install it, then run this command again:\n  \
             Debian/Ubuntu: sudo apt-get install -y redis-server redis-tools\n  \
             macOS:         brew install redis",
            res.err()
                .unwrap_or_else(|| "version still below 7".to_owned())
        )),
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
    run(&cargo, &args)
}
