//! Prefix bans on Redis: one bounded list per store, `rt:c:b:{bans}:l` (a hash, prefix -> ban
//! time) and its version `rt:c:b:{bans}` (`<version>:<horizon>`, a few bytes).
//!
//! A lookup reads only the version, in the same coalesced `MGET` (or tracked near-cache read)
//! as the entry; the list itself is read once per change per instance (one read-only script
//! for a consistent snapshot) and kept decoded in process until the version moves.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use redtower_client::{Key, Namespace, Script, fred::types::Value};

use super::RedisStore;
use crate::{
    Error, Result,
    bans::{Bans, MAX_BANS},
    store::MAX_TTL,
};

static BAN: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new("cache_ban", include_str!("../../lua/ban.lua")));
static READ: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new("cache_bans", include_str!("../../lua/bans.lua")));

/// The ban keys of one store and the list this instance last read (shared by clones).
pub(super) struct BanState {
    version: Key,
    list: Key,
    /// The version text last read, and the list it names.
    seen: RwLock<Option<(Bytes, Arc<Bans>)>>,
    /// One list read at a time: the requests that see a new version together wait for one.
    fetch: tokio::sync::Mutex<()>,
}

impl BanState {
    pub(super) fn new(namespace: &Namespace) -> Self {
        let version = namespace.key("bans");
        Self {
            list: version.clone().push("l"),
            version,
            seen: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, version: &[u8]) -> Option<Arc<Bans>> {
        let seen = self
            .seen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*seen {
            Some((v, bans)) if v == version => Some(bans.clone()),
            _ => None,
        }
    }
}

impl RedisStore {
    /// The Redis keys of the ban list's version and of the list.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(super) fn ban_key_refs(&self) -> (&Key, &Key) {
        (&self.bans.version, &self.bans.list)
    }

    pub(super) async fn record_ban(&self, prefix: &str) -> Result<()> {
        let max_age = u64::try_from(MAX_TTL.as_millis()).unwrap_or(u64::MAX);
        let slack = u64::try_from(self.clock_skew.as_millis()).unwrap_or(u64::MAX);
        let keys = vec![self.bans.version.clone(), self.bans.list.clone()];
        let args = vec![
            prefix.to_owned(),
            slack.to_string(),
            MAX_BANS.to_string(),
            max_age.to_string(),
        ];
        let run = BAN.run::<i64, _, _>(&self.redis, keys, args);
        let r = self.bounded(run).await;
        // Also on an error: the script may have run.
        self.near_forget([self.bans.version.as_str()]);
        r.map(|_| ())
    }

    pub(super) async fn read_bans(&self) -> Result<Arc<Bans>> {
        let version = self.read_version().await?;
        self.bans_at(version).await
    }

    /// The ban list at `version` (the version key's value, read with a lookup): the list this
    /// instance holds for it, else read once.
    pub(super) async fn bans_at(&self, version: Option<Bytes>) -> Result<Arc<Bans>> {
        let Some(version) = version else {
            return Ok(Bans::none());
        };
        match self.bans.cached(&version) {
            Some(bans) => Ok(bans),
            // Boxed: the script call's future stays out of every lookup's future.
            None => Box::pin(self.fetch_bans(version)).await,
        }
    }

    /// Reads the list for `version` (one reader at a time).
    async fn fetch_bans(&self, version: Bytes) -> Result<Arc<Bans>> {
        let _one = self.bans.fetch.lock().await;
        if let Some(bans) = self.bans.cached(&version) {
            return Ok(bans);
        }
        let keys = vec![self.bans.version.clone(), self.bans.list.clone()];
        let reply: Value = self
            .bounded(READ.run(&self.redis, keys, Vec::<String>::new()))
            .await?;
        let (version, bans) = parse(reply)?;
        let bans = Arc::new(bans);
        *self
            .bans
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((version, bans.clone()));
        Ok(bans)
    }

    /// The version, read like an entry: the tracked tier, the coalesced queue, or one `GET`.
    async fn read_version(&self) -> Result<Option<Bytes>> {
        self.read_key(self.bans.version.clone(), true).await
    }
}

fn bad(what: &'static str) -> Error {
    Error::Redis(redtower_client::Error::reply(format!(
        "unexpected ban list reply: {what}"
    )))
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `[version, [prefix, time, ...]]` from the read script.
fn parse(reply: Value) -> Result<(Bytes, Bans)> {
    let Value::Array(mut parts) = reply else {
        return Err(bad("not an array"));
    };
    if parts.len() != 2 {
        return Err(bad("length"));
    }
    let list = parts.pop().unwrap_or(Value::Null);
    let version = text(parts.pop().unwrap_or(Value::Null)).ok_or_else(|| bad("version"))?;
    let horizon = version
        .split_once(':')
        .and_then(|(_, h)| h.parse().ok())
        .unwrap_or(0);
    let mut bans = Bans {
        horizon,
        prefixes: Vec::new(),
    };
    let flat = match list {
        Value::Array(a) => a,
        // RESP3 answers HGETALL with a map.
        Value::Map(m) => m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect(),
        Value::Null => Vec::new(),
        _ => return Err(bad("list")),
    };
    if flat.is_empty() && !version.is_empty() {
        // A version without its list: the list was evicted. Ban everything stored before the
        // last ban (the version is its time in microseconds, or later).
        let last = version
            .split_once(':')
            .and_then(|(v, _)| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        bans.horizon = bans.horizon.max(last / 1000 + 1);
    }
    let mut it = flat.into_iter();
    while let (Some(p), Some(t)) = (it.next(), it.next()) {
        let p = text(p).ok_or_else(|| bad("prefix"))?;
        let t = text(t)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("time"))?;
        bans.prefixes.push((p, t));
    }
    Ok((Bytes::from(version), bans))
}
