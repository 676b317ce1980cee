//! Test-only helpers: real `redis-server` processes on free loopback ports, in temporary
//! directories, stopped when dropped.
//!
//! * [`RedisServer`]: a standalone server, optionally with AOF; kill, restart on the same port,
//!   pause and resume for fault tests.
//! * [`RedisCluster`]: three primaries (or more) with every slot assigned.
//! * [`RedisSentinel`]: a primary watched by one sentinel.
//! * [`FaultProxy`]: a TCP proxy in front of a server that injects latency, a black hole,
//!   refused or reset connections, and lost replies.
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

mod proxy;
mod resp;

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
#[derive(Debug)]
pub struct RedisSentinel {
    primary: RedisServer,
    port: u16,
    _dir: tempfile::TempDir,
    _process: Supervised,
}

impl RedisSentinel {
    /// The service name the sentinel monitors.
    pub const SERVICE: &'static str = "mymaster";

    /// Starts a primary and a sentinel monitoring it.
    ///
    /// # Panics
    ///
    /// When either does not start.
    pub fn start() -> Self {
        let primary = RedisServer::start();
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
                 sentinel monitor {} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {} 5000\n",
                dir.path().display(),
                Self::SERVICE,
                primary.port(),
                Self::SERVICE
            ),
        )
        .expect("write sentinel.conf");
        let process = Supervised::spawn(
            "redis-server",
            &[conf.display().to_string(), "--sentinel".to_owned()],
        );
        let started = Instant::now();
        loop {
            let reply = resp::command(
                port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
                Duration::from_millis(500),
            );
            if let Ok(Reply::Array(Some(addr))) = reply {
                if addr.len() == 2 {
                    break;
                }
            }
            assert!(started.elapsed() < READY_TIMEOUT, "sentinel did not start");
            thread::sleep(Duration::from_millis(10));
        }
        Self {
            primary,
            port,
            _dir: dir,
            _process: process,
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

    /// The monitored primary.
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }
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
