//! [`Health`]: what `/health` endpoints report about Redis.

use std::time::Duration;

use fred::types::ClientState;

/// Whether Redis answered the health check. See [`Health`] for an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// `PING` answered within its budget.
    Up,
    /// `PING` failed or timed out.
    Down,
}

/// The state of the connection(s), as the driver sees them (on a Cluster, the least healthy).
/// See [`Health`] for an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected.
    Connected,
    /// Connecting or reconnecting.
    Connecting,
    /// Closing.
    Disconnecting,
    /// Closed (not yet reconnecting, or quit).
    Disconnected,
}

impl From<ClientState> for ConnectionState {
    fn from(state: ClientState) -> Self {
        match state {
            ClientState::Connected => Self::Connected,
            ClientState::Connecting => Self::Connecting,
            ClientState::Disconnecting => Self::Disconnecting,
            ClientState::Disconnected => Self::Disconnected,
        }
    }
}

/// The result of [`Redis::health`](crate::Redis::health).
///
/// ```
/// use redtower_client::{ConnectionState, Health, HealthStatus};
///
/// let health = Health {
///     status: HealthStatus::Down,
///     state: ConnectionState::Connecting,
///     latency: None,
///     error: Some("connection refused".into()),
/// };
/// assert!(!health.is_up());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Up or down.
    pub status: HealthStatus,
    /// The connection state when the check ended.
    pub state: ConnectionState,
    /// The `PING` round trip, when it succeeded.
    pub latency: Option<Duration>,
    /// Why the check failed, when it did.
    pub error: Option<String>,
}

impl Health {
    /// `PING` succeeded.
    pub fn is_up(&self) -> bool {
        self.status == HealthStatus::Up
    }
}
