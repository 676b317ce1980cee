//! One SSE connection as an HTTP body: start (subscribe, resume), then live events, lag
//! repair, keep-alive, lifetime and shutdown.
//!
//! The live path is a hand-written [`http_body::Body`] rather than an `async` stream, because
//! it runs once per event per connection (100,000 times a second for 10,000 connections at
//! 10 events/s each): a live event in order is answered from the poll itself with the event's
//! shared frame (encoded once per event for every connection), without allocating, without
//! touching a timer and without taking a lock other than the broadcast's own. Only what needs
//! the history (a lagged receiver, a hole, a new epoch, lost events) leaves that path, into a
//! boxed future that owns the connection until it is done.

use std::{
    convert::Infallible,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, future::BoxFuture};
use http_body::Frame;
use rand::Rng;
use tokio::{
    sync::{Notify, futures::OwnedNotified},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;

use super::{Cursor, Inner, TARGET, frame, open::AccessEnds, open::Permit};
use crate::{Channel, Event, EventId, Replay, ReplayLimit, store::Delivery};

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

/// The endpoint's shutdown token, watched by one task that raises a flag and wakes every
/// stream, so that a stream checks an atomic flag per poll instead of locking the token.
pub(crate) struct ShutdownSignal {
    flag: AtomicBool,
    notify: Arc<Notify>,
}

impl ShutdownSignal {
    /// The signal for `token`, watched from the first call on (which must be inside a Tokio
    /// runtime).
    pub(crate) fn get(cell: &OnceLock<Arc<Self>>, token: &CancellationToken) -> Arc<Self> {
        cell.get_or_init(|| {
            let signal = Arc::new(Self {
                flag: AtomicBool::new(token.is_cancelled()),
                notify: Arc::new(Notify::new()),
            });
            let watched = Arc::downgrade(&signal);
            let token = token.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                if let Some(signal) = watched.upgrade() {
                    // The flag first: a stream woken by the notification must see it.
                    signal.flag.store(true, Ordering::Release);
                    signal.notify.notify_waiters();
                }
            });
            signal
        })
        .clone()
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// Watches a stream's [`AccessEnds`] future on a task of its own, so that the live path checks
/// an atomic flag instead of polling an arbitrary future per event.
struct Access {
    ended: Arc<AtomicBool>,
    waker: Arc<futures::task::AtomicWaker>,
    task: tokio::task::JoinHandle<()>,
}

impl Access {
    fn watch(ends: AccessEnds) -> Self {
        let ended = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(futures::task::AtomicWaker::new());
        let task = tokio::spawn({
            let (ended, waker) = (ended.clone(), waker.clone());
            async move {
                ends.await;
                ended.store(true, Ordering::Release);
                waker.wake();
            }
        });
        Self { ended, waker, task }
    }

    fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        // Drops the app's future (and whatever it holds) with the stream.
        self.task.abort();
    }
}

