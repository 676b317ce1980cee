//! [`Subscriber`]: the hub's Redis subscriber connection, whose `SUBSCRIBE`s are confirmed by
//! Redis before they count.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    types::Value,
};
use tokio::sync::broadcast;

use super::TARGET;
use crate::Result;

/// The subscriber connection of a hub.
pub(super) struct Subscriber {
    client: SubscriberClient,
    /// `SSUBSCRIBE`/`SUNSUBSCRIBE` instead of `SUBSCRIBE`/`UNSUBSCRIBE`.
    sharded: bool,
    /// How long a fresh connection is waited for.
    connect_timeout: Duration,
    /// The connection has been up at least once.
    up: AtomicBool,
    /// Tokens of the `PING`s that confirm subscriptions, in the order they are taken.
    pings: AtomicU64,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

impl Subscriber {
    pub(super) fn new(client: SubscriberClient, sharded: bool, connect_timeout: Duration) -> Self {
        Self {
            client,
            sharded,
            connect_timeout,
            up: AtomicBool::new(false),
            pings: AtomicU64::new(0),
        }
    }

    /// Waits for the subscriber's first connection, up to the command timeout: a fresh
    /// process is not in an outage, and a Cluster subscriber cannot route `SSUBSCRIBE` before
    /// it has the cluster's slots. Returns at once after the first connection.
    async fn connected(&self) -> Result<()> {
        if self.up.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = self.connect_timeout;
        let connected = async {
            if self.client.state() != fred::types::ClientState::Connected {
                self.client.wait_for_connect().await?;
            }
            Ok::<_, fred::error::Error>(())
        };
        match tokio::time::timeout(timeout, connected).await {
            Ok(Ok(())) => {
                self.up.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Err(error)) => Err(redtower_client::Error::from(error).into()),
            Err(_) => Err(redtower_client::Error::from(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("the pub/sub subscriber did not connect within {timeout:?}"),
            ))
            .into()),
        }
    }

    /// Subscribes to `name`. `SUBSCRIBE` is idempotent, so a failed one is sent again (twice
    /// at most): right after each (re)connect, fred's subscription manager re-sends its
    /// tracked subscriptions, including an empty `SUBSCRIBE` when only shard channels are
    /// tracked, and on a Cluster that command's error reply can be handed to a concurrent
    /// `SSUBSCRIBE`.
    pub(super) async fn subscribe(&self, name: &str) -> Result<()> {
        self.connected().await?;
        let mut result = self.subscribe_once(name).await;
        for wait_ms in [20, 100] {
            let Err(error) = &result else { break };
            tracing::debug!(target: TARGET, error = %error, "subscribe failed; sending it again");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            result = self.subscribe_once(name).await;
        }
        result
    }

    async fn subscribe_once(&self, name: &str) -> Result<()> {
        let result = if self.sharded {
            // fred waits for Redis's `SSUBSCRIBE` confirmation.
            self.client.ssubscribe(name).await
        } else {
            // A reconnect is announced before the new connection takes commands: when one
            // came, the `PING` may have been answered on a connection that never got the
            // `SUBSCRIBE`.
            let mut reconnects = self.client.reconnect_rx();
            match self.client.subscribe(name).await {
                Ok(()) => match self.confirm_subscribed().await {
                    Ok(())
                        if reconnects
                            .try_recv()
                            .is_err_and(|e| e == broadcast::error::TryRecvError::Empty) =>
                    {
                        Ok(())
                    }
                    Ok(()) => Err(fred::error::Error::new(
                        fred::error::ErrorKind::IO,
                        "the subscriber reconnected while subscribing",
                    )),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            }
        };
        result.map_err(|e| redtower_client::Error::from(e).into())
    }

    /// Returns once Redis has run every `SUBSCRIBE` sent before this call.
    ///
    /// fred resolves `SUBSCRIBE` as soon as the command is queued for the socket (it drops
    /// Redis's confirmation), so without this the hub would read the channel's latest id and
    /// report the subscription ready while Redis may not have run the `SUBSCRIBE` yet: an
    /// event published in between reached nobody, and nothing repaired it until the next
    /// event of the channel (a stream waited for it forever when none came). One connection
    /// runs its commands in order, so the reply to a `PING` sent after the `SUBSCRIBE` on the
    /// subscriber connection comes after the subscription is active.
    ///
    /// The reply is checked: each `PING` carries a token from a counter, and only a token
    /// taken after the `SUBSCRIBE` was queued proves it ran. fred matches error replies it
    /// does not expect to the next command waiting for a reply (its subscription manager sends
    /// an empty `SUBSCRIBE`/`PSUBSCRIBE` after each connect, which Redis rejects), so a
    /// `PING` can get such an error (then the caller subscribes again) or another `PING`'s
    /// reply (then it pings again).
    async fn confirm_subscribed(&self) -> std::result::Result<(), fred::error::Error> {
        let first = self.pings.fetch_add(1, Ordering::AcqRel);
        let options = fred::types::config::Options {
            // Not replayed on a new connection, where the `SUBSCRIBE` may not have run.
            max_attempts: Some(1),
            // Where fred sends `SUBSCRIBE` on a Cluster (a node chosen by the client's id).
            cluster_hash: self.client.is_clustered().then(|| {
                fred::types::ClusterHash::Custom(fred::util::redis_keyslot(
                    self.client.id().as_bytes(),
                ))
            }),
            ..Default::default()
        };
        let pinger = self.client.with_options(&options);
        let mut token = first;
        for _ in 0..8 {
            let reply: Value = pinger.ping(Some(token.to_string())).await?;
            // `["pong", token]` in subscribed mode on RESP2, `token` otherwise.
            let echoed = match reply {
                Value::Array(mut parts) => parts.pop().and_then(|v| v.into_string()),
                other => other.into_string(),
            };
            if echoed
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t >= first)
            {
                return Ok(());
            }
            token = self.pings.fetch_add(1, Ordering::AcqRel);
        }
        Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "the subscriber connection did not confirm a SUBSCRIBE",
        ))
    }

    /// Unsubscribes from `name`.
    pub(super) async fn unsubscribe(&self, name: &str) -> Result<()> {
        let result = if self.sharded {
            self.client.sunsubscribe(name).await
        } else {
            self.client.unsubscribe(name).await
        };
        result.map_err(|e| redtower_client::Error::from(e).into())
    }
}
