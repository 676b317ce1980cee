//! [`RedisConfig`]: where Redis is and how to talk to it, with defaults that fix fred's risky ones.

use std::{fmt, time::Duration};

use fred::types::{
    Builder,
    config::{Config, ReconnectPolicy, TcpConfig, UnresponsiveConfig},
};

use crate::{Error, Keyspace, Result};

/// How to reach Redis, and how hard to try.
///
/// Build it [from a URL](Self::from_url), [from the environment](Self::from_env), or start from a
/// URL and adjust with the builder methods. Every setter documents its default. The defaults
/// differ from fred's where fred's are risky:
///
/// | setting | redtower default | fred default |
/// | --- | --- | --- |
/// | reconnect policy | exponential 50 ms .. 1 s, 0-100 ms jitter, forever | none: never reconnects |
/// | command timeout | 2 s | none: a command may wait forever |
/// | command attempts | 3 | 3 |
/// | pub/sub buffer | 4096 messages | 32 (drops under bursts) |
/// | TCP nodelay | on | OS default |
/// | unresponsive connection detection | 10 s | off |
/// | connect | lazy: the app boots while Redis is down | [`init`] fails fast |
///
/// [`init`]: fred::interfaces::ClientLike::init
///
/// ```
/// use std::time::Duration;
/// use redtower_client::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://127.0.0.1:6379/0")?
///     .key_prefix("shop")
///     .command_timeout(Duration::from_millis(500));
/// assert!(format!("{config:?}").contains("500ms"));
/// assert!(!config.is_cluster());
///
/// let cluster = RedisConfig::from_url("redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000")?;
/// assert!(cluster.is_cluster());
/// # Ok::<(), redtower_client::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    fred: Config,
    key_prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_command_attempts: u32,
    reconnect_min: Duration,
    reconnect_max: Duration,
    reconnect_jitter: Duration,
    pubsub_buffer: usize,
    unresponsive_timeout: Option<Duration>,
    tcp_nodelay: bool,
    health_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_command_attempts", &self.max_command_attempts)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("reconnect_jitter", &self.reconnect_jitter)
            .field("pubsub_buffer", &self.pubsub_buffer)
            .field("unresponsive_timeout", &self.unresponsive_timeout)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("health_timeout", &self.health_timeout)
            .finish()
    }
}

/// The URL with any password replaced by `***`, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => format!("{}***{}", &url[..s + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

fn uses_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    matches!(
        scheme,
        "rediss"
            | "valkeys"
            | "rediss-cluster"
            | "valkeys-cluster"
            | "rediss-sentinel"
            | "valkeys-sentinel"
    )
}

impl RedisConfig {
    /// The URL used when `REDIS_URL` is not set: `redis://127.0.0.1:6379`.
    pub const DEFAULT_URL: &'static str = "redis://127.0.0.1:6379";

