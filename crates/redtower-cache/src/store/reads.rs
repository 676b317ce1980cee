//! Coalesced reads: `GET`s that concurrent requests issue while a read of the store is in
//! flight leave together as one `MGET` (one per hash slot on a Cluster), through the client's
//! [`Coalescer`].

use bytes::Bytes;
use redtower_client::{
    Coalescer, Key,
    fred::{
        clients::{Client, WithOptions},
        error::{Error as FredError, ErrorKind as FredErrorKind},
        interfaces::KeysInterface,
    },
};

/// The most keys one coalesced `MGET` carries.
pub(crate) const MAX_BATCH: usize = 64;

pub(crate) type Reply = Result<Option<Bytes>, FredError>;
type Reader = WithOptions<Client>;

/// One read: the key and its Cluster slot (0 on a standalone server, where one `MGET` takes
/// any keys).
pub(crate) struct Read {
    pub(crate) key: Key,
    slot: u16,
}

/// The read queue of one store (shared by its clones).
pub(crate) struct Reads {
    coalescer: Coalescer<Read, Reply>,
    cluster: bool,
}

impl Reads {
    /// Reads through `client` (which carries the store's command options).
    pub(crate) fn new(client: Reader, cluster: bool) -> Self {
        Self {
            coalescer: Coalescer::new(MAX_BATCH, move |batch| {
                let client = client.clone();
                async move { send(&client, batch).await }
            }),
            cluster,
        }
    }

    /// Reads `key` in the next batch. `Err(key)` when it could not be queued: the caller
    /// reads it on its own.
    pub(crate) async fn get(&self, key: Key) -> Result<Reply, Key> {
        let slot = if self.cluster { key.slot() } else { 0 };
        match self.coalescer.call(Read { key, slot }).await {
            Ok(r) => Ok(r),
            Err(redtower_client::Uncoalesced::NotSent(read)) => Err(read.key),
            Err(redtower_client::Uncoalesced::Dropped) => Ok(Err(FredError::new(
                FredErrorKind::Canceled,
                "the read's batch was dropped",
            ))),
        }
    }
}

async fn send(client: &Reader, batch: Vec<Read>) -> Vec<Reply> {
    let n = batch.len();
    let first = batch.first().map_or(0, |r| r.slot);
    if batch.iter().all(|r| r.slot == first) {
        return one_slot(client, batch).await;
    }
    // A Cluster `MGET` takes keys of one slot: one per slot, concurrently, then the replies
    // back in arrival order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| batch[i].slot);
    let mut slots: Vec<Option<Read>> = batch.into_iter().map(Some).collect();
    let mut groups: Vec<(Vec<usize>, Vec<Read>)> = Vec::new();
    for i in order {
        let read = slots[i]
            .take()
            .unwrap_or_else(|| unreachable!("each index once"));
        match groups.last_mut() {
            Some((idx, reads)) if reads[0].slot == read.slot => {
                idx.push(i);
                reads.push(read);
            }
            _ => groups.push((vec![i], vec![read])),
        }
    }
    let mut replies: Vec<Option<Reply>> = (0..n).map(|_| None).collect();
    let sent = groups
        .into_iter()
        .map(|(idx, reads)| async move { (idx, one_slot(client, reads).await) });
    for (idx, got) in futures::future::join_all(sent).await {
        for (i, r) in idx.into_iter().zip(got) {
            replies[i] = Some(r);
        }
    }
    replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(short_reply())))
        .collect()
}

fn short_reply() -> FredError {
    FredError::new(
        FredErrorKind::Protocol,
        "MGET returned fewer values than keys",
    )
}

/// One `GET` for one key, one `MGET` for several (all of one slot).
async fn one_slot(client: &Reader, batch: Vec<Read>) -> Vec<Reply> {
    if let [read] = batch.as_slice() {
        return vec![client.get::<Option<Bytes>, _>(&read.key).await];
    }
    let n = batch.len();
    let keys: Vec<&Key> = batch.iter().map(|r| &r.key).collect();
    match client.mget::<Vec<Option<Bytes>>, _>(keys).await {
        Ok(values) if values.len() == n => values.into_iter().map(Ok).collect(),
        Ok(_) => (0..n).map(|_| Err(short_reply())).collect(),
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}
