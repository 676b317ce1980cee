//! Session loads through the tracked in-process tier ([`NearCache`]): a load whose record is
//! unchanged, unrevoked and not due for a touch is answered in process.
//!
//! What the tier holds, by Redis key: a record's fields the load script's fast path reads
//! (data, expiry, last seen, epoch stamp and key), and a user's revocation epoch. Both are
//! read on the tracked connection, so any change to either (a save, a touch, a logout, a
//! revoke, a revoke-all, an expiry, on any instance) drops them from every instance's tier as
//! soon as Redis' push arrives. A hit is served only under exactly the conditions of the load
//! script's fast path (which changes nothing): the record exists, its epoch stamp equals the
//! user's epoch, and its last touch is within the touch interval; otherwise the load script
//! runs as without a tier.
//!
//! On top of the raw fields, the tier keeps each served record *decoded* (its data parsed),
//! by session id, under a [`Stamp`] of the record's key and of its user's epoch key taken
//! before they were read: while neither changed, a load is a map lookup, the time checks of
//! the fast path and a copy of the data, with no key derivation and no parsing.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use fred::{
    error::Error as FredError,
    interfaces::{HashesInterface, KeysInterface},
};
use redtower_client::{Key, NearCache, NearCacheConfig, Redis, Stamp, Ticket};
use tower_sessions_core::session::{Id, Record};

/// A value of the session tier.
#[derive(Debug, Clone)]
pub(crate) enum Held {
    /// A record's fast-path fields.
    Record(Arc<RecordFields>),
    /// A user's revocation epoch (its value as Redis stores it).
    Epoch(Arc<str>),
}

#[derive(Debug)]
pub(crate) struct RecordFields {
    pub(crate) data: String,
    /// Expiry, unix ms (Redis time).
    pub(crate) expiry: i64,
    /// Last seen, unix ms (Redis time).
    seen: i64,
    /// The epoch stamp and the epoch key, for a session bound to a user.
    epoch: Option<(String, String)>,
}

/// The tier of one session store.
#[derive(Debug, Clone)]
pub(crate) struct SessionTier {
    cache: NearCache<Held>,
    /// Served records, decoded, by session id (see the module docs).
    decoded: moka::sync::Cache<Id, Decoded>,
}

/// A served record, decoded, and the stamp of the keys it was read from.
#[derive(Debug, Clone)]
struct Decoded {
    record: Arc<Record>,
    /// The size of the record's serialized data, for the map's byte budget.
    bytes: usize,
    /// Expiry and last seen, unix ms (Redis time), for the fast path's time checks.
    expiry: i64,
    seen: i64,
    stamp: Stamp,
}

/// What a load through the tier found.
pub(crate) enum Found {
    /// Answer with these fields: unchanged, unrevoked, no touch due; with the stamp of the
    /// keys they were read from, when the tier served throughout.
    Hit(Arc<RecordFields>, Option<Stamp>),
    /// The record does not exist.
    Missing,
    /// Run the load script (a touch is due, the epoch differs, or the tier is not serving).
    Script,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Clocks of the app and of Redis may differ a little: a record within this margin of its
/// expiry is left to the script, which uses Redis `TIME`.
const SKEW_MS: i64 = 250;

/// The fast path's time checks, on this process' clock: the record is not within the margin
/// of its expiry, and no touch is due. The touch has no margin: when this clock says a touch
/// is due, the script runs, and it touches once Redis' clock agrees (at once, with the clocks
/// in step); a margin here would send every load of a hot session to the script, which does
/// not touch yet, for that margin of each touch interval. A clock behind Redis' only delays a
/// touch (last seen and the idle slide) by the difference.
fn in_time(now: i64, expiry: i64, seen: i64, touch_ms: i64) -> bool {
    now + SKEW_MS < expiry && now - seen < touch_ms
}

impl SessionTier {
    pub(crate) fn new(redis: &Redis, config: NearCacheConfig) -> redtower_client::Result<Self> {
        let decoded = {
            let config = config.clone();
            moka::sync::Cache::builder()
                .max_capacity(config.bytes())
                .time_to_live(config.age())
                // The parsed data weighs about twice its JSON.
                .weigher(move |_: &Id, d: &Decoded| config.weight(d.bytes as u64 * 2 + 256))
                .build()
        };
        let cache = NearCache::new(redis, config, |held: &Held| match held {
            Held::Record(r) => r.data.len() + 64,
            Held::Epoch(e) => e.len(),
        })?;
        Ok(Self { cache, decoded })
    }

