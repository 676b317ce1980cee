//! Coalesced reads: `GET`s that concurrent requests issue while a read of the store is in
//! flight leave together as one `MGET` (one per hash slot on a Cluster), through the client's
//! [`Coalescer`](redtower_client::batch::Coalescer).
//!
//! One queued read carries every key of one slot that a caller needs at once (a lookup's
//! entry, tag generations and ban version on a standalone server): one queue entry and one
//! reply channel per lookup, however many keys it reads.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use redtower_client::{
    Key,
    batch::{Coalescer, per_slot},
    fred::{
        clients::Client,
        error::{Error as FredError, ErrorKind as FredErrorKind},
        interfaces::{ClientLike, KeysInterface},
        types::config::Options,
    },
};

/// The most reads one coalesced `MGET` carries.
pub(crate) const MAX_BATCH: usize = 64;

/// While a batch has at most this many distinct keys they are found by a scan; past it, by a
/// map.
const SCAN_LIMIT: usize = 32;

/// The values of one read's keys, in order.
pub(crate) type Reply = Result<Vec<Option<Bytes>>, FredError>;

/// One read: its keys (all of one Cluster slot), that slot (0 on a standalone server, where
/// one `MGET` takes any keys) and when it was queued.
pub(crate) struct Read {
    keys: Vec<Key>,
    slot: u16,
    queued: Instant,
}

/// Sends batches with the store's command options; a batch's timeout is what is left of its
/// oldest read's, so a read waits at most the store's timeout in all, queue included.
#[derive(Clone)]
struct Reader {
    client: Client,
    options: Options,
    timeout: Duration,
}

/// The read queue of one store (shared by its clones).
pub(crate) struct Reads {
    coalescer: Coalescer<Read, Reply>,
    cluster: bool,
}

impl Reads {
    /// Reads through `client` with the store's command `options`, whose `timeout` bounds each
    /// read from the moment it is queued.
    pub(crate) fn new(client: Client, options: Options, cluster: bool) -> Self {
        let timeout = options.timeout.unwrap_or(Duration::from_secs(1));
        let reader = Reader {
            client,
            options,
            timeout,
        };
        Self {
            coalescer: Coalescer::new(MAX_BATCH, move |batch| {
                let reader = reader.clone();
                async move { reader.send(batch).await }
            }),
            cluster,
        }
    }

    /// Reads `keys` (any slots): one queued read per slot among them (one on a standalone
    /// server), and their values in the order of `keys`. `Err(keys)` when they could not be
    /// queued: the caller reads them on its own.
    pub(crate) async fn get_many(&self, keys: Vec<Key>) -> Result<Reply, Vec<Key>> {
        let queued = Instant::now();
        let n = keys.len();
        if n == 0 {
            return Ok(Ok(Vec::new()));
        }
        let one_slot = if self.cluster {
            let mut slots = keys.iter().map(Key::slot);
            let first = slots.next().unwrap_or(0);
            slots.all(|s| s == first).then_some(first)
        } else {
            Some(0)
        };
        if let Some(slot) = one_slot {
            let read = Read { keys, slot, queued };
            return match self.coalescer.call(read).await {
                Ok(r) => Ok(r.and_then(|v| {
                    if v.len() == n {
                        Ok(v)
                    } else {
                        Err(short_reply())
                    }
                })),
                Err(redtower_client::batch::Uncoalesced::NotSent(read)) => Err(read.keys),
                Err(redtower_client::batch::Uncoalesced::Dropped) => Ok(Err(dropped())),
            };
        }
        // A Cluster read of several slots: one queued read per slot, all queued before any is
        // awaited so they join the same batch.
        let mut groups: Vec<(u16, Vec<usize>, Vec<Key>)> = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let slot = key.slot();
            match groups.iter_mut().find(|g| g.0 == slot) {
                Some(g) => {
                    g.1.push(i);
                    g.2.push(key);
                }
                None => groups.push((slot, vec![i], vec![key])),
            }
        }
        let mut waits = Vec::with_capacity(groups.len());
        let mut groups = groups.into_iter();
        while let Some((slot, idx, keys)) = groups.next() {
            match self.coalescer.queue(Read { keys, slot, queued }) {
                Ok(wait) => waits.push((idx, Some(wait))),
                // Only before the queue's task runs (no runtime), so nothing was queued yet.
                Err(redtower_client::batch::Uncoalesced::NotSent(read)) if waits.is_empty() => {
                    let mut all: Vec<(usize, Key)> = idx.into_iter().zip(read.keys).collect();
                    all.extend(groups.flat_map(|(_, idx, keys)| idx.into_iter().zip(keys)));
                    all.sort_by_key(|(i, _)| *i);
                    return Err(all.into_iter().map(|(_, k)| k).collect());
                }
                // The queue's task went away meanwhile: this read fails like a dropped batch.
                Err(_) => waits.push((idx, None)),
            }
        }
        let mut values: Vec<Option<Bytes>> = vec![None; n];
        for (idx, wait) in waits {
            let got = match wait {
                Some(wait) => wait.await.unwrap_or_else(|| Err(dropped())),
                None => Err(dropped()),
            };
            match got {
                Ok(v) if v.len() == idx.len() => {
                    for (i, v) in idx.into_iter().zip(v) {
                        values[i] = v;
                    }
                }
                Ok(_) => return Ok(Err(short_reply())),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(values))
    }

