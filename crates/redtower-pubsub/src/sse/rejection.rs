//! [`SseRejection`]: why the SSE endpoint refused a request, and its response.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::TARGET;
use crate::ChannelError;

/// Why the SSE endpoint refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SseRejection {
    /// No channel in the path or the query.
    #[error("no channel given")]
    NoChannel,
    /// A channel name is invalid.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[source] ChannelError),
    /// More channels than [`SseEndpoint::max_channels`](crate::SseEndpoint::max_channels).
    #[error("too many channels: at most {0}")]
    TooManyChannels(usize),
    /// The [`ChannelAuthorizer`](crate::ChannelAuthorizer) refused a channel.
    #[error("forbidden")]
    Forbidden,
    /// The store could not subscribe or read the history (also when the process holds as
    /// many channels as the store allows, [`Error::TooManyChannels`](crate::Error::TooManyChannels)).
    #[error("events are unavailable right now")]
    Unavailable(#[source] crate::Error),
    /// As many streams are open as [`SseEndpoint::max_connections`](crate::SseEndpoint::max_connections) allows.
    #[error("too many event streams are open: at most {0}")]
    TooManyConnections(usize),
    /// This client has as many streams open as
    /// [`SseEndpoint::max_connections_per_client`](crate::SseEndpoint::max_connections_per_client) allows.
    #[error("too many event streams for this client: at most {0}")]
    TooManyForClient(usize),
    /// The published data is larger than the store's payload limit.
    #[error("the event is {len} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// The size of the rejected data, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The `Idempotency-Key` header of a publish is not a valid [`PublishToken`](crate::PublishToken).
    #[error("invalid Idempotency-Key: expected 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidIdempotencyKey,
}

impl SseRejection {
    /// The response status: 400, 403, 413, 429 or 503.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoChannel
            | Self::InvalidChannel(_)
            | Self::TooManyChannels(_)
            | Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyForClient(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Retry-After` of a 429 or 503, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Unavailable(_) | Self::TooManyConnections(_) | Self::TooManyForClient(_) => {
                Some(5)
            }
            _ => None,
        }
    }

    /// The response body.
    pub fn body_text(&self) -> String {
        self.to_string()
    }
}

impl IntoResponse for SseRejection {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Unavailable(error) if error.is_limit() => {
                tracing::debug!(target: TARGET, error = %error, "cannot open an event stream");
            }
            Self::Unavailable(error) => {
                tracing::warn!(target: TARGET, error = %error, "cannot open an event stream");
            }
            _ => {
                tracing::trace!(target: "redtower::pubsub::rejection", status = %status.as_u16(), body = %self, "rejected");
            }
        }
        let mut response = (status, self.body_text()).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
