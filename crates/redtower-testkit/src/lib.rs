//! Test-only helpers: real `redis-server` processes on free loopback ports, in temporary
//! directories, stopped when dropped.
//!
//! * [`RedisServer`]: a standalone server, optionally with AOF; kill, restart on the same port,
//!   pause and resume for fault tests.
//! * [`RedisCluster`]: three primaries (or more) with every slot assigned.
//! * [`RedisSentinel`]: a primary watched by one sentinel, optionally with a replica to fail
//!   over to.
//! * [`FaultProxy`]: a TCP proxy in front of a server that injects latency, a black hole,
//!   refused or reset connections, and lost replies.
//! * [`LogBuffer`]: log output kept in memory, for tests that assert what was logged.
//! * [`shared`] and [`shared_cluster`]: one server of each kind per test binary, for tests
//!   that only need isolation by key prefix ([`unique_prefix`]).
//!
//! Every server runs under a small `sh` supervisor that holds a pipe from the test process:
//! when the test process exits for any reason, even `SIGKILL`, the pipe closes and the
//! supervisor kills its server, so no server outlives the tests.
//!
//! ```no_run
//! let server = redtower_testkit::RedisServer::start();
//! assert_eq!(server.cmd(&["PING"]).as_text().as_deref(), Some("PONG"));
//! ```
//!
//! Needs `redis-server` 7 on the `PATH` (`cargo xtask test` installs it when missing).

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

mod logs;
mod proxy;
mod resp;

pub use logs::LogBuffer;
pub use proxy::{Fault, FaultProxy};
pub use resp::Reply;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port whose `+10000` is also free (Cluster bus ports).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let port = addr.port();
        if port < 50_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found")
}

/// Writes `ca.crt`, `server.crt` and `server.key` into `dir` (a fresh CA, and a certificate
/// for `127.0.0.1` and `localhost` signed by it); returns the CA's PEM.
fn write_test_certs(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca.crt");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("write server.crt");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
    ca.pem()
}

/// A unique key prefix for one test, so tests sharing a server never see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    format!("t-{clean}-{:08x}", rand::random::<u32>())
}

