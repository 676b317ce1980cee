//! The two stores and what they share.

use std::{collections::HashMap, time::Duration};

use tower_sessions_core::session_store;

use crate::{Error, outcome};

pub(crate) mod any;
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod watch;

/// Timeouts and limits shared by both stores.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) idle: Option<Duration>,
    pub(crate) absolute: Duration,
    pub(crate) max_data: usize,
    pub(crate) touch_interval: Duration,
    pub(crate) max_per_user: usize,
    pub(crate) max_watches: usize,
    pub(crate) watch_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idle: None,
            absolute: DEFAULT_ABSOLUTE,
            max_data: DEFAULT_MAX_DATA,
            touch_interval: DEFAULT_TOUCH_INTERVAL,
            max_per_user: DEFAULT_MAX_PER_USER,
            max_watches: DEFAULT_MAX_WATCHES,
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

pub(crate) const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(7 * 24 * 3600);
pub(crate) const DEFAULT_MAX_DATA: usize = 16 * 1024;
pub(crate) const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_MAX_PER_USER: usize = 100;
pub(crate) const DEFAULT_MAX_WATCHES: usize = 10_000;
pub(crate) const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Policy {
    pub(crate) fn idle_ms(&self) -> i64 {
        self.idle.map_or(0, ms)
    }

    pub(crate) fn encode(
        &self,
        data: &HashMap<String, serde_json::Value>,
    ) -> Result<String, Error> {
        let text = serde_json::to_string(data)?;
        if text.len() > self.max_data {
            return Err(Error::TooLarge {
                size: text.len(),
                max: self.max_data,
            });
        }
        Ok(text)
    }

    /// The expiry of a write: the record's wish, capped by the absolute deadline and the idle
    /// timeout.
    pub(crate) fn expiry(&self, wanted: i64, absolute_deadline: i64, now: i64) -> i64 {
        let mut e = wanted.min(absolute_deadline);
        if let Some(idle) = self.idle {
            e = e.min(now.saturating_add(ms(idle)));
        }
        e
    }
}

/// Converts our error for the `SessionStore` interface, flagging it for the layer first.
pub(crate) fn to_store_error(err: Error) -> session_store::Error {
    outcome::record(&err);
    match err {
        Error::Encoding(e) => session_store::Error::Encode(e.to_string()),
        other => session_store::Error::Backend(other.to_string()),
    }
}

pub(crate) fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_unix_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
