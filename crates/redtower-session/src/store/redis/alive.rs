//! Liveness checks for revocation watches: which of a batch of watched sessions still live.

use std::collections::HashMap;

use fred::types::Value;
use redtower_client::{Key, Redis, batch::per_slot};

use super::ALIVE;

/// The most records one liveness check script call reads.
const MAX_ALIVE_BATCH: usize = 500;

/// Which of `keys` are live sessions. A session whose check failed (Redis down) counts as
/// live: an outage ends no session.
///
/// Standalone: one `alive` script call per 500 keys, all sent at once (one round trip). On a
/// Cluster the watched sessions of many users spread over many slots, and a script call takes
/// keys of one slot only, so it reads with plain commands instead, auto-pipelined per node: one
/// `HMGET` per record, then one `GET` per distinct epoch key of the bound ones (two round
/// trips, no script per slot).
pub(super) async fn alive_batch(redis: &Redis, keys: Vec<Key>) -> Option<Vec<bool>> {
    if redis.is_cluster() {
        return Some(alive_by_commands(redis, keys).await);
    }
    let out = per_slot(
        keys,
        |k| redis.batch_slot(k),
        |group: Vec<Key>| async move {
            let n = group.len();
            let calls = group.chunks(MAX_ALIVE_BATCH).map(|chunk| async move {
                match ALIVE
                    .run::<Vec<i64>, _, _>(redis, chunk.to_vec(), Vec::<Value>::new())
                    .await
                {
                    Ok(r) if r.len() == chunk.len() => r.into_iter().map(|v| v == 1).collect(),
                    Ok(_) => vec![true; chunk.len()],
                    Err(e) => {
                        tracing::debug!(target: "redtower::session", error = %e, "session watch check failed; retrying");
                        vec![true; chunk.len()]
                    }
                }
            });
            let mut out: Vec<bool> = futures::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect();
            out.resize(n, true);
            out
        },
        || true,
    )
    .await;
    Some(out)
}

async fn alive_by_commands(redis: &Redis, keys: Vec<Key>) -> Vec<bool> {
    use fred::interfaces::{HashesInterface as _, KeysInterface as _};
    let client = redis.client();
    let records = futures::future::join_all(keys.iter().map(|k| async move {
        client
            .hmget::<Vec<Option<String>>, _, _>(k.as_str(), vec!["e", "g", "gk"])
            .await
    }))
    .await;
    let mut epochs: HashMap<String, Option<Option<String>>> = HashMap::new();
    let records: Vec<Seen> = records
        .into_iter()
        .map(|r| match r {
            Err(e) => {
                tracing::debug!(target: "redtower::session", error = %e, "session watch check failed; retrying");
                Seen::Unknown
            }
            Ok(f) => {
                let mut f = f.into_iter();
                let (e, g, gk) = (f.next().flatten(), f.next().flatten(), f.next().flatten());
                match (e, g, gk) {
                    (None, _, _) => Seen::Gone,
                    (Some(_), Some(g), Some(gk)) => {
                        epochs.entry(gk.clone()).or_insert(None);
                        Seen::Bound { g, gk }
                    }
                    (Some(_), _, _) => Seen::Unbound,
                }
            }
        })
        .collect();
    let read = futures::future::join_all(epochs.keys().map(|gk| async move {
        (
            gk.clone(),
            client.get::<Option<String>, _>(gk.as_str()).await.ok(),
        )
    }))
    .await;
    for (gk, value) in read {
        epochs.insert(gk, value);
    }
    records
        .into_iter()
        .map(|r| match r {
            Seen::Unknown | Seen::Unbound => true,
            Seen::Gone => false,
            Seen::Bound { g, gk } => match epochs.get(&gk) {
                // The epoch could not be read: keep watching.
                Some(None) | None => true,
                Some(Some(current)) => current.as_deref() == Some(g.as_str()),
            },
        })
        .collect()
}

/// What one `HMGET` of a watched record showed.
enum Seen {
    /// The read failed.
    Unknown,
    /// No record: deleted, revoked or expired.
    Gone,
    /// A live record bound to no user.
    Unbound,
    /// A record bound to a user: its epoch stamp and the epoch key.
    Bound { g: String, gk: String },
}
