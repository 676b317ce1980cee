//! `caching-proxy`: a caching reverse proxy in front of one origin.
//!
//! ```text
//! caching-proxy [--listen ADDR] [--upstream URL] [--host NAME]... [--max-body BYTES]
//!               [--timeout SECS] [--stale-if-error SECS]
//! ```
//!
//! Each flag falls back to an environment variable: `LISTEN` (default `127.0.0.1:8080`),
//! `UPSTREAM` (required), `CACHE_HOSTS` (comma-separated). `REDIS_URL` (and the other
//! `REDIS_*` variables of `redtower_client::RedisConfig`) selects the Redis store, shared by
//! every instance pointing at that Redis; without it the cache is in memory.

use std::{env, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use redtower_cache::{Cache, CacheStore, MemoryStore, RedisStore};
use redtower_caching_proxy::{Proxy, ProxyError, cache_layer};
use redtower_client::{Redis, RedisConfig};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: caching-proxy [--listen ADDR] [--upstream URL] [--host NAME]... \
                     [--max-body BYTES] [--timeout SECS] [--stale-if-error SECS] (env: LISTEN, UPSTREAM, CACHE_HOSTS, REDIS_URL)";

#[derive(Debug)]
struct Args {
    listen: String,
    upstream: String,
    hosts: Vec<String>,
    max_body: Option<usize>,
    timeout: Option<Duration>,
    grace: Option<Duration>,
}

fn parse_args() -> Result<Args, ProxyError> {
    let mut args = Args {
        listen: env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_owned()),
        upstream: env::var("UPSTREAM").unwrap_or_default(),
        hosts: env::var("CACHE_HOSTS")
            .map(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        max_body: None,
        timeout: None,
        grace: None,
    };
    let mut it = env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        const FLAGS: [&str; 6] = [
            "--listen",
            "--upstream",
            "--host",
            "--max-body",
            "--timeout",
            "--stale-if-error",
        ];
        if !FLAGS.contains(&flag.as_str()) {
            return Err(ProxyError::Config(format!("unknown flag {flag}; {USAGE}")));
        }
        let value = it
            .next()
            .ok_or_else(|| ProxyError::Config(format!("{flag} needs a value; {USAGE}")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| ProxyError::Config(format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--listen" => args.listen = value,
            "--upstream" => args.upstream = value,
            "--host" => args.hosts.push(value),
            "--max-body" => {
                args.max_body = Some(usize::try_from(number(&value)?).unwrap_or(usize::MAX));
            }
            "--timeout" => args.timeout = Some(Duration::from_secs(number(&value)?)),
            "--stale-if-error" => args.grace = Some(Duration::from_secs(number(&value)?)),
            _ => return Err(ProxyError::Config(format!("unknown flag {flag}; {USAGE}"))),
        }
    }
    if args.upstream.is_empty() {
        return Err(ProxyError::Config(format!("no upstream; {USAGE}")));
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caching-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), ProxyError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = parse_args()?;

    let store: Arc<dyn CacheStore> = if env::var_os("REDIS_URL").is_some() {
        Arc::new(RedisStore::new(Redis::new(RedisConfig::from_env()?)?))
    } else {
        Arc::new(MemoryStore::new())
    };
    let mut layer = cache_layer(Cache::new(store));
    if !args.hosts.is_empty() {
        layer = layer.hosts(&args.hosts);
    }
    if let Some(grace) = args.grace {
        layer = layer.stale_if_error(grace);
    }
    if let Some(max) = args.max_body {
        layer = layer.max_body(max);
    }
    let mut proxy = Proxy::new(&args.upstream)?;
    if let Some(timeout) = args.timeout {
        proxy = proxy.timeout(timeout);
    }
    let app = proxy.router(layer);

    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    tracing::info!(
        target: "redtower::proxy",
        listen = %listener.local_addr()?,
        upstream = %args.upstream,
        redis = env::var_os("REDIS_URL").is_some(),
        "caching proxy listening"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, `SIGTERM` (what container runtimes send).
async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
