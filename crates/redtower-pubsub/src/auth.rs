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

pub(crate) struct Named(pub(crate) std::sync::Arc<dyn ChannelAuthorizer>);

impl fmt::Debug for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelAuthorizer")
    }
}
