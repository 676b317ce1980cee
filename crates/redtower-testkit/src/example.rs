//! Example programs (`examples/*.rs` of a crate) run as child processes, and a minimal
//! HTTP/1.1 client to talk to them.
//!
//! An example under test reads its listen address from `ADDR` and prints
//! `listening on http://<addr>` once it accepts connections; [`Example::start`] gives it
//! `ADDR=127.0.0.1:0` (a free port chosen by the OS, so there is no race for it) and reads the
//! address back from that line.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

/// How long an example may take to print its address, and a request to be answered.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running example program, killed when dropped.
#[derive(Debug)]
pub struct Example {
    child: Child,
    addr: SocketAddr,
    /// The lines the example prints on stdout after its address.
    lines: Receiver<String>,
}

/// The path of example `name` of `package`, built next to the running test binary (`cargo
/// test` builds a package's examples before its tests); built with `cargo build --example`
/// when it is not there. A run filtered with `--test` builds no example, so it uses the binary
/// an earlier build left: run `cargo test` unfiltered (or `cargo build --examples`) after
/// editing an example.
pub fn example_path(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps")
        .join("examples");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--all-features", "--example", name])
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building example {name} of {package} failed"
        );
    }
    bin
}

impl Example {
    /// Starts example `name` of `package` on a free loopback port with `env` (and without
    /// `REDIS_URL` unless `env` sets it), and waits until it listens.
    ///
    /// # Panics
    ///
    /// When the example cannot be built or started, or exits before it listens.
    pub fn start(package: &str, name: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(example_path(package, name));
        command
            .env_remove("REDIS_URL")
            .env("ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the example starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        // Drains stdout for the example's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut example = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let line = example
            .line(|l| l.contains("listening on http://"), PATIENCE)
            .unwrap_or_else(|| panic!("example {name} exited or never listened"));
        let addr = line.rsplit("http://").next().unwrap_or_default();
        example.addr = addr
            .trim()
            .parse()
            .expect("an address after `listening on`");
        example
    }

    /// The address the example listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next line the example prints on stdout that satisfies `matches`, within `timeout`;
    /// `None` when it exits or the time runs out first.
    pub fn line(&self, matches: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.send("GET", path, headers, b"")
    }

    /// `POST path` with `body`.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        self.send("POST", path, headers, body)
    }

    /// One request on a new connection (`Connection: close`), and its whole response. `Host`
    /// is the example's address unless `headers` has one.
    ///
    /// # Panics
    ///
    /// When the example does not answer a well-formed response within 30 s.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let (mut reader, status, response_headers) =
            self.open(method, path, headers, body, "close");
        let mut raw = Vec::new();
        reader.read_to_end(&mut raw).expect("the response body");
        let chunked = response_headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked { dechunk(&raw) } else { raw };
        HttpResponse {
            status,
            headers: response_headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// `GET path` kept open, for a streamed response (server-sent events): the status, the
    /// headers, and a reader of the body's lines (transfer-encoding framing included).
    pub fn stream(&self, path: &str, headers: &[(&str, &str)]) -> HttpStream {
        let (reader, status, headers) = self.open("GET", path, headers, b"", "keep-alive");
        HttpStream {
            status,
            headers,
            reader,
        }
    }

    fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        connection: &str,
    ) -> (BufReader<TcpStream>, u16, Vec<(String, String)>) {
        let mut tcp = TcpStream::connect(self.addr).expect("the example accepts connections");
        tcp.set_read_timeout(Some(PATIENCE))
            .expect("a read timeout");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nConnection: {connection}\r\nContent-Length: {}\r\n",
            body.len()
        );
        // The example's address, unless the caller names a host.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).expect("the request is sent");
        tcp.write_all(body).expect("the request body is sent");
        let mut reader = BufReader::new(tcp);
        let mut line = String::new();
        reader.read_line(&mut line).expect("a status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
        let mut response_headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("a header line");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                response_headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        (reader, status, response_headers)
    }

    /// Sends `SIGINT` (what Ctrl-C sends) and waits for the example to exit: it should shut
    /// down gracefully and exit successfully.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent or the example is still running 30 s later.
    pub fn interrupt(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGINT was not delivered");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running 30 s after SIGINT");
            // Polled: std has no wait with a timeout on a child process.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked transfer decoded), as text.
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The `name=value` part of the first `Set-Cookie`, to send back as a `Cookie` header.
    pub fn cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .and_then(|c| c.split(';').next())
            .map(str::to_owned)
    }
}

/// A response being streamed: see [`Example::stream`].
#[derive(Debug)]
pub struct HttpStream {
    /// The status code.
    pub status: u16,
    /// The header fields, in order.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl HttpStream {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Reads the body line by line until a line satisfies `matches` (returned) or the server
    /// ends the stream (`None`).
    ///
    /// # Panics
    ///
    /// When nothing arrives for 30 s, or the connection fails.
    pub fn line(&mut self, matches: impl Fn(&str) -> bool) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Err(e) => panic!("reading the stream: {e}"),
                Ok(_) if matches(line.trim_end()) => return Some(line.trim_end().to_owned()),
                Ok(_) => {}
            }
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The payload of a chunked body (extensions and trailers ignored).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        raw = &raw[end + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}