    /// The record of `id`, decoded, when the tier served it before, neither its record nor
    /// its user's epoch changed since, and the fast path's time checks pass now.
    pub(crate) fn decoded(&self, id: &Id, touch_ms: i64) -> Option<Record> {
        let d = self.decoded.get(id)?;
        let now = now_ms();
        if !in_time(now, d.expiry, d.seen, touch_ms) {
            return None;
        }
        if !d.stamp.is_current() {
            self.decoded.invalidate(id);
            return None;
        }
        self.cache.count_derived_hit();
        Some(Record::clone(&d.record))
    }

    /// Keeps `record`, served from `fields` read under `stamp`, for [`decoded`](Self::decoded).
    pub(crate) fn keep(&self, record: &Record, fields: &RecordFields, stamp: Stamp) {
        let decoded = Decoded {
            record: Arc::new(record.clone()),
            bytes: fields.data.len(),
            expiry: fields.expiry,
            seen: fields.seen,
            stamp,
        };
        self.decoded.insert(record.id, decoded);
    }

    pub(crate) fn cache(&self) -> &NearCache<Held> {
        &self.cache
    }

    /// Drops `key` here at once (this instance's own write).
    pub(crate) fn forget(&self, key: &Key) {
        self.cache.invalidate(key.as_str());
    }

    /// Whether `fields` may be served now without the script.
    fn servable(&self, fields: &RecordFields, touch_ms: i64) -> Option<bool> {
        let now = now_ms();
        if !in_time(now, fields.expiry, fields.seen, touch_ms) {
            return Some(false);
        }
        match &fields.epoch {
            None => Some(true),
            Some((stamp, key)) => match self.cache.get(key) {
                Some(Held::Epoch(current)) => Some(*current == **stamp),
                // Unknown here: read it.
                _ => None,
            },
        }
    }

    /// A load through the tier: a hit, or one tracked `HMGET` (plus one tracked `GET` of the
    /// user's epoch when this tier does not hold it).
    pub(crate) async fn load(&self, key: &Key, touch_ms: i64) -> Result<Found, FredError> {
        // Taken before the record's read (from the map or from Redis); the epoch key's own
        // stamp is added once the record names it.
        let record_stamp = self.cache.stamp([key.as_str()]);
        if let Some(Held::Record(fields)) = self.cache.get(key.as_str()) {
            let stamp = self.with_epoch(record_stamp.clone(), &fields);
            match self.servable(&fields, touch_ms) {
                Some(true) => return Ok(Found::Hit(fields, stamp)),
                Some(false) => return Ok(Found::Script),
                None => {}
            }
        }
        let ticket = self.cache.ticket(key.as_str());
        if !ticket.is_tracked() {
            return Ok(Found::Script);
        }
        let client = self.cache.client_for(&ticket);
        let f: Vec<Option<String>> = client
            .hmget(key.as_str(), vec!["d", "e", "a", "g", "gk"])
            .await?;
        let mut f = f.into_iter();
        let mut next = || f.next().flatten();
        let (Some(data), expiry, seen, stamp, epoch_key) = (next(), next(), next(), next(), next())
        else {
            return Ok(Found::Missing);
        };
        let parse = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok());
        let (Some(expiry), Some(seen)) = (parse(expiry), parse(seen)) else {
            return Ok(Found::Script);
        };
        let fields = Arc::new(RecordFields {
            data,
            expiry,
            seen,
            epoch: stamp.zip(epoch_key),
        });
        let stamp = self.with_epoch(record_stamp, &fields);
        if let Some((_, epoch_key)) = &fields.epoch
            && self.cache.get(epoch_key).is_none()
        {
            self.read_epoch(epoch_key).await?;
        }
        match self.servable(&fields, touch_ms) {
            Some(true) => {
                self.cache
                    .insert(ticket, key.as_str(), Held::Record(fields.clone()));
                Ok(Found::Hit(fields, stamp))
            }
            _ => Ok(Found::Script),
        }
    }

    /// `stamp` (of the record's key) and a stamp of the epoch key `fields` name, taken now:
    /// before the epoch is read from the map or from Redis.
    fn with_epoch(&self, stamp: Option<Stamp>, fields: &RecordFields) -> Option<Stamp> {
        let stamp = stamp?;
        match &fields.epoch {
            None => Some(stamp),
            Some((_, epoch_key)) => Some(stamp.and(&self.cache.stamp([epoch_key.as_str()])?)),
        }
    }

    /// Reads a user's epoch on the tracked connection and keeps it unless a change raced the
    /// read.
    async fn read_epoch(&self, epoch_key: &str) -> Result<(), FredError> {
        let ticket: Ticket = self.cache.ticket(epoch_key);
        if !ticket.is_tracked() {
            return Ok(());
        }
        let value: Option<String> = self.cache.client_for(&ticket).get(epoch_key).await?;
        if let Some(value) = value {
            self.cache
                .insert(ticket, epoch_key, Held::Epoch(Arc::from(value.as_str())));
        }
        Ok(())
    }
}