/// A process under an `sh` supervisor that kills it when our end of its stdin closes.
#[derive(Debug)]
struct Supervised {
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Supervised {
    fn spawn(program: &str, args: &[String]) -> Self {
        let script = format!(
            "{program} \"$@\" >/dev/null 2>&1 & pid=$!; echo $pid; read _unused; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; exit 0"
        );
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start {program}: {e}"));
        let stdin = shell.stdin.take();
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("supervisor prints the pid");
        let pid = line.trim().parse().expect("supervisor printed a pid");
        Self { shell, stdin, pid }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }

    fn stop(&mut self) {
        self.signal("-KILL");
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.shell.wait();
    }

    fn is_alive(&self) -> bool {
        Command::new("kill")
            .args(["-0", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start a [`RedisServer`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServerOptions {
    aof: bool,
    cluster: bool,
    tls: bool,
    port: Option<u16>,
    args: Vec<String>,
}

impl ServerOptions {
    /// Persist with an append-only file (`appendfsync always`), so a restart keeps the data.
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Also listen with TLS on [`RedisServer::tls_port`], with a certificate for `127.0.0.1` and
    /// `localhost` signed by a fresh test CA ([`RedisServer::tls_ca_pem`]).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Start as a Cluster node (used by [`RedisCluster`]).
    pub fn cluster(mut self, on: bool) -> Self {
        self.cluster = on;
        self
    }

    /// Listen on this port instead of a free one (e.g. one a client already waits for).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// An extra `--name value` configuration argument.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(format!("--{name}"));
        self.args.push(value.to_owned());
        self
    }

    /// Starts the server.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be started or does not answer within 20 s.
    pub fn start(self) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redtower-redis-")
            .tempdir()
            .expect("temp dir");
        let tls = self.tls.then(|| write_test_certs(dir.path()));
        let mut server = RedisServer {
            port: 0,
            tls_port: None,
            tls_ca_pem: tls,
            dir,
            options: self,
            process: None,
        };
        let mut last = String::new();
        for _ in 0..5 {
            server.port = server.options.port.unwrap_or_else(free_port);
            if server.options.tls {
                server.tls_port = Some(free_port());
            }
            match server.launch() {
                Ok(()) => return server,
                Err(e) => {
                    last = e;
                    server.kill();
                }
            }
        }
        panic!("redis-server did not start: {last}")
    }
}

/// A `redis-server` process on a free loopback port, in its own temporary directory. Stopped
/// when dropped, even if the test panics.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    tls_ca_pem: Option<String>,
    dir: tempfile::TempDir,
    options: ServerOptions,
    process: Option<Supervised>,
}

impl RedisServer {
    /// Starts a standalone server without persistence.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be started.
    pub fn start() -> Self {
        Self::options().start()
    }

    /// Options for a server ([`ServerOptions::start`] starts it).
    pub fn options() -> ServerOptions {
        ServerOptions::default()
    }

    fn launch(&mut self) -> Result<(), String> {
        let d = self.dir.path().display().to_string();
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &d,
            "--save",
            "",
            "--logfile",
            "redis.log",
            "--protected-mode",
            "no",
            "--enable-debug-command",
            "yes",
            "--appendonly",
            if self.options.aof { "yes" } else { "no" },
            "--appendfsync",
            "always",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if self.options.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                    "--cluster-port",
                    &(self.port + 10_000).to_string(),
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        if let Some(tls_port) = self.tls_port {
            args.extend(
                [
                    "--tls-port",
                    &tls_port.to_string(),
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                    "--tls-ca-cert-file",
                    "ca.crt",
                    "--tls-auth-clients",
                    "no",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        args.extend(self.options.args.iter().cloned());
        let process = Supervised::spawn("redis-server", &args);
        self.process = Some(process);
        self.wait_ready().map_err(|e| {
            let log =
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            format!(
                "{e}; log tail: {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            )
        })
    }

    fn wait_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            match resp::command(self.port, &["PING"], Duration::from_millis(500)) {
                Ok(Reply::Status(s)) if s == "PONG" => return Ok(()),
                other => {
                    if self.process.as_ref().is_some_and(|p| !p.is_alive()) {
                        return Err(format!("redis-server on port {} exited", self.port));
                    }
                    if started.elapsed() > READY_TIMEOUT {
                        return Err(format!("no PONG on port {}: {other:?}", self.port));
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port, for a server started with [`ServerOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:<tls port>`, for a server started with [`ServerOptions::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// The PEM of the CA that signed the server's TLS certificate.
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls_ca_pem.as_deref()
    }

    /// The data directory (AOF, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a command and returns its reply.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        resp::command(self.port, args, CMD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{args:?} on port {}: {e}", self.port))
    }

    /// Runs a command, returning connection errors instead of panicking.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub fn try_cmd(&self, args: &[&str]) -> std::io::Result<Reply> {
        resp::command(self.port, args, CMD_TIMEOUT)
    }

    /// Starts watching the commands that clients send to this server (`MONITOR`), to count
    /// round trips: see [`Monitor`].
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub fn monitor(&self) -> Monitor {
        Monitor::connect(self.port).unwrap_or_else(|e| panic!("MONITOR on port {}: {e}", self.port))
    }

    /// Kills the server with `SIGKILL` (no shutdown, no final AOF flush beyond `always`).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Supervised::is_alive)
    }

    /// Starts the server again on the same port and directory (with AOF, with the same data).
    ///
    /// # Panics
    ///
    /// When it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        loop {
            match self.launch() {
                Ok(()) => return,
                // The port may linger briefly after a kill.
                Err(e) if started.elapsed() < READY_TIMEOUT => {
                    let _ = e;
                    self.kill();
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("restart failed: {e}"),
            }
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open, nothing is answered.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal("-STOP");
        }
    }

    /// Resumes a [paused](Self::pause) server (`SIGCONT`).
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.signal("-CONT");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A Redis Cluster of primaries with every slot assigned, stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts a 3-primary Cluster and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When the Cluster does not form within 20 s.
    pub fn start() -> Self {
        Self::with_primaries(3)
    }

    /// Starts a Cluster of `n` primaries (at least 1).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn with_primaries(n: u16) -> Self {
        assert!(n >= 1);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::options().cluster(true).start())
            .collect();
        let per = 16_384 / n;
        for (i, node) in nodes.iter().enumerate() {
            let i = i as u16;
            let first = i * per;
            let last = if i + 1 == n { 16_383 } else { first + per - 1 };
            let epoch = (i + 1).to_string();
            let reply = node.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &epoch]);
            assert_eq!(reply, Reply::Status("OK".into()), "set-config-epoch");
            let reply = node.cmd(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]);
            assert_eq!(reply, Reply::Status("OK".into()), "addslotsrange");
        }
        for node in &nodes[1..] {
            let reply = nodes[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()]);
            assert_eq!(reply, Reply::Status("OK".into()), "meet");
        }
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let started = Instant::now();
        loop {
            let ok = self.nodes.iter().all(|node| {
                let info = node.cmd(&["CLUSTER", "INFO"]).as_text().unwrap_or_default();
                let nodes = node
                    .cmd(&["CLUSTER", "NODES"])
                    .as_text()
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && nodes
                        .lines()
                        .filter(|l| l.contains("master") && !l.contains("fail"))
                        .count()
                        == self.nodes.len()
            });
            if ok {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "cluster did not become ok"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=...`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes (to kill or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Runs a command on every node, returning the replies in node order.
    pub fn cmd_all(&self, args: &[&str]) -> Vec<Reply> {
        self.nodes.iter().map(|n| n.cmd(args)).collect()
    }

    /// The node serving `slot`.
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        let n = self.nodes.len() as u16;
        let per = 16_384 / n;
        &self.nodes[usize::from((slot / per).min(n - 1))]
    }
}

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
            if let Some(promoted_at) = promoted_at {
                if self.try_master_port() == Some(replica.port()) {
                    return Promotion {
                        promoted_at,
                        switched_at: now,
                        port: replica.port(),
                    };
                }
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

/// One standalone server shared by every test of this test binary (started on first use).
/// Tests sharing it must use their own key prefix ([`unique_prefix`]) and must not flush it.
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// One 3-primary Cluster shared by every test of this test binary (started on first use).
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// The URL of the shared standalone server: `REDTOWER_TEST_REDIS_URL` when set (to run the
/// tests against an existing server), else [`shared`]'s.
pub fn shared_url() -> String {
    match std::env::var("REDTOWER_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => shared().url(),
    }
}

/// A `MONITOR` connection to a server: the commands its clients send, in order, without the
/// commands that scripts run (`redis.call`), so each is one request on the wire.
///
/// ```
/// let server = redtower_testkit::RedisServer::start();
/// let mut monitor = server.monitor();
/// server.cmd(&["SET", "k", "v"]);
/// assert_eq!(monitor.take(), [r#""SET" "k" "v""#]);
/// ```
#[derive(Debug)]
pub struct Monitor {
    port: u16,
    reader: BufReader<std::net::TcpStream>,
    markers: u64,
}

impl Monitor {
    /// Watches the server listening on `port` of this host (any server, not only one this kit
    /// started).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or refuses `MONITOR`.
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(CMD_TIMEOUT))?;
        (&stream).write_all(b"*1\r\n$7\r\nMONITOR\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim_end() != "+OK" {
            return Err(std::io::Error::other(format!("MONITOR answered {line:?}")));
        }
        Ok(Self {
            port,
            reader,
            markers: 0,
        })
    }

    /// The commands clients sent since the last call (or since the monitor connected), each
    /// as `MONITOR` quotes it (`"EVALSHA" "…" …`), in order; commands run inside scripts are
    /// left out. Returns once the server has shown all of them (it echoes a marker sent after
    /// them, which is not included).
    ///
    /// # Panics
    ///
    /// When the server stops answering ([`try_take`](Self::try_take) returns the error).
    pub fn take(&mut self) -> Vec<String> {
        self.try_take()
            .unwrap_or_else(|e| panic!("MONITOR on port {}: {e}", self.port))
    }

    /// [`take`](Self::take), with the server's failure to answer as an error.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or the `MONITOR` connection ends.
    pub fn try_take(&mut self) -> std::io::Result<Vec<String>> {
        self.markers += 1;
        let marker = format!(
            "redtower-testkit-monitor-{}-{}",
            std::process::id(),
            self.markers
        );
        resp::command(self.port, &["ECHO", &marker], CMD_TIMEOUT)?;
        let quoted = format!("\"{marker}\"");
        let mut sent = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the MONITOR connection closed",
                ));
            }
            let line = line.trim_end();
            // `+<time> [<db> <client>] "CMD" "arg" ...`; scripts' commands show `[<db> lua]`.
            let Some((client, command)) = line
                .strip_prefix('+')
                .and_then(|l| l.split_once(" ["))
                .and_then(|(_, rest)| rest.split_once("] "))
            else {
                continue;
            };
            if command.ends_with(&quoted) && command.starts_with("\"ECHO\"") {
                return Ok(sent);
            }
            if !client.ends_with(" lua") {
                sent.push(command.to_owned());
            }
        }
    }
}
