//! A queue's event stream: `XREAD BLOCK` on a dedicated connection.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::{ClientLike, StreamsInterface},
    types::{Value, config::Options},
};
use futures::stream::{self, BoxStream, StreamExt};
use redtower_client::{Key, Redis};

use crate::{
    Error, Result,
    event::{EventKind, QueueEvent},
    job::JobId,
};

/// The events of the stream at `key` from now on (see
/// [`QueueStore::events`](crate::QueueStore::events)).
pub(super) async fn read(redis: Redis, key: Key) -> Result<BoxStream<'static, Result<QueueEvent>>> {
    redis.first_connection().await?;
    // Start after the newest entry now, so nothing that happens after this call is missed.
    let last: Value = redis
        .client()
        .xrevrange(key.as_str(), "+", "-", Some(1))
        .await
        .map_err(redtower_client::Error::from)?;
    let last = last
        .into_array()
        .into_iter()
        .next()
        .and_then(|e| e.into_array().into_iter().next())
        .and_then(Value::into_string)
        .unwrap_or_else(|| "0-0".to_owned());
    let state = (redis, None::<QuitOnDrop>, key, last);
    Ok(
        stream::unfold(state, |(redis, client, key, last)| async move {
            let client = match client {
                Some(c) => c,
                None => match redis.dedicated() {
                    Ok(c) => QuitOnDrop(c),
                    Err(e) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Some((vec![Err(Error::from(e))], (redis, None, key, last)));
                    }
                },
            };
            let opts = Options {
                timeout: Some(Duration::from_secs(7)),
                max_attempts: Some(1),
                ..Options::default()
            };
            let reply: std::result::Result<Value, _> = client
                .0
                .with_options(&opts)
                .xread(Some(100), Some(5_000), key.as_str(), last.as_str())
                .await;
            match reply {
                Ok(v) => {
                    let (events, next) = parse_xread(v, &last);
                    Some((
                        events.into_iter().map(Ok).collect(),
                        (redis, Some(client), key, next),
                    ))
                }
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((
                        vec![Err(Error::from(redtower_client::Error::from(e)))],
                        (redis, Some(client), key, last),
                    ))
                }
            }
        })
        .flat_map(stream::iter)
        .boxed(),
    )
}

// XREAD reply: [[key, [[id, [f, v, ...]], ...]]] (or a map key -> entries on RESP3).
fn parse_xread(v: Value, last: &str) -> (Vec<QueueEvent>, String) {
    let mut out = Vec::new();
    let mut next = last.to_owned();
    let streams = match v {
        Value::Map(m) => m.inner().into_values().collect::<Vec<_>>(),
        Value::Array(a) => a
            .into_iter()
            .filter_map(|s| s.into_array().into_iter().nth(1))
            .collect(),
        _ => Vec::new(),
    };
    for entries in streams {
        for entry in entries.into_array() {
            let mut e = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (e.next(), e.next()) else {
                continue;
            };
            if let Some(id) = id.into_string() {
                next = id;
            }
            // An entry is one event (`e`, `id`, `name`, `attempt`[, `error`]) or, for
            // completions, `e` followed by (`id`, `name`, `attempt`) per job: each `id` starts
            // the next event.
            let mut kind = None;
            let mut current: Option<QueueEvent> = None;
            let flat: Vec<Value> = match fields {
                Value::Map(m) => m
                    .inner()
                    .into_iter()
                    .flat_map(|(k, v)| [Value::from(k.into_string().unwrap_or_default()), v])
                    .collect(),
                other => other.into_array(),
            };
            let mut it = flat.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                let v = v.as_string().unwrap_or_default();
                let f = f.as_string().unwrap_or_default();
                if f == "e" {
                    kind = EventKind::from_code(&v);
                    continue;
                }
                let Some(kind) = kind else { continue };
                if f == "id" {
                    out.extend(current.take());
                    current = Some(QueueEvent {
                        kind,
                        id: JobId::new(v),
                        name: String::new(),
                        attempt: 0,
                        error: None,
                    });
                    continue;
                }
                let Some(ev) = current.as_mut() else { continue };
                match f.as_str() {
                    "name" => ev.name = v,
                    "attempt" => ev.attempt = v.parse().unwrap_or(0),
                    "error" => ev.error = Some(v),
                    _ => {}
                }
            }
            out.extend(current);
        }
    }
    (out, next)
}

/// A dedicated connection closed when the stream reading from it is dropped.
#[derive(Debug)]
struct QuitOnDrop(Client);

impl Drop for QuitOnDrop {
    fn drop(&mut self) {
        let c = self.0.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = c.quit().await;
            });
        }
    }
}
