//! The app's configuration, from the environment (the contract in the README).

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use redtower_client::RedisConfig;

use crate::prometheus::MetricsToken;

/// A `<count>/<duration>` rate such as `100/1h` or `10/1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many requests...
    pub count: NonZeroU32,
    /// ...per this period.
    pub period: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// Parses `<count>/<n><unit>` with unit `ms`, `s`, `m`, `h` or `d` (`100/1h`, `5/30s`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not <count>/<duration> such as 100/1h or 10/1m");
        let (count, period) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let split = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = period.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad())?
        };
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let ms = n
            .checked_mul(unit_ms)
            .filter(|ms| *ms > 0)
            .ok_or_else(bad)?;
        Ok(Rate {
            count,
            period: Duration::from_millis(ms),
        })
    }
}

/// Everything the app reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND`, default `127.0.0.1:3000`.
    pub bind: String,
    /// `REDIS_URL` (+ `REDIS_KEY_PREFIX`, default `redtower-example`, and the other `REDIS_*`
    /// knobs), or `None`: in-process backends.
    pub redis: Option<RedisConfig>,
    /// `API_RATE_LIMIT`, default `100/1h`.
    pub api_rate: Rate,
    /// `ORDER_RATE_LIMIT`, default `10/1m`.
    pub order_rate: Rate,
    /// `CARRIER_RATE_LIMIT`, default `50/1s`: calls to the shipping carrier, one budget for
    /// `GET /carrier/quote` (all clients) and the `ship-order` jobs (all workers).
    pub carrier_rate: Rate,
    /// `LOGIN_RATE_LIMIT`, default `20/1m`: `POST /login` per client IP.
    pub login_rate: Rate,
    /// `LOGIN_USER_RATE_LIMIT`, default `10/1m`: `POST /login` per user name, whatever the IP.
    pub login_user_rate: Rate,
    /// `LOGIN_FAILURE_RATE_LIMIT`, default `5/15m`: failed `POST /login` attempts (answers of
    /// 400 and above) per client IP; successful logins are given back.
    pub login_failure_rate: Rate,
    /// `PUBLISH_RATE_LIMIT`, default `60/1m`: `POST /events/{channel}` per logged-in user.
    pub publish_rate: Rate,
    /// `PUBLISH_IP_RATE_LIMIT`, default `300/1m`: `POST /events/{channel}` per client network
    /// (IPv4 address or IPv6 /64), whoever is logged in.
    pub publish_ip_rate: Rate,
    /// `TRUSTED_PROXIES`: CIDRs whose forwarding headers are believed. Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `SESSION_SECRET` (64+ characters), or `None`: a random one per process.
    pub session_secret: Option<String>,
    /// `WORKER` (`on`/`off`), default on: run the order workers (queues `orders` and
    /// `order-prep`) in this process.
    pub worker: bool,
    /// `ORDER_SHIP_DELAY_MS`, default 2000: the delay before an order's preparation jobs
    /// (`reserve-stock`, `charge-payment`) start; `ship-order` runs once both are done.
    pub order_ship_delay: Duration,
    /// `ORDER_STEP_DELAY_MS`, default 500: the pause between a `ship-order` job's progress
    /// steps ("packed", "label printed", "shipped").
    pub order_step_delay: Duration,
    /// `FEATURED_DELAY_MS`, default 100.
    pub featured_delay: Duration,
    /// `NEAR_CACHE` (`on`/`off`), default on: with Redis, keep cache entries and session
    /// records this instance read in process, invalidated by Redis itself (client tracking)
    /// the moment any instance changes them. Off sends every cache read and session load to
    /// Redis.
    pub near_cache: bool,
    /// `CACHE_L1` (`on`/`off`), default off: with Redis, also keep hot cache entries in process
    /// for 500 ms, not invalidated by other instances (for servers without client tracking).
    pub cache_l1: bool,
    /// `COOKIE_SECURE` (`on`/`off`): mark cookies `Secure`. Default off, since the app serves
    /// plain HTTP on loopback; turn it on behind TLS.
    pub cookie_secure: bool,
    /// `CACHE_HOSTS`: the `Host` values the response cache serves (comma-separated, e.g.
    /// `shop.example,www.shop.example`); requests for other hosts bypass it. Default none
    /// declared: the cache serves the first 8 hosts it sees and bypasses the rest.
    pub cache_hosts: Vec<String>,
    /// `CACHE_PURGE_TOKEN` (16+ characters): serve `POST /cache/purge` (keys, tags and prefixes, see
    /// `redtower_cache::purge`) to `Authorization: Bearer <token>` only. Default none: no
    /// purge endpoint.
    pub cache_purge_token: Option<String>,
    /// `REDIS_CONNECT_WAIT` (`5s`, `500ms`, `0`), default 5 s: with Redis, how long the app
    /// waits for its first connection before it accepts traffic. When Redis is not reachable
    /// in that time the app starts anyway, degraded (one warning; each layer follows its
    /// failure policy and `/health` answers 503 until Redis is reached).
    pub redis_connect_wait: Duration,
    /// `METRICS_TOKEN` (16+ characters): serve `GET /metrics` on the app's address to
    /// `Authorization: Bearer <token>` only. Default none: no `/metrics` there.
    pub metrics_token: Option<MetricsToken>,
    /// `METRICS_ADDR`: serve `GET /metrics` without a token on this separate admin address.
    /// Default none.
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Whether `/metrics` is served anywhere (`METRICS_TOKEN` or `METRICS_ADDR` set): only
    /// then is a metrics recorder installed.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics_token.is_some() || self.metrics_addr.is_some()
    }
}

