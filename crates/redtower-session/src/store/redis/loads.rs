//! Coalesced loads: the loads that arrive while one is in flight leave together, one `load`
//! script call per slot.

use std::collections::HashMap;

use fred::error::{Error as FredError, ErrorKind as FredErrorKind};
use redtower_client::{
    Key, Redis,
    batch::{Coalescer, per_slot},
};

use super::LOAD;

/// A loaded record's data and expiry (unix ms), or `None` when missing, expired or revoked.
pub(super) type Loaded = Result<Option<(String, String)>, FredError>;
pub(super) type Loads = Coalescer<Key, Loaded>;

/// The most loads one coalesced script call carries.
pub(super) const MAX_BATCH: usize = 64;

/// Loads a batch of records: one `load` script call per slot (one on a standalone server),
/// concurrently; the replies in the batch's order.
pub(super) async fn load_batch(redis: &Redis, args: [i64; 2], batch: Vec<Key>) -> Vec<Loaded> {
    per_slot(
        batch,
        |k| redis.batch_slot(k),
        |keys| load_slot(redis, args, keys),
        || Err(short_reply()),
    )
    .await
}

/// Loads of one slot in one script call. A record asked for more than once in the batch (one
/// browser's parallel requests) is loaded once and its answer shared: the loads of a batch run
/// at one instant, so a second load would only find what the first left (touched, or deleted).
async fn load_slot(redis: &Redis, args: [i64; 2], keys: Vec<Key>) -> Vec<Loaded> {
    if keys.len() < 2 {
        return load_unique(redis, args, keys).await;
    }
    let mut first: HashMap<&Key, usize> = HashMap::with_capacity(keys.len());
    let mut unique = Vec::with_capacity(keys.len());
    let mut index = Vec::with_capacity(keys.len());
    for key in &keys {
        let next = first.len();
        let i = *first.entry(key).or_insert(next);
        if i == next {
            unique.push(key.clone());
        }
        index.push(i);
    }
    if unique.len() == keys.len() {
        drop(first);
        return load_unique(redis, args, keys).await;
    }
    let mut uses = vec![0usize; unique.len()];
    for &i in &index {
        uses[i] += 1;
    }
    let mut loaded: Vec<Option<Loaded>> = load_unique(redis, args, unique)
        .await
        .into_iter()
        .map(Some)
        .collect();
    index
        .into_iter()
        .map(|i| {
            uses[i] -= 1;
            let answer = if uses[i] == 0 {
                loaded[i].take()
            } else {
                loaded[i].clone()
            };
            answer.unwrap_or_else(|| Err(short_reply()))
        })
        .collect()
}

/// One script call loading `keys` (no key twice), the replies in their order.
async fn load_unique(redis: &Redis, args: [i64; 2], keys: Vec<Key>) -> Vec<Loaded> {
    let n = keys.len();
    let reply: Vec<String> = match LOAD.run(redis, keys, args.to_vec()).await {
        Ok(r) => r,
        Err(e) => {
            let e = e
                .as_fred()
                .cloned()
                .unwrap_or_else(|| FredError::new(FredErrorKind::Unknown, e.to_string()));
            return (0..n).map(|_| Err(e.clone())).collect();
        }
    };
    if reply.len() != 2 * n {
        return (0..n).map(|_| Err(short_reply())).collect();
    }
    let mut values = reply.into_iter();
    (0..n)
        .map(|_| match (values.next(), values.next()) {
            (Some(d), Some(e)) if !d.is_empty() => Ok(Some((d, e))),
            _ => Ok(None),
        })
        .collect()
}

pub(super) fn short_reply() -> FredError {
    FredError::new(
        FredErrorKind::Protocol,
        "session load reply shorter than its batch",
    )
}
