//! What the code opening a stream knows about its reader ([`StreamOptions`], [`OnOpen`]), and
//! the per-process and per-client connection limits.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use http::request::Parts;

use crate::Channel;

/// A future that resolves when the reader's access ends (see [`StreamOptions::access_ends`]).
pub(crate) type AccessEnds = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the code opening one event stream knows about its reader: when its access ends, and
/// which client it is (for the per-client connection limit).
///
/// Return it from an [`OnOpen`] hook ([`SseEndpoint::on_open`](crate::SseEndpoint::on_open)),
/// or pass it to [`SseEndpoint::handle_with`](crate::SseEndpoint::handle_with).
///
/// ```
/// use redtower_pubsub::StreamOptions;
///
/// let (ended, end) = tokio::sync::oneshot::channel::<()>();
/// let options = StreamOptions::new()
///     // Resolves when the session is revoked, logged out or expired (here: by hand).
///     .access_ends(async move {
///         let _ = end.await;
///     })
///     .client_key("user:alice");
/// # drop((options, ended));
/// ```
#[derive(Default)]
#[must_use]
pub struct StreamOptions {
    pub(crate) access_ends: Option<AccessEnds>,
    pub(crate) client_key: Option<Arc<str>>,
}

impl fmt::Debug for StreamOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamOptions")
            .field("access_ends", &self.access_ends.is_some())
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl StreamOptions {
    /// Nothing known: the stream lives its lifetime, and only the per-process connection
    /// limit applies.
    pub fn new() -> Self {
        Self::default()
    }

    /// A future that resolves when the reader's access ends (its session is revoked, logged
    /// out or expires). When it resolves, the stream sends an `event: revoked` frame and ends;
    /// when it has already resolved at open, the request is refused with `403 Forbidden`.
    /// The future is dropped with the stream. Defaults to none (access never ends).
    pub fn access_ends(mut self, ends: impl Future<Output = ()> + Send + 'static) -> Self {
        self.access_ends = Some(Box::pin(ends));
        self
    }

    /// Who the reader is for the per-client connection limit
    /// ([`SseEndpoint::max_connections_per_client`](crate::SseEndpoint::max_connections_per_client)):
    /// a user id, or the client IP for anonymous readers. Defaults to none (only the
    /// per-process limit applies).
    pub fn client_key(mut self, key: impl AsRef<str>) -> Self {
        self.client_key = Some(Arc::from(key.as_ref()));
        self
    }
}

/// Called once per stream, after the channels were validated and authorized and before
/// anything is subscribed: returns the stream's [`StreamOptions`] (when its access ends, which
/// client it is).
///
/// Implemented for closures `Fn(&Parts, &[Channel]) -> StreamOptions`, and by `()` (nothing
/// known; the default).
///
/// ```
/// use redtower_pubsub::{Channel, PubSub, SseEndpoint, StreamOptions};
///
/// // Anonymous readers are limited per IP address (put there by your proxy-aware layer).
/// #[derive(Clone)]
/// struct ClientIp(std::net::IpAddr);
///
/// let sse = SseEndpoint::new(PubSub::memory()).on_open(|req: &http::request::Parts, _: &[Channel]| {
///     match req.extensions.get::<ClientIp>() {
///         Some(ip) => StreamOptions::new().client_key(ip.0.to_string()),
///         None => StreamOptions::new(),
///     }
/// });
/// # let _ = sse;
/// ```
#[async_trait::async_trait]
pub trait OnOpen: Send + Sync + 'static {
    /// The options of the stream `request` opens on `channels`.
    async fn on_open(&self, request: &Parts, channels: &[Channel]) -> StreamOptions;
}

#[async_trait::async_trait]
impl<F> OnOpen for F
where
    F: Fn(&Parts, &[Channel]) -> StreamOptions + Send + Sync + 'static,
{
    async fn on_open(&self, request: &Parts, channels: &[Channel]) -> StreamOptions {
        self(request, channels)
    }
}

#[async_trait::async_trait]
impl OnOpen for () {
    async fn on_open(&self, _: &Parts, _: &[Channel]) -> StreamOptions {
        StreamOptions::new()
    }
}

/// Open streams per process and per client key.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only keys with at least one open stream: at most `total` entries.
    per_key: HashMap<Arc<str>, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Process(usize),
    Client(usize),
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one more stream for `key`, within `max` per process and `max_per_key` per key.
    pub(crate) fn admit(
        self: &Arc<Self>,
        key: Option<Arc<str>>,
        max: usize,
        max_per_key: usize,
    ) -> Result<Permit, Refused> {
        let mut counts = self.lock();
        if counts.total >= max {
            return Err(Refused::Process(max));
        }
        if let Some(key) = &key {
            let n = counts.per_key.entry(key.clone()).or_insert(0);
            if *n >= max_per_key {
                return Err(Refused::Client(max_per_key));
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(Permit {
            connections: self.clone(),
            key,
        })
    }

    /// Open streams right now: in total, and for `key`.
    pub(crate) fn open(&self, key: Option<&str>) -> (usize, usize) {
        let counts = self.lock();
        let for_key = key.and_then(|k| counts.per_key.get(k).copied());
        (counts.total, for_key.unwrap_or(0))
    }
}

/// One admitted stream; released on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    connections: Arc<Connections>,
    key: Option<Arc<str>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.connections.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(key) = &self.key
            && let Some(n) = counts.per_key.get_mut(key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_key.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_process_and_key() {
        let c = Arc::new(Connections::default());
        let a: Arc<str> = Arc::from("a");
        let p1 = c.admit(Some(a.clone()), 3, 2).unwrap();
        let p2 = c.admit(Some(a.clone()), 3, 2).unwrap();
        assert_eq!(
            c.admit(Some(a.clone()), 3, 2).unwrap_err(),
            Refused::Client(2)
        );
        let p3 = c.admit(None, 3, 2).unwrap();
        assert_eq!(
            c.admit(Some(Arc::from("b")), 3, 2).unwrap_err(),
            Refused::Process(3)
        );
        assert_eq!(c.open(Some("a")), (3, 2));
        drop((p1, p2, p3));
        assert_eq!(c.open(Some("a")), (0, 0));
        assert!(c.lock().per_key.is_empty(), "no entry outlives its streams");
    }
}
