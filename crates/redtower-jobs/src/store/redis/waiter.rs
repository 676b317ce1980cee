//! [`RedisWaiter`]: the blocking wait of an idle worker.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::{ClientLike, ListInterface},
    types::{Value, config::Options},
};
use redtower_client::{Key, Redis};

use crate::{Result, store::Waiter};

/// Blocks on the queue's wake list with `BLPOP` on a dedicated connection, recycled by a
/// watchdog when a call outlives its timeout (a wedged blocking connection).
#[derive(Debug)]
pub(super) struct RedisWaiter {
    redis: Redis,
    client: Option<Client>,
    wake: Key,
}

#[async_trait::async_trait]
impl Waiter for RedisWaiter {
    async fn wait(&mut self, timeout: Duration) -> Result<()> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = self.redis.dedicated()?;
                self.client = Some(c.clone());
                // A new connection is not an outage: wait for it (bounded) before blocking.
                if tokio::time::timeout(timeout, c.wait_for_connect())
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                c
            }
        };
        // BLPOP takes seconds with millisecond resolution; 0 would block forever.
        let secs = (timeout.as_millis().max(1) as f64) / 1000.0;
        let opts = Options {
            timeout: Some(timeout + Duration::from_secs(2)),
            max_attempts: Some(1),
            ..Options::default()
        };
        let with = client.with_options(&opts);
        let call = with.blpop::<Value, _>(self.wake.as_str(), secs);
        match tokio::time::timeout(timeout + Duration::from_secs(3), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if !e.is_canceled() {
                    self.recycle();
                }
                Err(redtower_client::Error::from(e).into())
            }
            Err(_) => {
                tracing::warn!(target: "redtower::jobs", "blocking wait outlived its timeout; recycling its connection");
                self.recycle();
                Ok(())
            }
        }
    }
}

impl RedisWaiter {
    /// A waiter on the wake list `wake`; its connection is opened by the first wait.
    pub(super) fn new(redis: Redis, wake: Key) -> Self {
        Self {
            redis,
            client: None,
            wake,
        }
    }

    fn recycle(&mut self) {
        if let Some(c) = self.client.take() {
            tokio::spawn(async move {
                let _ = c.quit().await;
            });
        }
    }
}

impl Drop for RedisWaiter {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = c.quit().await;
            });
        }
    }
}