/// The longest `REDIS_CONNECT_WAIT`.
const MAX_CONNECT_WAIT: Duration = Duration::from_secs(3600);

/// Parses a duration such as `5s`, `500ms`, `2m` or `0`; a bare number is seconds.
fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms: u64 = match unit.trim() {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).map(Duration::from_millis)
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    ///
    /// A message naming the variable that is invalid.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `lookup` (for tests).
    ///
    /// # Errors
    ///
    /// A message naming the variable that is invalid.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let redis = match get("REDIS_URL") {
            None => None,
            Some(_) => {
                let prefix = get("REDIS_KEY_PREFIX").unwrap_or_else(|| "redtower-example".into());
                let config = RedisConfig::from_lookup(|k| {
                    if k == "REDIS_KEY_PREFIX" {
                        Some(prefix.clone())
                    } else {
                        lookup(k)
                    }
                })
                .map_err(|e| format!("REDIS_URL: {e}"))?;
                Some(config)
            }
        };
        let rate = |k: &str, default: &str| -> Result<Rate, String> {
            get(k)
                .unwrap_or_else(|| default.to_owned())
                .parse()
                .map_err(|e| format!("{k}: {e}"))
        };
        let ms = |k: &str, default: u64| -> Result<Duration, String> {
            match get(k) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Duration::from_millis)
                    .map_err(|_| format!("{k}: {v:?} is not a number of milliseconds")),
            }
        };
        let switch = |k: &str, default: bool| -> Result<bool, String> {
            match get(k).map(|v| v.trim().to_ascii_lowercase()) {
                None => Ok(default),
                Some(v) if ["on", "true", "1", "yes"].contains(&v.as_str()) => Ok(true),
                Some(v) if ["off", "false", "0", "no"].contains(&v.as_str()) => Ok(false),
                Some(v) => Err(format!("{k}: {v:?} is not on or off")),
            }
        };
        let trusted_proxies = match get("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<ipnet::IpNet>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| format!("TRUSTED_PROXIES: {s:?} is not a CIDR"))
                })
                .collect::<Result<_, _>>()?,
        };
        let session_secret = match get("SESSION_SECRET") {
            Some(s) if s.len() < 64 => {
                return Err("SESSION_SECRET must have at least 64 characters".into());
            }
            other => other,
        };
        let metrics_token = match get("METRICS_TOKEN") {
            None => None,
            Some(token) => Some(MetricsToken::new(token.trim()).ok_or_else(|| {
                format!(
                    "METRICS_TOKEN must have at least {} characters",
                    MetricsToken::MIN_LEN
                )
            })?),
        };
        let cache_purge_token = match get("CACHE_PURGE_TOKEN").map(|t| t.trim().to_owned()) {
            Some(t) if t.len() < 16 => {
                return Err("CACHE_PURGE_TOKEN must have at least 16 characters".into());
            }
            other => other,
        };
        let metrics_addr = match get("METRICS_ADDR") {
            None => None,
            Some(addr) => Some(addr.trim().parse::<SocketAddr>().map_err(|_| {
                format!("METRICS_ADDR: {addr:?} is not an address such as 127.0.0.1:9100")
            })?),
        };
        let bind = get("BIND").unwrap_or_else(|| "127.0.0.1:3000".into());
        bind.parse::<SocketAddr>()
            .map_err(|_| format!("BIND: {bind:?} is not an address such as 127.0.0.1:3000"))?;
        Ok(Self {
            bind,
            redis,
            api_rate: rate("API_RATE_LIMIT", "100/1h")?,
            order_rate: rate("ORDER_RATE_LIMIT", "10/1m")?,
            carrier_rate: rate("CARRIER_RATE_LIMIT", "50/1s")?,
            login_rate: rate("LOGIN_RATE_LIMIT", "20/1m")?,
            login_user_rate: rate("LOGIN_USER_RATE_LIMIT", "10/1m")?,
            login_failure_rate: rate("LOGIN_FAILURE_RATE_LIMIT", "5/15m")?,
            publish_rate: rate("PUBLISH_RATE_LIMIT", "60/1m")?,
            publish_ip_rate: rate("PUBLISH_IP_RATE_LIMIT", "300/1m")?,
            trusted_proxies,
            session_secret,
            worker: switch("WORKER", true)?,
            order_ship_delay: ms("ORDER_SHIP_DELAY_MS", 2000)?,
            order_step_delay: ms("ORDER_STEP_DELAY_MS", 500)?,
            featured_delay: ms("FEATURED_DELAY_MS", 100)?,
            near_cache: switch("NEAR_CACHE", true)?,
            cache_l1: switch("CACHE_L1", false)?,
            cookie_secure: switch("COOKIE_SECURE", false)?,
            cache_hosts: get("CACHE_HOSTS")
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            redis_connect_wait: match get("REDIS_CONNECT_WAIT") {
                None => Duration::from_secs(5),
                Some(v) => parse_duration(&v).filter(|d| *d <= MAX_CONNECT_WAIT).ok_or_else(|| {
                    format!("REDIS_CONNECT_WAIT: {v:?} is not a duration such as 5s or 500ms, up to 1h")
                })?,
            },
            cache_purge_token,
            metrics_token,
            metrics_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r: Rate = "100/1h".parse().unwrap();
        assert_eq!((r.count.get(), r.period), (100, Duration::from_secs(3600)));
        let r: Rate = "10/1m".parse().unwrap();
        assert_eq!((r.count.get(), r.period), (10, Duration::from_secs(60)));
        let r: Rate = "5/250ms".parse().unwrap();
        assert_eq!(r.period, Duration::from_millis(250));
        let r: Rate = "1000/d".parse().unwrap();
        assert_eq!(r.period, Duration::from_secs(86_400));
        for bad in ["", "100", "0/1m", "10/0s", "10/1y", "x/1m", "10/m1"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connect_wait_parses() {
        let wait = |v: &'static str| {
            Config::from_lookup(move |k| (k == "REDIS_CONNECT_WAIT").then(|| v.to_owned()))
                .map(|c| c.redis_connect_wait)
        };
        assert_eq!(
            Config::from_lookup(|_| None).unwrap().redis_connect_wait,
            Duration::from_secs(5)
        );
        assert_eq!(wait("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(wait("7"), Ok(Duration::from_secs(7)));
        assert_eq!(wait("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(wait("0"), Ok(Duration::ZERO));
        for bad in [
            "-1s",
            "5y",
            "s",
            "99999999999999999999s",
            "1.5s",
            "2h",
            "18446744073709551s",
        ] {
            assert!(wait(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert!(c.redis.is_none());
        assert_eq!(c.bind, "127.0.0.1:3000");
        assert!(c.worker);
        assert!(c.near_cache);
        assert!(!c.cache_l1);
        assert_eq!(c.order_ship_delay, Duration::from_millis(2000));
        assert_eq!(c.carrier_rate.count.get(), 50);
        assert_eq!(c.order_step_delay, Duration::from_millis(500));
        assert!(!c.metrics_enabled());
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = Config::from_lookup(env(&[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            ("WORKER", "off"),
        ]))
        .unwrap();
        assert!(format!("{:?}", c.redis.unwrap()).contains(r#"key_prefix: "redtower-example""#));
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(!c.worker);
        for bad in [
            &[("API_RATE_LIMIT", "lots")][..],
            &[("TRUSTED_PROXIES", "nope")],
            &[("SESSION_SECRET", "short")],
            &[("WORKER", "maybe")],
            &[("BIND", "nowhere")],
            &[("METRICS_TOKEN", "short")],
            &[("CACHE_PURGE_TOKEN", "short")],
            &[("METRICS_ADDR", "nowhere")],
        ] {
            assert!(Config::from_lookup(env(bad)).is_err(), "{bad:?}");
        }
    }
}
