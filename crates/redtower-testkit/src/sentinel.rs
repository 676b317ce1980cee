//! [`RedisSentinel`]: a primary watched by one sentinel, optionally with a replica to fail over
//! to.

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use crate::{
    RedisServer, Reply,
    process::{CMD_TIMEOUT, READY_TIMEOUT, Supervised, free_port},
    resp,
};

/// A primary watched by one sentinel under the service name `mymaster`, stopped when dropped.
///
/// [`start`](Self::start) starts the primary alone. [`with_replica`](Self::with_replica) adds a
/// replica and makes the sentinel quick to act (quorum 1, `down-after-milliseconds` 1000), so a
/// test can take the primary down ([`kill_primary`](Self::kill_primary)) and wait for the
/// replica to take over ([`wait_promoted`](Self::wait_promoted)).
///
/// ```
/// use std::time::Duration;
/// use redtower_testkit::RedisSentinel;
///
/// let mut group = RedisSentinel::with_replica();
/// assert_eq!(group.master_port(), group.primary().port());
/// group.primary().cmd(&["SET", "k", "written before the crash"]);
///
/// group.kill_primary();
/// let promotion = group.wait_promoted(Duration::from_secs(60));
/// let replica = group.replica().unwrap();
/// assert_eq!(promotion.port, replica.port());
/// assert_eq!(group.master_port(), replica.port());
/// assert!(promotion.switched_at >= promotion.promoted_at);
/// // Nothing the primary acknowledged was lost.
/// let value = replica.cmd(&["GET", "k"]).as_text();
/// assert_eq!(value.as_deref(), Some("written before the crash"));
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    primary: RedisServer,
    replica: Option<RedisServer>,
    port: u16,
    dir: tempfile::TempDir,
    _process: Supervised,
}

/// When a [`RedisSentinel`] group's replica took over, as the test observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The replica first reported `role:master` (`ROLE`): the sentinel promoted it.
    pub promoted_at: Instant,
    /// The sentinel first named the replica as the primary (`SENTINEL
    /// GET-MASTER-ADDR-BY-NAME`): from now on, clients that ask the sentinel find it.
    pub switched_at: Instant,
    /// The new primary's port.
    pub port: u16,
}

impl RedisSentinel {
    /// The service name the sentinel monitors.
    pub const SERVICE: &'static str = "mymaster";

    /// How long the primary must be unreachable before a [`with_replica`](Self::with_replica)
    /// sentinel considers it down and fails over.
    pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

