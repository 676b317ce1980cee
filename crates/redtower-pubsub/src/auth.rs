//! [`ChannelAuthorizer`]: who may subscribe to (or publish on) which channel.

use std::fmt;

use http::request::Parts;

use crate::Channel;

/// What a request wants to do with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Access {
    /// Receive its events (the SSE endpoint asks for this).
    Subscribe,
    /// Publish on it (for your own publish routes: call the authorizer with this).
    Publish,
}

/// Decides, per request and per channel, whether access is allowed.
///
/// The SSE endpoint calls it for every requested channel before subscribing to anything, and
/// answers `403 Forbidden` (which also stops a browser's `EventSource` from reconnecting) when
/// any is refused. Read the caller's identity from the request (`parts.extensions` holds what
/// auth or session layers put there).
///
/// Implemented for closures `Fn(&Parts, &Channel, Access) -> bool`, and by [`AllowAll`].
///
/// ```
/// use redtower_pubsub::{Access, Channel, ChannelAuthorizer};
///
/// #[derive(Clone)]
/// struct User(String);
///
/// /// `user:<name>:...` channels belong to that user; every other channel is public to read.
/// struct Owner;
///
/// #[async_trait::async_trait]
/// impl ChannelAuthorizer for Owner {
///     async fn authorize(&self, req: &http::request::Parts, ch: &Channel, access: Access) -> bool {
///         let user = req.extensions.get::<User>();
///         match ch.as_str().strip_prefix("user:") {
///             Some(rest) => user.is_some_and(|u| rest.split(':').next() == Some(u.0.as_str())),
///             None => access == Access::Subscribe,
///         }
///     }
/// }
/// # let _ = Owner;
/// ```
#[async_trait::async_trait]
pub trait ChannelAuthorizer: Send + Sync + 'static {
    /// Whether the request may have `access` to `channel`.
    async fn authorize(&self, request: &Parts, channel: &Channel, access: Access) -> bool;
}

#[async_trait::async_trait]
impl<F> ChannelAuthorizer for F
where
    F: Fn(&Parts, &Channel, Access) -> bool + Send + Sync + 'static,
{
    async fn authorize(&self, request: &Parts, channel: &Channel, access: Access) -> bool {
        self(request, channel, access)
    }
}

/// Allows everything: every channel is public. The SSE endpoint's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait::async_trait]
impl ChannelAuthorizer for AllowAll {
    async fn authorize(&self, _: &Parts, _: &Channel, _: Access) -> bool {
        true
    }
}

/// Marks channels as server-owned: only server code publishes on them (through
/// [`PubSub`](crate::PubSub) directly); a [`Access::Publish`] request for one is refused
/// whatever the wrapped authorizer says, so the endpoint's publish route answers `403`.
/// Everything else is decided by the wrapped authorizer.
///
/// ```
/// use redtower_pubsub::{Access, AllowAll, Channel, ChannelAuthorizer, ServerOwned};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let auth = ServerOwned::new(AllowAll).prefix("order:").channel("announcements");
/// let req = http::Request::new(()).into_parts().0;
/// let orders = Channel::new("order:updates").unwrap();
/// assert!(!auth.authorize(&req, &orders, Access::Publish).await);
/// assert!(auth.authorize(&req, &orders, Access::Subscribe).await);
/// assert!(auth.is_server_owned(&Channel::new("announcements").unwrap()));
/// assert!(auth.authorize(&req, &Channel::new("chat").unwrap(), Access::Publish).await);
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ServerOwned<A> {
    inner: A,
    prefixes: Vec<String>,
    names: Vec<String>,
}

impl<A: ChannelAuthorizer> ServerOwned<A> {
    /// Wraps `inner`; no channel is server-owned until [`prefix`](Self::prefix) or
    /// [`channel`](Self::channel) marks some.
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            prefixes: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Every channel whose name starts with `prefix` is server-owned.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// The channel named `name` is server-owned.
    pub fn channel(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    /// Whether `channel` is server-owned.
    pub fn is_server_owned(&self, channel: &Channel) -> bool {
        let name = channel.as_str();
        self.names.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

#[async_trait::async_trait]
impl<A: ChannelAuthorizer> ChannelAuthorizer for ServerOwned<A> {
    async fn authorize(&self, request: &Parts, channel: &Channel, access: Access) -> bool {
        if access == Access::Publish && self.is_server_owned(channel) {
            tracing::debug!(target: "redtower::pubsub", channel = %channel, "publish refused: server-owned channel");
            return false;
        }
        self.inner.authorize(request, channel, access).await
    }
}

pub(crate) struct Named(pub(crate) std::sync::Arc<dyn ChannelAuthorizer>);

impl fmt::Debug for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelAuthorizer")
    }
}
