//! [`Script`]: Lua compiled into the binary, run with `EVALSHA`, reloaded transparently.

use std::fmt;

use fred::{
    interfaces::LuaInterface,
    types::{FromValue, MultipleKeys, MultipleValues},
};

use crate::{Error, Redis, Result};

/// A Lua script, usually compiled in with `include_str!` and kept in a `static`.
///
/// [`run`](Self::run) sends `EVALSHA`. When the server does not know the script (`NOSCRIPT`:
/// after a restart, a failover or `SCRIPT FLUSH`) it is loaded on every primary and run again,
/// once, so callers never see that error. Scripts a [`Redis`] handle has run are loaded again
/// after every reconnect.
///
/// Scripts must only touch the keys passed in `KEYS` (on a Cluster, all in one slot: build them
/// from one tag with the [`Keyspace`](crate::Keyspace)), and should read time with
/// `redis.call('TIME')` rather than take the caller's clock.
///
/// ```no_run
/// use std::sync::LazyLock;
/// use redtower_client::{Redis, Script};
///
/// static INCR_WITH_TTL: LazyLock<Script> = LazyLock::new(|| {
///     Script::new(
///         "incr_with_ttl",
///         "local n = redis.call('INCR', KEYS[1]) \
///          if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
///          return n",
///     )
/// });
///
/// # async fn run(redis: Redis) -> Result<(), redtower_client::Error> {
/// let key = redis.keyspace().namespace("demo").key("counter");
/// let n: i64 = INCR_WITH_TTL.run(&redis, vec![key], vec![60_000]).await?;
/// # let _ = n;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Script {
    name: &'static str,
    inner: fred::types::scripts::Script,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("sha1", &self.sha1())
            .finish()
    }
}

impl Script {
    /// A script named `name` (used in logs and errors) with the source `lua`.
    pub fn new(name: &'static str, lua: &'static str) -> Self {
        Self {
            name,
            inner: fred::types::scripts::Script::from_lua(lua),
        }
    }

    /// The script's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The SHA-1 of the source, as `EVALSHA` uses it.
    pub fn sha1(&self) -> &str {
        self.inner.sha1()
    }

    /// Loads the script on every primary now (it is otherwise loaded on first use).
    ///
    /// # Errors
    ///
    /// When Redis is unreachable or rejects the script.
    pub async fn load(&self, redis: &Redis) -> Result<()> {
        redis.scripts().insert(&self.inner);
        self.inner.load(redis.client()).await.map_err(Error::from)
    }

    /// Runs the script with `keys` and `args` and converts the reply to `R`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Script`](crate::ErrorKind::Script) when the script fails, and the usual
    /// timeout / unavailable / cluster errors.
    pub async fn run<R, K, V>(&self, redis: &Redis, keys: K, args: V) -> Result<R>
    where
        R: FromValue,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<fred::error::Error> + Send,
    {
        if !redis.scripts().contains(self.sha1()) {
            redis.scripts().insert(&self.inner);
        }
        let keys: MultipleKeys = keys.into();
        let args: MultipleValues = args.try_into().map_err(|e| Error::from(e.into()))?;
        let client = redis.client();
        match client
            .evalsha::<R, _, _, _>(self.inner.sha1().clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(target: "redtower::redis", script = self.name, "NOSCRIPT: loading");
                self.inner.load(client).await?;
                client
                    .evalsha(self.inner.sha1().clone(), keys, args)
                    .await
                    .map_err(|e| self.error(e))
            }
            result => result.map_err(|e| self.error(e)),
        }
    }

    fn error(&self, e: fred::error::Error) -> Error {
        let err = Error::from(e);
        if err.is_script() {
            tracing::error!(target: "redtower::redis", script = self.name, error = %err, "Lua script failed");
        }
        err
    }
}