    /// Starts a primary and a sentinel monitoring it (no replica, so no failover).
    ///
    /// # Panics
    ///
    /// When either does not start.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        Self::watch(
            primary,
            None,
            "sentinel down-after-milliseconds mymaster 5000\n",
        )
    }

    /// Starts a primary, a replica of it (in sync before this returns) and one sentinel with
    /// quorum 1 that considers the primary down after [`DOWN_AFTER`](Self::DOWN_AFTER) and
    /// then promotes the replica. Returns once the sentinel has seen the replica in sync, so a
    /// failover can start at once.
    ///
    /// # Panics
    ///
    /// When a server does not start or the replica does not sync within 20 s.
    pub fn with_replica() -> Self {
        let primary = RedisServer::start();
        let replica = RedisServer::options()
            .arg("replicaof", &format!("127.0.0.1 {}", primary.port()))
            .start();
        let started = Instant::now();
        while info_field(&replica, "master_link_status").as_deref() != Some("up") {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the replica did not sync with the primary"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let sentinel = Self::watch(
            primary,
            Some(replica),
            &format!(
                "sentinel down-after-milliseconds mymaster {}\n\
                 sentinel failover-timeout mymaster 10000\n\
                 sentinel parallel-syncs mymaster 1\n",
                Self::DOWN_AFTER.as_millis()
            ),
        );
        sentinel.wait_replica_known();
        sentinel
    }

    fn watch(primary: RedisServer, replica: Option<RedisServer>, settings: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redtower-sentinel-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let conf: PathBuf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nlogfile sentinel.log\n\
                 sentinel monitor {} 127.0.0.1 {} 1\n{settings}",
                dir.path().display(),
                Self::SERVICE,
                primary.port(),
            ),
        )
        .expect("write sentinel.conf");
        let process = Supervised::spawn(
            "redis-server",
            &[conf.display().to_string(), "--sentinel".to_owned()],
        );
        let sentinel = Self {
            primary,
            replica,
            port,
            dir,
            _process: process,
        };
        let started = Instant::now();
        while sentinel.try_master_port().is_none() {
            assert!(started.elapsed() < READY_TIMEOUT, "sentinel did not start");
            thread::sleep(Duration::from_millis(10));
        }
        sentinel
    }

    /// Waits until the sentinel lists the replica, connected and in sync: only such a replica
    /// can be promoted.
    fn wait_replica_known(&self) {
        let Some(replica) = &self.replica else { return };
        let want = format!("127.0.0.1:{}", replica.port());
        let started = Instant::now();
        loop {
            let ok = resp::command(
                self.port,
                &["SENTINEL", "REPLICAS", Self::SERVICE],
                Duration::from_millis(500),
            )
            .map(Reply::into_array)
            .unwrap_or_default()
            .into_iter()
            .map(|r| fields(r.into_array()))
            .any(|f| {
                field(&f, "name") == Some(want.as_str())
                    && field(&f, "flags") == Some("slave")
                    && field(&f, "master-link-status") == Some("ok")
            });
            if ok {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the sentinel did not see the replica in sync"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-sentinel://127.0.0.1:<sentinel port>?sentinelServiceName=mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.port,
            Self::SERVICE
        )
    }

    /// The server started as the primary (after a failover it is no longer the primary, and
    /// after [`kill_primary`](Self::kill_primary) it is not running).
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The server started as the replica, for a group started with
    /// [`with_replica`](Self::with_replica).
    pub fn replica(&self) -> Option<&RedisServer> {
        self.replica.as_ref()
    }

    /// The sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sentinel's log (`sentinel.log`), to explain a failover in a failing test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// The port of the primary the sentinel names now (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Panics
    ///
    /// When the sentinel does not answer.
    pub fn master_port(&self) -> u16 {
        self.try_master_port()
            .unwrap_or_else(|| panic!("sentinel on port {} did not name a primary", self.port))
    }

    fn try_master_port(&self) -> Option<u16> {
        let reply = resp::command(
            self.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
            Duration::from_millis(500),
        )
        .ok()?;
        reply.into_array().get(1)?.as_text()?.parse().ok()
    }

    /// Takes the primary down for good, as a crash would: `SIGKILL`, after a moment in which
    /// its writes are paused (`CLIENT PAUSE WRITE`) until the replica has every write the
    /// primary acknowledged. Clients see their connections drop and, until the sentinel
    /// promotes the replica, no primary.
    ///
    /// The pause makes the failover lose nothing: without it, writes acknowledged in the last
    /// moment before the crash can be missing on the replica (Redis replicates
    /// asynchronously), so any write a test finds lost or repeated is the client's doing.
    ///
    /// # Panics
    ///
    /// For a group without a replica, or when the replica does not catch up within 20 s.
    pub fn kill_primary(&mut self) {
        let replica = self
            .replica
            .as_ref()
            .expect("kill_primary needs a group started with_replica");
        // Long enough to cover the wait below; the process is killed long before it ends.
        let reply = self.primary.cmd(&["CLIENT", "PAUSE", "30000", "WRITE"]);
        assert_eq!(reply, Reply::Status("OK".into()), "CLIENT PAUSE");
        let started = Instant::now();
        loop {
            let sent = info_field(&self.primary, "master_repl_offset");
            let applied = info_field(replica, "slave_repl_offset");
            if sent.is_some() && sent == applied {
                break;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the replica did not catch up: primary at {sent:?}, replica at {applied:?}"
            );
            thread::sleep(Duration::from_millis(2));
        }
        self.primary.kill();
    }

    /// Asks the sentinel for a failover now (`SENTINEL FAILOVER`), as an operator does for
    /// maintenance: the primary keeps running, the sentinel promotes the replica and later
    /// (about 10 s on) turns the old primary into a replica of the new one, closing its
    /// clients' connections. Follow with [`wait_promoted`](Self::wait_promoted).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_testkit::{RedisSentinel, Reply};
    ///
    /// let group = RedisSentinel::with_replica();
    /// group.failover();
    /// let promotion = group.wait_promoted(Duration::from_secs(60));
    /// assert_eq!(group.master_port(), group.replica().unwrap().port());
    /// // The old primary still runs, and still takes writes for a while.
    /// assert_eq!(group.primary().cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));
    /// # let _ = promotion;
    /// ```
    ///
    /// # Panics
    ///
    /// For a group without a replica, or when the sentinel refuses.
    pub fn failover(&self) {
        assert!(
            self.replica.is_some(),
            "failover needs a group started with_replica"
        );
        let reply = resp::command(
            self.port,
            &["SENTINEL", "FAILOVER", Self::SERVICE],
            CMD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("SENTINEL FAILOVER on port {}: {e}", self.port));
        assert_eq!(reply, Reply::Status("OK".into()), "SENTINEL FAILOVER");
    }

    /// Waits until the replica has been promoted and the sentinel names it as the primary;
    /// returns when each was first seen (polled every few milliseconds, so a moment late at
    /// most by the polling interval). Call it right after the primary went down.
    ///
    /// # Panics
    ///
    /// For a group without a replica, or when the promotion does not happen within `timeout`
    /// (a sentinel on a starved machine may enter TILT mode for 30 s: allow for it).
    pub fn wait_promoted(&self, timeout: Duration) -> Promotion {
        let replica = self
            .replica
            .as_ref()
            .expect("wait_promoted needs a group started with_replica");
        let started = Instant::now();
        let mut promoted_at = None;
        loop {
            let now = Instant::now();
            if promoted_at.is_none()
                && resp::command(replica.port(), &["ROLE"], Duration::from_millis(500))
                    .ok()
                    .and_then(|r| r.into_array().first().and_then(Reply::as_text))
                    .is_some_and(|role| role == "master")
            {
                promoted_at = Some(now);
            }
            if let Some(promoted_at) = promoted_at
                && self.try_master_port() == Some(replica.port())
            {
                return Promotion {
                    promoted_at,
                    switched_at: now,
                    port: replica.port(),
                };
            }
            assert!(
                started.elapsed() < timeout,
                "no failover within {timeout:?}; sentinel log tail: {}",
                self.log()
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A field of `INFO`'s text (`name:value` lines), if the server answers.
fn info_field(server: &RedisServer, name: &str) -> Option<String> {
    let info = server.try_cmd(&["INFO", "replication"]).ok()?.as_text()?;
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// A flat `[name, value, name, value, ...]` reply as pairs of text.
fn fields(flat: Vec<Reply>) -> Vec<(String, String)> {
    let text: Vec<String> = flat
        .iter()
        .map(|r| r.as_text().unwrap_or_default())
        .collect();
    text.chunks(2)
        .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
