//! [`RedisServer`]: a standalone server, with AOF, TLS or cluster mode on request.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use crate::{
    Monitor, Reply,
    process::{CMD_TIMEOUT, READY_TIMEOUT, Supervised, free_port},
    resp,
};

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

    /// Start as a Cluster node (used by [`RedisCluster`](crate::RedisCluster)).
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

    /// An extra configuration directive with several values, `--name v1 v2 ..` (e.g.
    /// `rename-command HELLO hello-off`).
    pub fn arg_values(mut self, name: &str, values: &[&str]) -> Self {
        self.args.push(format!("--{name}"));
        self.args.extend(values.iter().map(|v| (*v).to_owned()));
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
