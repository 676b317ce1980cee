//! Coalesced reads: `GET`s that concurrent requests issue while a read of the store is in
//! flight leave together as one `MGET` (one per hash slot on a Cluster), through the client's
//! [`Coalescer`](redtower_client::batch::Coalescer).

use std::time::{Duration, Instant};

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

/// The most keys one coalesced `MGET` carries.
pub(crate) const MAX_BATCH: usize = 64;

pub(crate) type Reply = Result<Option<Bytes>, FredError>;

/// One read: the key, its Cluster slot (0 on a standalone server, where one `MGET` takes any
/// keys) and when it was queued.
pub(crate) struct Read {
    pub(crate) key: Key,
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

    /// Queues reads of `keys` for the next batch at once (one batch on a standalone
    /// server) and returns their replies in order. `Err(keys)` when they could not be queued:
    /// the caller reads them on its own.
    pub(crate) async fn get_many(&self, keys: Vec<Key>) -> Result<Vec<Reply>, Vec<Key>> {
        let queued_at = Instant::now();
        let mut waits = Vec::with_capacity(keys.len());
        let mut keys = keys.into_iter();
        while let Some(key) = keys.next() {
            let slot = if self.cluster { key.slot() } else { 0 };
            let read = Read {
                key,
                slot,
                queued: queued_at,
            };
            match self.coalescer.queue(read) {
                Ok(wait) => waits.push(Some(wait)),
                // Only before the queue's task runs (no runtime), so nothing was queued yet.
                Err(redtower_client::batch::Uncoalesced::NotSent(read)) if waits.is_empty() => {
                    return Err(std::iter::once(read.key).chain(keys).collect());
                }
                // The queue's task went away meanwhile: this read fails like a dropped batch.
                Err(_) => waits.push(None),
            }
        }
        let mut replies = Vec::with_capacity(waits.len());
        for wait in waits {
            replies.push(match wait {
                Some(wait) => wait.await.unwrap_or_else(|| Err(dropped())),
                None => Err(dropped()),
            });
        }
        Ok(replies)
    }

    /// Reads `key` in the next batch. `Err(key)` when it could not be queued: the caller
    /// reads it on its own.
    pub(crate) async fn get(&self, key: Key) -> Result<Reply, Key> {
        let slot = if self.cluster { key.slot() } else { 0 };
        let read = Read {
            key,
            slot,
            queued: Instant::now(),
        };
        match self.coalescer.call(read).await {
            Ok(r) => Ok(r),
            Err(redtower_client::batch::Uncoalesced::NotSent(read)) => Err(read.key),
            Err(redtower_client::batch::Uncoalesced::Dropped) => Ok(Err(dropped())),
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
/// of the batch ask for is sent once and its reply shared: on a hot route, the concurrent hits
/// of one URI read the same entry, tag generations and ban version, so the `MGET` carries
/// each of them once however many requests wait on it.
async fn one_slot<C: KeysInterface>(client: &C, batch: Vec<Read>) -> Vec<Reply> {
    if let [read] = batch.as_slice() {
        return vec![client.get::<Option<Bytes>, _>(&read.key).await];
    }
    let n = batch.len();
    // For each read, the position of its key among the distinct keys sent. A batch holds at
    // most `MAX_BATCH` reads and, on a hot route, a few distinct keys: a scan of those beats
    // hashing every key.
    let mut distinct: Vec<&Key> = Vec::with_capacity(n);
    let slots: Vec<usize> = batch
        .iter()
        .map(|r| {
            distinct
                .iter()
                .position(|k| *k == &r.key)
                .unwrap_or_else(|| {
                    distinct.push(&r.key);
                    distinct.len() - 1
                })
        })
        .collect();
    let sent = distinct.len();
    let values = if sent == 1 {
        client
            .get::<Option<Bytes>, _>(distinct[0])
            .await
            .map(|v| vec![v])
    } else {
        client.mget::<Vec<Option<Bytes>>, _>(distinct).await
    };
    match values {
        Ok(values) if values.len() == sent => {
            slots.into_iter().map(|i| Ok(values[i].clone())).collect()
        }
        Ok(_) => (0..n).map(|_| Err(short_reply())).collect(),
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}