/// The `redtower.pubsub.deliver` span of one event written to a stream (DEBUG, so off unless
/// asked for): a child of the span that published the event when it carries that span's trace
/// context (the `opentelemetry` feature), else a root. It marks the moment of delivery.
fn delivered(event: &Event, path: &'static str) {
    let span = tracing::debug_span!(
        target: TARGET,
        parent: None,
        "redtower.pubsub.deliver",
        otel.kind = "consumer",
        path,
    );
    if span.is_disabled() {
        return;
    }
    #[cfg(feature = "opentelemetry")]
    if let Some(cx) = event.trace_context() {
        cx.set_parent_of(&span);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = event;
}

pub(crate) async fn open(
    inner: Arc<Inner>,
    channels: Vec<Channel>,
    cursors: Vec<Cursor>,
    multi: bool,
    permit: Permit,
    access_ends: Option<AccessEnds>,
) -> crate::Result<SseBody> {
    let pubsub = inner.pubsub.clone();
    // Subscribe first: whatever is published from here on reaches us live, so the history
    // read below cannot leave a gap.
    let (subs, guards) = subscribe(&pubsub, &channels).await?;
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
    let shutdown = ShutdownSignal::get(&inner.shutdown_signal, &inner.shutdown);
    let now = Instant::now();
    let first_due = (now + inner.keep_alive).min(now + lifetime);
    let mut conn = Box::new(Conn {
        timer: Box::pin(tokio::time::sleep_until(first_due)),
        timer_due: first_due,
        last_write: now,
        end: now + lifetime,
        shutdown_wait: Box::pin(shutdown.notify.clone().notified_owned()),
        shutdown,
        registered: None,
        sent: metrics::counter!("redtower_pubsub_sse_events_sent_total"),
        inner,
        channels,
        pos,
        multi,
        subs,
        next_sub: 0,
        _guards: guards,
        first: None,
        closing: false,
        resynced: false,
        access: access_ends.map(Access::watch),
        _permit: permit,
    });
    metrics::gauge!("redtower_pubsub_sse_connections").increment(1);
    conn.first = Some(conn.first_chunk(&cursors, retry).await?);
    tracing::debug!(target: TARGET, channels = conn.channels.len(), "event stream opened");
    Ok(SseBody {
        state: State::Idle(conn),
    })
}

/// Subscribes to every channel: the live events, and the guards that keep the subscriptions.
async fn subscribe(
    pubsub: &crate::PubSub,
    channels: &[Channel],
) -> crate::Result<(Vec<BroadcastStream<Delivery>>, Vec<Box<dyn Send + Sync>>)> {
    let mut subs = Vec::with_capacity(channels.len());
    let mut guards = Vec::with_capacity(channels.len());
    for channel in channels {
        let (rx, guard) = pubsub.store().subscribe(channel).await?.into_parts();
        subs.push(BroadcastStream::new(rx));
        guards.extend(guard);
    }
    Ok((subs, guards))
}

/// The response body of one event stream.
pub(crate) struct SseBody {
    state: State,
}

enum State {
    /// Polled directly.
    Idle(Box<Conn>),
    /// Reading the history; the connection comes back with what to send.
    Busy(BoxFuture<'static, (Box<Conn>, Option<Bytes>)>),
    Done,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Busy(work) => {
                    let Poll::Ready((conn, out)) = work.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.state = State::Idle(conn);
                    if let Some(bytes) = out {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                State::Idle(conn) => match conn.poll_live(cx) {
                    Live::Send(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    Live::Pending => return Poll::Pending,
                    Live::End => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Live::Slow(i, item) => {
                        let State::Idle(conn) = std::mem::replace(&mut this.state, State::Done)
                        else {
                            unreachable!("matched Idle above")
                        };
                        this.state = State::Busy(Box::pin(conn.slow(i, item)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

/// What the live path decided.
enum Live {
    Send(Bytes),
    Pending,
    End,
    /// Needs the history: this item of this channel goes to [`Conn::slow`].
    Slow(usize, Result<Delivery, BroadcastStreamRecvError>),
}

struct Conn {
    inner: Arc<Inner>,
    channels: Vec<Channel>,
    pos: Vec<Pos>,
    multi: bool,
    subs: Vec<BroadcastStream<Delivery>>,
    /// The channel polled first next time (round robin, so that a busy channel cannot starve
    /// the others).
    next_sub: usize,
    _guards: Vec<Box<dyn Send + Sync>>,
    first: Option<Bytes>,
    /// Send what is buffered, then end.
    closing: bool,
    /// When the reader's access ends (see `StreamOptions::access_ends`).
    access: Option<Access>,
    /// This stream's place in the connection limits.
    _permit: Permit,
    /// A `resync` was written since this was last cleared.
    resynced: bool,
    /// One timer for both the keep-alive and the end of the lifetime, armed at `timer_due`.
    /// It is re-armed only when it fires, never per event (a timer reset per event is costly
    /// with many connections): when it fires early, because events were sent meanwhile, it is
    /// re-armed from `last_write`.
    timer: Pin<Box<Sleep>>,
    timer_due: Instant,
    /// When the last bytes were sent.
    last_write: Instant,
    /// When the stream ends (its randomized lifetime).
    end: Instant,
    shutdown: Arc<ShutdownSignal>,
    shutdown_wait: Pin<Box<OwnedNotified>>,
    /// The waker the timer and the shutdown notification were last polled with: while the
    /// body is polled with the same one, they need not be polled again (a poll of the
    /// notification takes its lock) and a clock read tells whether the timer is due.
    registered: Option<Waker>,
    sent: metrics::Counter,
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("redtower_pubsub_sse_connections").decrement(1);
    }
}

impl Conn {
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Live {
        if self.closing {
            return Live::End;
        }
        if self.access.as_ref().is_some_and(Access::has_ended) {
            return self.revoked();
        }
        if let Some(first) = self.first.take() {
            return Live::Send(first);
        }
        if self.shutdown.is_set() {
            tracing::debug!(target: TARGET, reason = "shutdown", "event stream ended");
            return Live::End;
        }
        let n = self.subs.len();
        let mut buf = BytesMut::new();
        let mut k = 0;
        while k < n {
            let i = (self.next_sub + k) % n;
            match self.subs[i].poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Delivery::Event(event)))) => {
                    match self.on_live_event(&mut buf, i, &event) {
                        Some(InOrder::Shared) => {
                            self.last_write = Instant::now();
                            return Live::Send(event.sse_frame().clone());
                        }
                        Some(InOrder::Written) => {
                            self.next_sub = (i + 1) % n;
                            self.last_write = Instant::now();
                            return Live::Send(buf.freeze());
                        }
                        // A duplicate of what the replay sent: read on.
                        Some(InOrder::Skip) => continue,
                        None => {
                            self.next_sub = (i + 1) % n;
                            return Live::Slow(i, Ok(Delivery::Event(event)));
                        }
                    }
                }
                Poll::Ready(Some(other)) => {
                    self.next_sub = (i + 1) % n;
                    return Live::Slow(i, other);
                }
                // The store was dropped.
                Poll::Ready(None) => return Live::End,
                Poll::Pending => k += 1,
            }
        }
        self.poll_idle(cx)
    }

    /// Nothing to send: makes sure the timer and the shutdown notification will wake the
    /// body, and sends a keep-alive or ends the stream when the timer is due.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Live {
        let same_waker = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if !same_waker {
            if self.shutdown_wait.as_mut().poll(cx).is_ready() || self.shutdown.is_set() {
                tracing::debug!(target: TARGET, reason = "shutdown", "event stream ended");
                return Live::End;
            }
            if let Some(access) = &self.access {
                access.waker.register(cx.waker());
                if access.has_ended() {
                    return self.revoked();
                }
            }
            self.registered = Some(cx.waker().clone());
            if self.timer.as_mut().poll(cx).is_pending() {
                return Live::Pending;
            }
        } else if Instant::now() < self.timer_due {
            return Live::Pending;
        }
        // The timer is due.
        let now = Instant::now();
        if now >= self.end {
            tracing::debug!(target: TARGET, reason = "lifetime", "event stream ended");
            return Live::End;
        }
        let send = self.last_write + self.inner.keep_alive <= now;
        if send {
            self.last_write = now;
        }
        self.timer_due = (self.last_write + self.inner.keep_alive).min(self.end);
        self.timer.as_mut().reset(self.timer_due);
        // Register the new deadline (the shutdown notification already has this waker).
        if self.timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        if send {
            return Live::Send(frame::keep_alive());
        }
        Live::Pending
    }

    /// The reader's access ended: an `event: revoked` frame, then the end.
    fn revoked(&mut self) -> Live {
        self.closing = true;
        self.first = None;
        metrics::counter!("redtower_pubsub_sse_revoked_total").increment(1);
        tracing::debug!(target: TARGET, reason = "access_ended", "event stream ended");
        let mut buf = BytesMut::new();
        frame::event(
            &mut buf,
            None,
            Some("revoked"),
            r#"{"reason":"access_ended"}"#,
        );
        Live::Send(buf.freeze())
    }

    /// The live path for an event: whether it is the next one of its channel.
    fn on_live_event(&mut self, buf: &mut BytesMut, i: usize, event: &Event) -> Option<InOrder> {
        let base = match &self.pos[i] {
            Pos::At(at) if at.epoch() == event.id().epoch() => at.offset(),
            Pos::At(_) => return None,
            Pos::Start => 0,
        };
        let offset = event.id().offset();
        if offset <= base {
            return Some(InOrder::Skip);
        }
        // `base < offset`, so this cannot overflow.
        if offset != base.saturating_add(1) {
            return None;
        }
        self.pos[i] = Pos::At(event.id().clone());
        self.sent.increment(1);
        delivered(event, "live");
        if self.multi {
            self.write_event(buf, i, event);
            Some(InOrder::Written)
        } else {
            Some(InOrder::Shared)
        }
    }

    /// What the live path could not do: lags, holes, epoch changes and lost events.
    async fn slow(
        mut self: Box<Self>,
        i: usize,
        item: Result<Delivery, BroadcastStreamRecvError>,
    ) -> (Box<Self>, Option<Bytes>) {
        let mut buf = BytesMut::new();
        match item {
            Ok(Delivery::Event(event)) => self.on_event(&mut buf, i, event).await,
            Ok(Delivery::Lost { latest }) => {
                if let Some(latest) = latest {
                    self.pos[i] = Pos::At(latest);
                }
                self.resync(&mut buf, i, "lost");
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                metrics::counter!("redtower_pubsub_sse_lagged_total").increment(1);
                tracing::debug!(target: TARGET, channel = %self.channels[i], skipped = n, "client lagged; catching up from history");
                self.resynced = false;
                let budget = self.inner.max_replay_bytes;
                match self.catch_up(&mut buf, i, budget).await {
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
        if buf.is_empty() {
            return (self, None);
        }
        self.last_write = Instant::now();
        (self, Some(buf.freeze()))
    }

    /// An event the live path could not send as is: a new epoch or a hole.
    async fn on_event(&mut self, buf: &mut BytesMut, i: usize, event: Arc<Event>) {
        let base = match &self.pos[i] {
            Pos::At(at) if at.epoch() == event.id().epoch() => at.offset(),
            Pos::At(_) => {
                // The history was lost and began again: what came in between is unknown.
                self.pos[i] = Pos::At(event.id().clone());
                self.resync(buf, i, "epoch");
                return;
            }
            Pos::Start => 0,
        };
        // A hole the hub could not fill: try the history once more.
        self.pos[i] = Pos::At(EventId::from_parts(event.id().epoch_arc().clone(), base));
        let budget = self.inner.max_replay_bytes;
        if let Err(error) = self.catch_up(buf, i, budget).await {
            tracing::warn!(target: TARGET, error = %error, "history unavailable to fill a gap");
            self.pos[i] = Pos::At(event.id().clone());
            self.resync(buf, i, "unavailable");
        }
    }

    /// Sends what the history holds after this channel's position, at most `max_bytes` of
    /// data, or `resync`. Returns how many events and bytes of data were sent.
    async fn catch_up(
        &mut self,
        buf: &mut BytesMut,
        i: usize,
        max_bytes: usize,
    ) -> crate::Result<(u64, usize)> {
        let store = self.inner.pubsub.store();
        let channel = &self.channels[i];
        let after = match &self.pos[i] {
            Pos::At(at) => at.clone(),
            Pos::Start => match store.latest(channel).await? {
                Some(latest) => EventId::from_parts(latest.epoch_arc().clone(), 0),
                None => return Ok((0, 0)),
            },
        };
        let limit = ReplayLimit::new(self.inner.max_replay, max_bytes);
        match store.replay(channel, &after, limit).await? {
            Replay::Events(events) => {
                let n = events.len() as u64;
                let bytes = events.iter().map(|e| e.data().len()).sum();
                for event in events {
                    self.pos[i] = Pos::At(event.id().clone());
                    if self.multi {
                        self.write_event(buf, i, &event);
                        delivered(&event, "replay");
                    } else {
                        buf.extend_from_slice(event.sse_frame());
                        delivered(&event, "replay");
                    }
                }
                self.sent.increment(n);
                Ok((n, bytes))
            }
            Replay::Gap { latest } => {
                let reason = match &latest {
                    Some(l) if l.epoch() != after.epoch() => "epoch",
                    None if self.pos[i] != Pos::Start => "epoch",
                    _ => "gap",
                };
                self.pos[i] = Pos::from_latest(latest);
                self.resync(buf, i, reason);
                Ok((0, 0))
            }
        }
    }

    /// The stream's first chunk: `: ok`, the `retry:` hint, what each cursor missed (within
    /// one byte budget for the whole open) or a resync, then the id the stream stands at, so
    /// even a stream that ends before its first event resumes from here (an id-only frame
    /// sets `lastEventId` without firing an event).
    async fn first_chunk(&mut self, cursors: &[Cursor], retry: Duration) -> crate::Result<Bytes> {
        let mut buf = BytesMut::new();
        frame::comment(&mut buf, "ok");
        frame::retry(&mut buf, u64::try_from(retry.as_millis()).unwrap_or(5000));
        let mut budget = self.inner.max_replay_bytes;
        for (i, cursor) in cursors.iter().enumerate() {
            match cursor {
                Cursor::None => {}
                Cursor::Invalid => self.resync(&mut buf, i, "invalid_id"),
                Cursor::After(_) | Cursor::Start => {
                    let (replayed, bytes) = self.catch_up(&mut buf, i, budget).await?;
                    budget = budget.saturating_sub(bytes);
                    metrics::counter!("redtower_pubsub_sse_replayed_total").increment(replayed);
                }
            }
        }
        frame::event_id_only(&mut buf, &self.cursor());
        Ok(buf.freeze())
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

/// How the live path sent an in-order event.
enum InOrder {
    /// As the event's shared frame.
    Shared,
    /// Written into the buffer (several channels: the id lists every channel's position).
    Written,
    /// Not at all: the replay already sent it.
    Skip,
}
