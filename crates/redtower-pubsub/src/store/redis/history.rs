//! Reading one channel's history (the `pubsub_history` script) and judging whether it covers
//! a gap.

use std::sync::Arc;

use fred::types::Value;
use redtower_client::{Key, Redis, TraceContext};

use super::HISTORY;
use crate::{Channel, Event, EventId, Replay, ReplayLimit, Result};

/// Reads one channel's history.
#[derive(Clone)]
pub(super) struct History {
    redis: Redis,
    channel: Channel,
    meta: Key,
    stream: Key,
}

struct Read {
    /// `None` when the channel has no history at all.
    epoch: Option<Arc<str>>,
    top: u64,
    events: Vec<Arc<Event>>,
    /// The events wanted hold more bytes than the limit (none were returned).
    too_big: bool,
}

impl History {
    /// The history of `channel`, whose keys are `<tag>:m` (meta) and `<tag>:h` (stream).
    pub(super) fn new(redis: Redis, channel: Channel, tag: Key) -> Self {
        Self {
            redis,
            channel,
            meta: tag.clone().push("m"),
            stream: tag.push("h"),
        }
    }

    /// The channel.
    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The channel's epoch and last offset, and the events from offset `from` on when they are
    /// in `epoch` (any when `None`) and fit `limit` (nothing is read otherwise).
    async fn read(&self, epoch: Option<&str>, from: u64, limit: ReplayLimit) -> Result<Read> {
        self.redis.first_connection().await?;
        let reply: Value = HISTORY
            .run(
                &self.redis,
                vec![self.meta.clone(), self.stream.clone()],
                vec![
                    epoch.unwrap_or("").to_owned(),
                    from.to_string(),
                    limit.events.to_string(),
                    limit.bytes.to_string(),
                ],
            )
            .await?;
        self.decode(reply)
    }

    fn decode(&self, reply: Value) -> Result<Read> {
        let bad = || redtower_client::Error::reply("unexpected pubsub_history reply");
        let mut parts = reply.into_array().into_iter();
        let (Some(epoch), Some(top), Some(entries)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad().into());
        };
        let too_big = parts.next().and_then(|v| v.as_u64()) == Some(1);
        let epoch = epoch.into_string().ok_or_else(bad)?;
        let top = top.as_u64().ok_or_else(bad)?;
        if epoch.is_empty() {
            return Ok(Read {
                epoch: None,
                top: 0,
                events: Vec::new(),
                too_big: false,
            });
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let mut events = Vec::new();
        for entry in entries.into_array() {
            let mut entry = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
                return Err(bad().into());
            };
            let id = id.into_string().ok_or_else(bad)?;
            let offset = id
                .split_once('-')
                .and_then(|(o, _)| o.parse::<u64>().ok())
                .ok_or_else(bad)?;
            let mut fields = fields.into_array().into_iter();
            let (mut data, mut trace) = (None, None);
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                match k.as_str().as_deref() {
                    Some("d") => data = v.into_string(),
                    // A bad context is dropped, never the event.
                    Some("t") => trace = v.as_str().and_then(|t| TraceContext::decode(&t)),
                    _ => {}
                }
            }
            let data = data.ok_or_else(bad)?;
            events.push(Arc::new(
                Event::new(
                    EventId::from_parts(epoch.clone(), offset),
                    self.channel.clone(),
                    Arc::from(data),
                )
                .with_trace(trace),
            ));
        }
        Ok(Read {
            epoch: Some(epoch),
            top,
            events,
            too_big,
        })
    }

    pub(super) async fn latest(&self) -> Result<Option<EventId>> {
        let read = self.read(None, 1, ReplayLimit::new(0, 0)).await?;
        Ok(read
            .epoch
            .filter(|_| read.top > 0)
            .map(|e| EventId::from_parts(e, read.top)))
    }

    /// The events after `after` (epoch, offset), within `limit`.
    pub(super) async fn replay(&self, after: &EventId, limit: ReplayLimit) -> Result<Replay> {
        let read = self
            .read(Some(after.epoch()), after.offset().saturating_add(1), limit)
            .await?;
        Ok(judge(read, after, limit))
    }
}

fn judge(read: Read, after: &EventId, limit: ReplayLimit) -> Replay {
    let Some(epoch) = read.epoch else {
        return Replay::Gap { latest: None };
    };
    let latest = (read.top > 0).then(|| EventId::from_parts(epoch.clone(), read.top));
    if *epoch != *after.epoch() || read.top < after.offset() {
        return Replay::Gap { latest };
    }
    let missing = read.top - after.offset();
    if missing == 0 {
        return Replay::Events(Vec::new());
    }
    // `after.offset() < read.top` here, so the next offset exists.
    let next = after.offset().saturating_add(1);
    let complete = !read.too_big
        && missing <= limit.events as u64
        && read.events.first().map(|e| e.id().offset()) == Some(next)
        && read.events.len() as u64 >= missing;
    if !complete {
        return Replay::Gap { latest };
    }
    let mut events = read.events;
    events.truncate(usize::try_from(missing).unwrap_or(usize::MAX));
    Replay::Events(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(epoch: &str, top: u64, first: u64, n: u64, too_big: bool) -> Read {
        let epoch: Arc<str> = Arc::from(epoch);
        let channel = Channel::new("c").unwrap();
        let events = (0..n)
            .map_while(|i| first.checked_add(i))
            .map(|o| {
                Arc::new(Event::new(
                    EventId::from_parts(epoch.clone(), o),
                    channel.clone(),
                    Arc::from("{}"),
                ))
            })
            .collect();
        Read {
            epoch: Some(epoch),
            top,
            events,
            too_big,
        }
    }

    #[test]
    fn judging_a_replay_at_the_edges() {
        let max = u64::MAX;
        let at = |o| EventId::new("e", o).unwrap();
        let limit = ReplayLimit::new(10, usize::MAX);
        let gap = |r: Replay| matches!(r, Replay::Gap { .. });
        assert!(gap(judge(read("e", 5, 0, 0, false), &at(max), limit)));
        assert!(gap(judge(read("f", 5, 0, 0, false), &at(1), limit)));
        assert!(gap(judge(
            read("e", max, max, 1, false),
            &at(max - 100),
            limit
        )));
        assert_eq!(
            judge(read("e", max, max, 1, false), &at(max - 1), limit),
            Replay::Events(read("e", max, max, 1, false).events)
        );
        assert_eq!(
            judge(read("e", max, 0, 0, false), &at(max), limit),
            Replay::Events(Vec::new())
        );
        assert!(gap(judge(read("e", 5, 3, 3, true), &at(2), limit)));
    }

    proptest::proptest! {
        /// Any reply and cursor: no panic, and events only when they cover the gap exactly.
        #[test]
        fn judge_never_panics(top: u64, first: u64, n in 0u64..20, after: u64, events in 0usize..20, too_big: bool) {
            let after = EventId::new("e", after).unwrap();
            let r = judge(read("e", top, first, n, too_big), &after, ReplayLimit::new(events, usize::MAX));
            if let Replay::Events(got) = r {
                let mut expected = after.offset();
                for e in &got {
                    expected += 1;
                    proptest::prop_assert_eq!(e.id().offset(), expected);
                }
                proptest::prop_assert_eq!(expected, top);
            }
        }
    }
}
