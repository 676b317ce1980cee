//! One SSE connection: start (subscribe, resume), then live events, lag repair, keep-alive,
//! lifetime and shutdown.

use std::{any::Any, convert::Infallible, fmt::Write as _, pin::Pin, sync::Arc};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use rand::Rng;
use tokio::time::{Instant, Sleep};
use tokio_stream::{
    StreamMap,
    wrappers::{BroadcastStream, errors::BroadcastStreamRecvError},
};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{Cursor, Inner, TARGET, frame};
use crate::{Channel, Event, EventId, Replay, store::Delivery};

/// Where a client stands in one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pos {
    /// Before the first event of whichever epoch comes (the channel had no history).
    Start,
    /// After this event.
    At(EventId),
}

impl Pos {
    fn from_latest(latest: Option<EventId>) -> Self {
        latest.map_or(Self::Start, Self::At)
    }
}

pub(crate) async fn open(
    inner: Arc<Inner>,
    channels: Vec<Channel>,
    cursors: Vec<Cursor>,
    multi: bool,
) -> crate::Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static> {
    let pubsub = inner.pubsub.clone();
    // Subscribe first: whatever is published from here on reaches us live, so the history
    // read below cannot leave a gap.
    let mut subs = StreamMap::with_capacity(channels.len());
    let mut guards = Vec::with_capacity(channels.len());
    for (i, channel) in channels.iter().enumerate() {
        let (rx, guard) = pubsub.store().subscribe(channel).await?.into_parts();
        subs.insert(i, BroadcastStream::new(rx));
        guards.extend(guard);
    }
    let mut pos = Vec::with_capacity(channels.len());
    for (channel, cursor) in channels.iter().zip(&cursors) {
        pos.push(match cursor {
            Cursor::After(id) => Pos::At(id.clone()),
            Cursor::Start => Pos::Start,
            Cursor::None | Cursor::Invalid => {
                Pos::from_latest(pubsub.store().latest(channel).await?)
            }
        });
    }
    let lifetime = {
        let max = inner.max_lifetime;
        let min = max.mul_f64(2.0 / 3.0);
        rand::rng().random_range(min..=max)
    };
    let retry = rand::rng().random_range(inner.retry.clone());
    let now = Instant::now();
    let mut conn = Conn {
        keep_alive: Box::pin(tokio::time::sleep_until(now + inner.keep_alive)),
        last_write: now,
        deadline: Box::pin(tokio::time::sleep_until(now + lifetime)),
        shutdown: Box::pin(inner.shutdown.clone().cancelled_owned()),
        inner,
        channels,
        pos,
        multi,
        subs,
        _guards: guards,
        first: None,
        closing: false,
        resynced: false,
    };
    metrics::gauge!("redtower_pubsub_sse_connections").increment(1);

    let mut buf = BytesMut::new();
    frame::comment(&mut buf, "ok");
    frame::retry(&mut buf, u64::try_from(retry.as_millis()).unwrap_or(5000));
    for (i, cursor) in cursors.iter().enumerate() {
        match cursor {
            Cursor::None => {}
            Cursor::Invalid => conn.resync(&mut buf, i, "invalid_id"),
            Cursor::After(_) | Cursor::Start => {
                let replayed = conn.catch_up(&mut buf, i).await?;
                metrics::counter!("redtower_pubsub_sse_replayed_total").increment(replayed);
            }
        }
    }
    // Tell the browser where it stands, so even a stream that ends before its first event
    // resumes from here (an id-only frame sets `lastEventId` without firing an event).
    frame::event_id_only(&mut buf, &conn.cursor());
    conn.first = Some(buf.freeze());
    tracing::debug!(target: TARGET, channels = conn.channels.len(), "event stream opened");

    Ok(futures::stream::unfold(conn, |mut conn| async move {
        let chunk = conn.next().await?;
        Some((Ok(chunk), conn))
    }))
}

struct Conn {
    inner: Arc<Inner>,
    channels: Vec<Channel>,
    pos: Vec<Pos>,
    multi: bool,
    subs: StreamMap<usize, BroadcastStream<Delivery>>,
    _guards: Vec<Box<dyn Any + Send + Sync>>,
    first: Option<Bytes>,
    /// Send what is buffered, then end.
    closing: bool,
    /// A `resync` was written since this was last cleared.
    resynced: bool,
    keep_alive: Pin<Box<Sleep>>,
    /// When the last bytes were sent. The keep-alive timer is re-armed from it only when it
    /// fires, not on every event (a timer reset per event is costly with many connections).
    last_write: Instant,
    deadline: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("redtower_pubsub_sse_connections").decrement(1);
    }
}

