//! [`Script`]: Lua compiled into the binary, run with `EVALSHA`, reloaded transparently.

use std::fmt;

use fred::{
    interfaces::ClientLike,
    types::{
        ClusterHash, CustomCommand, FromValue, MultipleKeys, MultipleValues, Value, config::Options,
    },
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
    /// The call is pipelined with every other command on the connection (fred's own
    /// `EVALSHA` waits for each reply before the next command is written; see
    /// [`run_with`](Self::run_with)).
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
        self.run_with(redis, &Options::default(), keys, args).await
    }

    /// [`run`](Self::run) with per-call fred [`Options`] (a shorter timeout, one attempt for a
    /// script that is not safe to re-send, fail-fast).
    ///
    /// `EVALSHA` goes out as a command routed by the slot of the first key (every key of a
    /// script shares one slot), so calls are pipelined like any other command. That is safe:
    /// each script runs atomically on the server, and a `NOSCRIPT` reply (after a restart, a
    /// failover or `SCRIPT FLUSH`) is handled per call, by loading the script on every primary
    /// and sending the same call again, once; the script did not run, so nothing runs twice.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_with<R, K, V>(
        &self,
        redis: &Redis,
        options: &Options,
        keys: K,
        args: V,
    ) -> Result<R>
    where
        R: FromValue,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<fred::error::Error> + Send,
    {
        if !redis.scripts().contains(self.sha1()) {
            redis.scripts().insert(&self.inner);
        }
        let keys = keys.into().inner();
        let args: MultipleValues = args.try_into().map_err(|e| Error::from(e.into()))?;
        // The first key's slot, given as a slot: fred 10 routes a custom command by
        // `ClusterHash::Custom` only, and by the first string argument (here the SHA-1)
        // otherwise, which on a Cluster would send the call to the wrong primary (a `MOVED`
        // that a one-attempt call does not follow).
        let hash = match keys.first() {
            Some(key) => ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes())),
            None => ClusterHash::Random,
        };
        let command = CustomCommand::new_static("EVALSHA", hash, false);
        // What fred's own `EVALSHA` sends (a map argument flattens to its pairs).
        let args = match args {
            Value::Array(values) => values,
            Value::Map(map) => map
                .inner()
                .into_iter()
                .flat_map(|(k, v)| [Value::Bytes(k.into_bytes()), v])
                .collect(),
            Value::Null => Vec::new(),
            one => vec![one],
        };
        let mut argv: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        argv.push(Value::String(self.inner.sha1().clone()));
        argv.push(Value::Integer(
            i64::try_from(keys.len()).unwrap_or(i64::MAX),
        ));
        argv.extend(keys.into_iter().map(|k| Value::Bytes(k.into_bytes())));
        argv.extend(args);
        let client = redis.client().with_options(options);
        match client.custom::<R, _>(command.clone(), argv.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(target: "redtower::redis", script = self.name, "NOSCRIPT: loading");
                self.inner.load(redis.client()).await?;
                client
                    .custom(command, argv)
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