    /// Reads `key` in the next batch. `Err(key)` when it could not be queued: the caller
    /// reads it on its own.
    pub(crate) async fn get(&self, key: Key) -> Result<Result<Option<Bytes>, FredError>, Key> {
        match self.get_many(vec![key]).await {
            Ok(values) => Ok(values.map(|mut v| v.pop().flatten())),
            Err(mut keys) => keys.pop().map_or_else(|| Ok(Err(dropped())), Err),
        }
    }
}

impl Reader {
    async fn send(&self, batch: Vec<Read>) -> Vec<Reply> {
        let now = Instant::now();
        let age = |r: &Read| now.saturating_duration_since(r.queued);
        let Some(oldest) = batch.iter().map(age).filter(|a| *a < self.timeout).max() else {
            return batch.iter().map(|_| Err(timed_out())).collect();
        };
        // The batch gets what is left of its oldest read's timeout.
        let mut options = self.options.clone();
        options.timeout = Some(self.timeout - oldest);
        let client = &self.client.with_options(&options);
        // A Cluster `MGET` takes keys of one slot: one per slot, concurrently.
        let send = |reads| one_slot(client, reads);
        if batch.iter().all(|r| age(r) < self.timeout) {
            return per_slot(batch, |r| r.slot, send, || Err(short_reply())).await;
        }
        // Reads that waited out their whole timeout in the queue fail without being sent.
        let (live, expired): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .enumerate()
            .partition(|(_, r)| age(r) < self.timeout);
        let (idx, live): (Vec<usize>, Vec<Read>) = live.into_iter().unzip();
        let mut replies: Vec<Option<Reply>> =
            (0..idx.len() + expired.len()).map(|_| None).collect();
        for (i, _) in expired {
            replies[i] = Some(Err(timed_out()));
        }
        let got = per_slot(live, |r| r.slot, send, || Err(short_reply())).await;
        for (i, r) in idx.into_iter().zip(got) {
            replies[i] = Some(r);
        }
        replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(short_reply())))
            .collect()
    }
}

fn dropped() -> FredError {
    FredError::new(FredErrorKind::Canceled, "the read's batch was dropped")
}

fn timed_out() -> FredError {
    FredError::new(FredErrorKind::Timeout, "cache read timed out in its queue")
}

fn short_reply() -> FredError {
    FredError::new(
        FredErrorKind::Protocol,
        "MGET returned fewer values than keys",
    )
}

/// One `GET` for one key, one `MGET` for several (all of one slot). A key that several reads
/// of the batch ask for is sent once and its value shared: on a hot route, the concurrent hits
/// of one URI read the same entry, tag generations and ban version, so the `MGET` carries
/// each of them once however many requests wait on it.
async fn one_slot<C: KeysInterface>(client: &C, batch: Vec<Read>) -> Vec<Reply> {
    if let [read] = batch.as_slice()
        && let [key] = read.keys.as_slice()
    {
        return vec![client.get::<Option<Bytes>, _>(key).await.map(|v| vec![v])];
    }
    // For each key of each read, the position of that key among the distinct keys sent. On a
    // hot route a batch holds a few distinct keys, and a scan of those beats hashing every
    // key; once a batch has more (reads of many tags each), they are indexed, so the cost
    // stays linear in the batch's keys.
    let mut distinct: Vec<&Key> = Vec::new();
    let mut index: Option<HashMap<&Key, usize>> = None;
    let mut positions: Vec<Vec<usize>> = Vec::with_capacity(batch.len());
    for read in &batch {
        let mut at = Vec::with_capacity(read.keys.len());
        for key in &read.keys {
            let found = match &index {
                Some(index) => index.get(key).copied(),
                None => distinct.iter().position(|k| *k == key),
            };
            let i = found.unwrap_or_else(|| {
                distinct.push(key);
                distinct.len() - 1
            });
            if let Some(index) = &mut index {
                index.insert(key, i);
            } else if distinct.len() > SCAN_LIMIT {
                index = Some(distinct.iter().enumerate().map(|(i, k)| (*k, i)).collect());
            }
            at.push(i);
        }
        positions.push(at);
    }
    let sent = distinct.len();
    let values = match distinct.as_slice() {
        [] => Ok(Vec::new()),
        [key] => client.get::<Option<Bytes>, _>(*key).await.map(|v| vec![v]),
        _ => client.mget::<Vec<Option<Bytes>>, _>(distinct).await,
    };
    match values {
        Ok(values) if values.len() == sent => positions
            .into_iter()
            .map(|p| Ok(p.into_iter().map(|i| values[i].clone()).collect()))
            .collect(),
        Ok(_) => batch.iter().map(|_| Err(short_reply())).collect(),
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
}