enum Wake {
    Stop(&'static str),
    KeepAlive,
    Item(Option<(usize, Result<Delivery, BroadcastStreamRecvError>)>),
}

impl Conn {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            if self.closing {
                return None;
            }
            let wake = tokio::select! {
                biased;
                () = &mut self.shutdown => Wake::Stop("shutdown"),
                () = &mut self.deadline => Wake::Stop("lifetime"),
                item = self.subs.next() => Wake::Item(item),
                () = &mut self.keep_alive => Wake::KeepAlive,
            };
            let mut buf = BytesMut::new();
            match wake {
                Wake::Stop(why) => {
                    tracing::debug!(target: TARGET, reason = why, "event stream ended");
                    return None;
                }
                Wake::KeepAlive => {
                    let due = self.last_write + self.inner.keep_alive;
                    if due > Instant::now() {
                        self.keep_alive.as_mut().reset(due);
                        continue;
                    }
                    self.reset_keep_alive();
                    let at = self.last_write + self.inner.keep_alive;
                    self.keep_alive.as_mut().reset(at);
                    return Some(frame::keep_alive());
                }
                Wake::Item(None) => return None,
                Wake::Item(Some((i, Ok(Delivery::Event(event))))) => {
                    if let Some(single) = self.on_event(&mut buf, i, event).await {
                        self.reset_keep_alive();
                        return Some(single);
                    }
                }
                Wake::Item(Some((i, Ok(Delivery::Lost { latest })))) => {
                    if let Some(latest) = latest {
                        self.pos[i] = Pos::At(latest);
                    }
                    self.resync(&mut buf, i, "lost");
                }
                Wake::Item(Some((i, Err(BroadcastStreamRecvError::Lagged(n))))) => {
                    metrics::counter!("redtower_pubsub_sse_lagged_total").increment(1);
                    tracing::debug!(target: TARGET, channel = %self.channels[i], skipped = n, "client lagged; catching up from history");
                    self.resynced = false;
                    match self.catch_up(&mut buf, i).await {
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(target: TARGET, error = %error, "history unavailable for a lagged client");
                            self.resync(&mut buf, i, "unavailable");
                        }
                    }
                    if self.resynced {
                        // A client too slow for the history too: it reloads and reconnects.
                        self.closing = true;
                    }
                }
            }
            if !buf.is_empty() {
                self.reset_keep_alive();
                return Some(buf.freeze());
            }
        }
    }

    fn reset_keep_alive(&mut self) {
        self.last_write = Instant::now();
    }

    /// Handles one live event; returns the shared frame when it can be sent as is.
    async fn on_event(&mut self, buf: &mut BytesMut, i: usize, event: Arc<Event>) -> Option<Bytes> {
        let base = match &self.pos[i] {
            Pos::At(at) if at.epoch() == event.id().epoch() => at.offset(),
            Pos::At(_) => {
                // The history was lost and began again: what came in between is unknown.
                self.pos[i] = Pos::At(event.id().clone());
                self.resync(buf, i, "epoch");
                return None;
            }
            Pos::Start => 0,
        };
        let offset = event.id().offset();
        if offset <= base {
            return None; // already sent by the replay
        }
        if offset == base + 1 {
            self.pos[i] = Pos::At(event.id().clone());
            metrics::counter!("redtower_pubsub_sse_events_sent_total").increment(1);
            if !self.multi {
                return Some(event.sse_frame().clone());
            }
            self.write_event(buf, i, &event);
            return None;
        }
        // A hole the hub could not fill: try the history once more.
        self.pos[i] = Pos::At(EventId::from_parts(event.id().epoch_arc().clone(), base));
        if let Err(error) = self.catch_up(buf, i).await {
            tracing::warn!(target: TARGET, error = %error, "history unavailable to fill a gap");
            self.pos[i] = Pos::At(event.id().clone());
            self.resync(buf, i, "unavailable");
        }
        None
    }

    /// Sends what the history holds after this channel's position, or `resync`. Returns how
    /// many events were sent.
    async fn catch_up(&mut self, buf: &mut BytesMut, i: usize) -> crate::Result<u64> {
        let store = self.inner.pubsub.store();
        let channel = &self.channels[i];
        let after = match &self.pos[i] {
            Pos::At(at) => at.clone(),
            Pos::Start => match store.latest(channel).await? {
                Some(latest) => EventId::from_parts(latest.epoch_arc().clone(), 0),
                None => return Ok(0),
            },
        };
        match store.replay(channel, &after, self.inner.max_replay).await? {
            Replay::Events(events) => {
                let n = events.len() as u64;
                for event in events {
                    self.pos[i] = Pos::At(event.id().clone());
                    if self.multi {
                        self.write_event(buf, i, &event);
                    } else {
                        buf.extend_from_slice(event.sse_frame());
                    }
                }
                metrics::counter!("redtower_pubsub_sse_events_sent_total").increment(n);
                Ok(n)
            }
            Replay::Gap { latest } => {
                let reason = match &latest {
                    Some(l) if l.epoch() != after.epoch() => "epoch",
                    None if self.pos[i] != Pos::Start => "epoch",
                    _ => "gap",
                };
                self.pos[i] = Pos::from_latest(latest);
                self.resync(buf, i, reason);
                Ok(0)
            }
        }
    }

    fn cursor(&self) -> String {
        let mut s = String::new();
        for (i, pos) in self.pos.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match pos {
                Pos::Start => s.push('0'),
                Pos::At(id) => {
                    let _ = write!(s, "{id}");
                }
            }
        }
        s
    }

    fn write_event(&self, buf: &mut BytesMut, i: usize, event: &Event) {
        let data = format!(
            "{{\"channel\":{},\"data\":{}}}",
            serde_json::Value::String(self.channels[i].to_string()),
            event.data()
        );
        frame::event(buf, Some(&self.cursor()), None, &data);
    }

    fn resync(&mut self, buf: &mut BytesMut, i: usize, reason: &'static str) {
        self.resynced = true;
        metrics::counter!("redtower_pubsub_sse_resync_total", "reason" => reason).increment(1);
        tracing::debug!(target: TARGET, channel = %self.channels[i], reason, "resync");
        let data = serde_json::json!({ "reason": reason, "channel": self.channels[i].as_str() });
        frame::event(buf, Some(&self.cursor()), Some("resync"), &data.to_string());
    }
}
