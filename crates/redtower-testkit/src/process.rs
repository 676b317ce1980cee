//! Processes under a supervisor that cannot outlive the test process, on free ports.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

/// How long a server (or sentinel, or cluster) has to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a command to a test server may take.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A process under an `sh` supervisor that kills it when our end of its stdin closes.
#[derive(Debug)]
pub(crate) struct Supervised {
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Supervised {
    pub(crate) fn spawn(program: &str, args: &[String]) -> Self {
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

    pub(crate) fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }

    pub(crate) fn stop(&mut self) {
        self.signal("-KILL");
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.shell.wait();
    }

    pub(crate) fn is_alive(&self) -> bool {
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