    /// Parses a URL in any form fred accepts:
    ///
    /// * `redis://[[user]:password@]host[:port][/db]`: one server;
    /// * `rediss://...`: the same over TLS (needs the `rustls` feature);
    /// * `redis-cluster://host:port?node=host2:port2&node=...`: a Cluster, from any known nodes;
    /// * `redis-sentinel://host:26379?sentinelServiceName=mymaster&node=...`: the primary of a
    ///   Sentinel-managed group, found through the listed sentinels.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the URL does not parse, or asks for
    /// TLS while the `rustls` feature is off.
    pub fn from_url(url: &str) -> Result<Self> {
        if uses_tls(url) && !cfg!(feature = "rustls") {
            return Err(Error::config(format!(
                "{} needs TLS: enable the `rustls` feature of redtower-client",
                redact(url)
            )));
        }
        let fred = Config::from_url(url)
            .map_err(|e| Error::config(format!("{}: {}", redact(url), e.details())))?;
        Ok(Self {
            url: url.to_owned(),
            fred,
            key_prefix: Keyspace::DEFAULT_PREFIX.to_owned(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            max_command_attempts: 3,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            reconnect_jitter: Duration::from_millis(100),
            pubsub_buffer: 4096,
            unresponsive_timeout: Some(Duration::from_secs(10)),
            tcp_nodelay: true,
            health_timeout: Duration::from_millis(500),
        })
    }

    /// Reads the environment:
    ///
    /// | variable | meaning | default |
    /// | --- | --- | --- |
    /// | `REDIS_URL` | see [`from_url`](Self::from_url) | `redis://127.0.0.1:6379` |
    /// | `REDIS_KEY_PREFIX` | [`key_prefix`](Self::key_prefix) | `rt` |
    /// | `REDIS_COMMAND_TIMEOUT_MS` | [`command_timeout`](Self::command_timeout) | 2000 |
    /// | `REDIS_CONNECT_TIMEOUT_MS` | [`connect_timeout`](Self::connect_timeout) | 5000 |
    /// | `REDIS_MAX_ATTEMPTS` | [`max_command_attempts`](Self::max_command_attempts) | 3 |
    /// | `REDIS_RECONNECT_MAX_MS` | the upper bound of [`reconnect_delay`](Self::reconnect_delay) | 1000 |
    /// | `REDIS_PUBSUB_BUFFER` | [`pubsub_buffer`](Self::pubsub_buffer) | 4096 |
    /// | `REDIS_TLS_CA_FILE` | a PEM file of CA certificates to trust (feature `rustls`) | system roots |
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the variable that is invalid.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables (for tests and for apps
    /// with their own configuration system).
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    ///
    /// ```
    /// use redtower_client::RedisConfig;
    ///
    /// let env = |name: &str| match name {
    ///     "REDIS_URL" => Some("redis://cache:6380".to_owned()),
    ///     "REDIS_COMMAND_TIMEOUT_MS" => Some("250".to_owned()),
    ///     _ => None,
    /// };
    /// let config = RedisConfig::from_lookup(env)?;
    /// assert!(format!("{config:?}").contains("250ms"));
    ///
    /// let bad = |name: &str| (name == "REDIS_MAX_ATTEMPTS").then(|| "many".to_owned());
    /// assert!(RedisConfig::from_lookup(bad).unwrap_err().to_string().contains("REDIS_MAX_ATTEMPTS"));
    /// # Ok::<(), redtower_client::Error>(())
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let url = lookup("REDIS_URL").filter(|u| !u.trim().is_empty());
        let mut config = Self::from_url(url.as_deref().unwrap_or(Self::DEFAULT_URL).trim())?;
        let number = |name: &str| -> Result<Option<u64>> {
            match lookup(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    Error::config(format!("{name} must be a whole number, got {v:?}"))
                }),
            }
        };
        if let Some(prefix) = lookup("REDIS_KEY_PREFIX") {
            config = config.key_prefix(prefix);
        }
        if let Some(ms) = number("REDIS_COMMAND_TIMEOUT_MS")? {
            config = config.command_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = number("REDIS_CONNECT_TIMEOUT_MS")? {
            config = config.connect_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = number("REDIS_MAX_ATTEMPTS")? {
            let n =
                u32::try_from(n).map_err(|_| Error::config("REDIS_MAX_ATTEMPTS is too large"))?;
            config = config.max_command_attempts(n);
        }
        if let Some(ms) = number("REDIS_RECONNECT_MAX_MS")? {
            let min = config.reconnect_min;
            config = config.reconnect_delay(min, Duration::from_millis(ms));
        }
        if let Some(n) = number("REDIS_PUBSUB_BUFFER")? {
            let n = usize::try_from(n)
                .map_err(|_| Error::config("REDIS_PUBSUB_BUFFER is too large"))?;
            config = config.pubsub_buffer(n);
        }
        if let Some(path) = lookup("REDIS_TLS_CA_FILE").filter(|p| !p.is_empty()) {
            config = config.tls_ca_file(&path)?;
        }
        config.validate()?;
        Ok(config)
    }

    #[cfg(feature = "rustls")]
    fn tls_ca_file(self, path: &str) -> Result<Self> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::config(format!("REDIS_TLS_CA_FILE {path:?}: {e}")))?;
        self.tls_ca_pem(&pem)
    }

    #[cfg(not(feature = "rustls"))]
    fn tls_ca_file(self, _path: &str) -> Result<Self> {
        Err(Error::config(
            "REDIS_TLS_CA_FILE needs TLS: enable the `rustls` feature of redtower-client",
        ))
    }

    /// The prefix of every key (see [`Keyspace`]). Defaults to `rt`.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one command may take, including waiting for a reconnect, before it fails with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout). Defaults to 2 s. Layers add their own
    /// shorter per-call budgets on top.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long one connection attempt may take. Defaults to 5 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a command is written before it fails, when connections drop while it is
    /// in flight. Defaults to 3 (ioredis' `maxRetriesPerRequest: 3`).
    #[must_use]
    pub fn max_command_attempts(mut self, attempts: u32) -> Self {
        self.max_command_attempts = attempts;
        self
    }

    /// The reconnect backoff: exponential from `min` to `max`, retrying forever. Defaults to
    /// 50 ms .. 1 s, so a restarted server is back in use within about a second.
    #[must_use]
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Random jitter added to each reconnect delay, so instances do not reconnect in lockstep.
    /// Defaults to 100 ms.
    #[must_use]
    pub fn reconnect_jitter(mut self, jitter: Duration) -> Self {
        self.reconnect_jitter = jitter;
        self
    }

    /// How many pub/sub messages a subscriber connection buffers for slow readers before they
    /// see a lag. Defaults to 4096 (fred's default of 32 drops messages under bursts).
    #[must_use]
    pub fn pubsub_buffer(mut self, messages: usize) -> Self {
        self.pubsub_buffer = messages;
        self
    }

    /// Closes and reconnects a connection on which a command has waited this long for a reply
    /// (half-open TCP, a failed-over node). `None` disables it. Defaults to 10 s.
    #[must_use]
    pub fn unresponsive_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.unresponsive_timeout = timeout;
        self
    }

    /// Sets `TCP_NODELAY` on every connection. Defaults to `true`.
    #[must_use]
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// The budget of one [`health`](crate::Redis::health) check. Defaults to 500 ms.
    #[must_use]
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (instead of the system roots) for `rediss://`
    /// connections: for servers with a private CA. `REDIS_TLS_CA_FILE` names such a file in
    /// [`from_env`](Self::from_env).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `pem` holds no usable certificate.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn tls_ca_pem(mut self, pem: &[u8]) -> Result<Self> {
        use fred::rustls::{
            ClientConfig, RootCertStore,
            pki_types::{CertificateDer, pem::PemObject},
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::config(format!("CA certificate PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::config(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::config("no CA certificate found in the PEM data"));
        }
        let provider = std::sync::Arc::new(fred::rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.fred.tls = Some(tls.into());
        Ok(self)
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        uses_tls(&self.url)
    }

    /// The configured command timeout (a built handle reads it with
    /// [`Redis::command_timeout`](crate::Redis::command_timeout)).
    pub(crate) fn command_timeout_value(&self) -> Duration {
        self.command_timeout
    }

    /// The configured health-check budget.
    pub(crate) fn health_timeout_value(&self) -> Duration {
        self.health_timeout
    }

    /// The URL, with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Whether the URL names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.fred.server.is_clustered()
    }

    /// Whether the URL names a Sentinel-managed group.
    pub fn is_sentinel(&self) -> bool {
        self.fred.server.is_sentinel()
    }

    pub(crate) fn validate(&self) -> Result<Keyspace> {
        if self.command_timeout.is_zero() {
            return Err(Error::config("the command timeout must be above zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("the connect timeout must be above zero"));
        }
        if self.max_command_attempts == 0 {
            return Err(Error::config("max command attempts must be at least 1"));
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(Error::config("the reconnect delay needs 0 < min <= max"));
        }
        if self.pubsub_buffer == 0 {
            return Err(Error::config(
                "the pub/sub buffer must hold at least one message",
            ));
        }
        Ok(Keyspace::new(self.key_prefix.clone())?)
    }

    /// The fred builder for this configuration, for connections redtower does not make itself.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when a setting is out of range.
    pub fn fred_builder(&self) -> Result<Builder> {
        self.validate()?;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let mut fred = self.fred.clone();
        // Lazy connect: the first connection follows the reconnect policy instead of failing.
        fred.fail_fast = false;
        let mut policy =
            ReconnectPolicy::new_exponential(0, ms(self.reconnect_min), ms(self.reconnect_max), 2);
        policy.set_jitter(ms(self.reconnect_jitter));
        let mut builder = Builder::from_config(fred);
        builder
            .set_policy(policy)
            .with_connection_config(|c| {
                c.connection_timeout = self.connect_timeout;
                c.internal_command_timeout = self.connect_timeout;
                c.max_command_attempts = self.max_command_attempts;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: self.unresponsive_timeout,
                    interval: self
                        .unresponsive_timeout
                        .map_or(Duration::from_secs(2), |t| {
                            (t / 4).max(Duration::from_millis(50))
                        }),
                };
                c.tcp = TcpConfig {
                    nodelay: Some(self.tcp_nodelay),
                    ..TcpConfig::default()
                };
            })
            .with_performance_config(|p| {
                p.default_command_timeout = self.command_timeout;
                p.broadcast_channel_capacity = self.pubsub_buffer;
            });
        Ok(builder)
    }

    /// For a Sentinel URL: the service name, and one builder per sentinel for a connection
    /// to that sentinel itself (its announcements, such as `+switch-master`).
    pub(crate) fn sentinel_builders(&self) -> Result<Option<(String, Vec<Builder>)>> {
        let fred::types::config::ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } = &self.fred.server
        else {
            return Ok(None);
        };
        let mut builders = Vec::with_capacity(hosts.len());
        for host in hosts {
            let mut sentinel = self.clone();
            sentinel.fred.server = fred::types::config::ServerConfig::Centralized {
                server: host.clone(),
            };
            // A sentinel has its own credentials (not supported here) and no databases.
            sentinel.fred.username = None;
            sentinel.fred.password = None;
            sentinel.fred.database = None;
            builders.push(sentinel.fred_builder()?);
        }
        Ok(Some((service_name.clone(), builders)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_parse() {
        assert!(
            !RedisConfig::from_url("redis://localhost:6379/2")
                .unwrap()
                .is_cluster()
        );
        assert!(
            RedisConfig::from_url("redis-cluster://a:7000?node=b:7001")
                .unwrap()
                .is_cluster()
        );
        assert!(
            RedisConfig::from_url("redis-sentinel://a:26379?sentinelServiceName=m")
                .unwrap()
                .is_sentinel()
        );
        assert!(RedisConfig::from_url("not a url").is_err());
        assert!(RedisConfig::from_url("redis-sentinel://a:26379").is_err());
    }

    #[test]
    fn tls_urls_need_the_feature() {
        let result = RedisConfig::from_url("rediss://u:secret@host:6380");
        if cfg!(feature = "rustls") {
            assert!(result.unwrap().is_tls());
        } else {
            let err = result.unwrap_err();
            assert!(err.to_string().contains("rustls"), "{err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let config = RedisConfig::from_url("redis://u:hunter2@h:1").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn env_knobs_are_read_and_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = RedisConfig::from_lookup(env(&[
            ("REDIS_KEY_PREFIX", "shop"),
            ("REDIS_COMMAND_TIMEOUT_MS", "300"),
        ]))
        .unwrap();
        assert_eq!(c.key_prefix, "shop");
        assert_eq!(c.command_timeout, Duration::from_millis(300));
        assert_eq!(c.redacted_url(), RedisConfig::DEFAULT_URL);
        for bad in [
            &[("REDIS_COMMAND_TIMEOUT_MS", "0")][..],
            &[("REDIS_COMMAND_TIMEOUT_MS", "-1")],
            &[("REDIS_KEY_PREFIX", "a{b}")],
            &[("REDIS_PUBSUB_BUFFER", "0")],
            &[("REDIS_MAX_ATTEMPTS", "0")],
        ] {
            assert!(RedisConfig::from_lookup(env(bad)).is_err(), "{bad:?}");
        }
    }
}
