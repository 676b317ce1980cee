//! The task of one subscribed channel: orders, de-duplicates and repairs what the Redis
//! subscription delivers, then broadcasts it to the process's subscribers.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use redtower_client::TraceContext;
use tokio::sync::{broadcast, mpsc};

use super::{TARGET, history::History, hub::Counters};
use crate::{Event, EventId, Replay, store::Delivery};

/// What the hub sends to a channel's task.
pub(super) enum Msg {
    /// The channel's newest id when the subscription was confirmed.
    Init(Option<EventId>),
    /// A pub/sub message.
    Raw(String),
    /// Check the history for events the subscription may have missed.
    Repair,
}

/// One task per subscribed channel: orders, de-duplicates and repairs what the subscription
/// delivers, then broadcasts it to the local subscribers.
pub(super) struct ChannelTask {
    history: History,
    stats: Arc<Counters>,
    tx: broadcast::Sender<Delivery>,
    last: Option<EventId>,
    repair_limit: usize,
}

impl ChannelTask {
    /// Starts the task of the channel `history` reads, broadcasting on `tx`, and returns its
    /// inbox. The task buffers messages until [`Msg::Init`] and ends when the inbox is dropped.
    pub(super) fn spawn(
        history: History,
        stats: Arc<Counters>,
        tx: broadcast::Sender<Delivery>,
        repair_limit: usize,
    ) -> mpsc::UnboundedSender<Msg> {
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let task = Self {
            history,
            stats,
            tx,
            last: None,
            repair_limit,
        };
        tokio::spawn(run(task, inbox_rx));
        inbox
    }
}

async fn run(mut task: ChannelTask, mut inbox: mpsc::UnboundedReceiver<Msg>) {
    let mut pending: Option<Vec<String>> = Some(Vec::new());
    while let Some(msg) = inbox.recv().await {
        match msg {
            Msg::Init(latest) => {
                task.last = latest;
                for raw in pending.take().unwrap_or_default() {
                    task.on_raw(&raw).await;
                }
            }
            Msg::Raw(raw) => match &mut pending {
                Some(buffer) => buffer.push(raw),
                None => task.on_raw(&raw).await,
            },
            Msg::Repair if pending.is_none() => {
                let after = match &task.last {
                    Some(last) => Some(last.clone()),
                    None => task.history.latest().await.ok().flatten().map(|l| {
                        // Nothing was seen since subscribing to a channel without history:
                        // everything in the current epoch is new.
                        EventId::from_parts(l.epoch_arc().clone(), 0)
                    }),
                };
                if let Some(after) = after {
                    task.repair(&after).await;
                }
            }
            Msg::Repair => {}
        }
    }
}

impl ChannelTask {
    async fn on_raw(&mut self, raw: &str) {
        let Some((id, data, trace)) = parse_message(raw) else {
            tracing::warn!(target: TARGET, channel = %self.history.channel(), "ignoring a malformed pub/sub message");
            return;
        };
        let expected = match &self.last {
            Some(last) if last.epoch() == id.epoch() => {
                if id.offset() <= last.offset() {
                    return; // already delivered (by a repair)
                }
                // `last.offset() < id.offset()`, so this cannot overflow.
                last.offset().saturating_add(1)
            }
            _ => 1,
        };
        if id.offset() != expected {
            let after = EventId::from_parts(id.epoch_arc().clone(), expected - 1);
            self.repair(&after).await;
            if self
                .last
                .as_ref()
                .is_some_and(|l| l.epoch() == id.epoch() && l.offset() >= id.offset())
            {
                return;
            }
        }
        let event = Event::new(id.clone(), self.history.channel().clone(), Arc::from(data))
            .with_trace(trace);
        self.last = Some(id);
        let _ = self.tx.send(Delivery::Event(Arc::new(event)));
    }

    /// Delivers the events after `after` from the history; tells subscribers to resync when
    /// the history cannot cover them.
    async fn repair(&mut self, after: &EventId) {
        // The read is idempotent: retry a failed one a few times (a reconnect in progress)
        // before telling subscribers that events were lost.
        let mut result = self.history.replay(after, self.repair_limit.into()).await;
        for wait_ms in [50, 200, 500] {
            match &result {
                Err(crate::Error::Redis(_)) => {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    result = self.history.replay(after, self.repair_limit.into()).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(Replay::Events(events)) => {
                if !events.is_empty() {
                    metrics::counter!("redtower_pubsub_repaired_total")
                        .increment(events.len() as u64);
                    self.stats
                        .repaired
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    tracing::debug!(target: TARGET, channel = %self.history.channel(), events = events.len(), "repaired a gap from history");
                }
                for event in events {
                    self.last = Some(event.id().clone());
                    let _ = self.tx.send(Delivery::Event(event));
                }
            }
            Ok(Replay::Gap { latest }) => {
                tracing::warn!(target: TARGET, channel = %self.history.channel(), "events lost and not in history: subscribers resync");
                metrics::counter!("redtower_pubsub_lost_total").increment(1);
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                self.last = latest.clone();
                let _ = self.tx.send(Delivery::Lost { latest });
            }
            Err(error) => {
                tracing::warn!(target: TARGET, channel = %self.history.channel(), error = %error, "reading history to repair a gap failed: subscribers resync");
                metrics::counter!("redtower_pubsub_lost_total").increment(1);
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                let _ = self.tx.send(Delivery::Lost { latest: None });
            }
        }
    }
}

/// `<epoch>:<offset>:<data>`, after `^<trace context>\n` when the publisher stored one (an
/// epoch never starts with `^`). A trace context that does not decode is dropped, never the
/// event.
fn parse_message(raw: &str) -> Option<(EventId, &str, Option<TraceContext>)> {
    let (trace, raw) = match raw.strip_prefix('^') {
        Some(rest) => {
            let (trace, raw) = rest.split_once('\n')?;
            (TraceContext::decode(trace), raw)
        }
        None => (None, raw),
    };
    let (epoch, rest) = raw.split_once(':')?;
    let (offset, data) = rest.split_once(':')?;
    let id = EventId::new(epoch, offset.parse().ok()?).ok()?;
    Some((id, data, trace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        let (id, data, trace) = parse_message("abc:12:{\"a\":\"x:y\"}").unwrap();
        assert_eq!(id.to_string(), "abc:12");
        assert_eq!(data, "{\"a\":\"x:y\"}");
        assert_eq!(trace, None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let raw = format!("^{tp};a=b:c\nabc:13:[1]");
        let (id, data, trace) = parse_message(&raw).unwrap();
        assert_eq!((id.to_string().as_str(), data), ("abc:13", "[1]"));
        assert_eq!(trace, TraceContext::new(tp, Some("a=b:c")));
        // A bad context is dropped, the event kept.
        let (id, _, trace) = parse_message("^00-nope\nabc:14:1").unwrap();
        assert_eq!((id.offset(), trace), (14, None));
        assert!(parse_message("^00-no-newline").is_none());
        assert!(parse_message("abc:x:1").is_none());
        assert!(parse_message("abc").is_none());
    }
}
