//! Installing what the tasks need: redis-server, Chromium + ChromeDriver, wrk, and the npm
//! packages of the Node baseline, with apt-get (Debian/Ubuntu) or Homebrew (macOS), or saying
//! exactly what to run when that is not possible.

use std::{path::Path, process::Command};

pub(crate) fn redis_version() -> Option<(u32, String)> {
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

pub(crate) fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
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
pub(crate) fn install(apt_packages: &[&str], brew_args: &[&str]) -> Result<(), String> {
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

pub(crate) fn ensure_deps() -> Result<(), String> {
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

pub(crate) fn ensure_redis() -> Result<(), String> {
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

/// Makes sure `wrk` (the HTTP load generator of `cargo xtask bench`) is installed.
pub(crate) fn ensure_wrk() -> Result<(), String> {
    if has("wrk") {
        return Ok(());
    }
    let attempt = install(&["wrk"], &["wrk"]);
    if has("wrk") {
        return Ok(());
    }
    Err(format!(
        "the benchmark needs wrk, which could not be installed ({}).\n\
         Install it, then run this command again:\n  \
         Debian/Ubuntu: sudo apt-get install -y wrk\n  \
         macOS:         brew install wrk",
        attempt.err().unwrap_or_default()
    ))
}

/// Runs `npm ci` in `dir` when its `node_modules` is missing.
pub(crate) fn ensure_node_modules(dir: &Path) -> Result<(), String> {
    if dir.join("node_modules").is_dir() {
        return Ok(());
    }
    if !has("npm") || !has("node") {
        return Err(format!(
            "the Node baselines need Node.js 18+ and npm; install them, then run this command \
             again (Debian/Ubuntu: sudo apt-get install -y nodejs npm; macOS: brew install node). \
             They install their packages with `npm ci` in {}",
            dir.display()
        ));
    }
    eprintln!("xtask: running npm ci in {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("npm ci in {} failed: {status}", dir.display()))
    }
}
