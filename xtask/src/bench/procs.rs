//! The processes of a run: a private `redis-server`, the app instances and the baselines, each
//! on a free loopback port, killed when dropped; and their peak resident memory.

use std::{
    ffi::OsStr,
    fs::File,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use super::http;

/// What a process is to the run, for `--pin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A server under test: the app instances and the baselines.
    Server,
    /// What drives or serves them: `wrk` and `redis-server`.
    Load,
}

/// The CPU lists of `--pin` (`taskset -c` syntax): the servers under test, then the rest.
static PINNED: OnceLock<(String, String)> = OnceLock::new();

/// Pins, from now on, every server under test to CPU 0 and `wrk` and `redis-server` to the
/// other CPUs, as if the load and Redis ran on machines of their own. Each server then sees
/// one CPU (Tokio starts one worker). Needs `taskset` and at least 2 CPUs; returns the layout
/// as words for the report.
pub(crate) fn pin() -> Result<String, String> {
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    let (server, load) = layout(cpus)?;
    let ok = Command::new("taskset")
        .args(["-c", &server, "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(format!(
            "--pin needs `taskset` (util-linux) and CPU {server} to be usable"
        ));
    }
    let words = format!("servers under test on CPU {server}, `wrk` and redis-server on CPU {load}");
    let _ = PINNED.set((server, load));
    Ok(words)
}

/// The CPU lists of `--pin` on a machine with `cpus` CPUs: the servers under test, the rest.
fn layout(cpus: usize) -> Result<(String, String), String> {
    match cpus {
        0 | 1 => Err(format!(
            "--pin needs at least 2 CPUs, this process may use {cpus}"
        )),
        2 => Ok(("0".to_owned(), "1".to_owned())),
        n => Ok(("0".to_owned(), format!("1-{}", n - 1))),
    }
}

/// A command running `program`, pinned as its `role` says when the run pins (see [`pin`]).
pub(crate) fn command(program: impl AsRef<OsStr>, role: Role) -> Command {
    command_in(PINNED.get(), program, role)
}

fn command_in(
    pinned: Option<&(String, String)>,
    program: impl AsRef<OsStr>,
    role: Role,
) -> Command {
    match pinned {
        Some((server, load)) => {
            let mut cmd = Command::new("taskset");
            let cpus = if role == Role::Server { server } else { load };
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A child process, killed (and reaped) when dropped.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) port: u16,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with its output in `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        port: u16,
        mut cmd: Command,
        log_dir: &Path,
    ) -> Result<Self, String> {
        let log = File::create(log_dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); see its log in target/xtask-bench/",
                self.name
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Waits until the port accepts connections and, when `health` is given, until that path
    /// answers 200.
    pub(crate) fn wait_ready(&mut self, health: Option<&str>) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            let up = match health {
                None => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
                Some(path) => http::get(self.port, path, None).is_ok_and(|r| r.status == 200),
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready on port {}", self.name, self.port));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resets the process's peak resident memory (`VmHWM`) to its current size (Linux).
    pub(crate) fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// The peak resident memory in KiB since the last reset (Linux `VmHWM`).
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// A `redis-server` of its own: loopback only, no RDB, no AOF.
pub(crate) fn redis_server(log_dir: &Path) -> Result<Proc, String> {
    let port = free_port()?;
    let mut cmd = command("redis-server", Role::Load);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]);
    let mut proc = Proc::spawn("redis-server", port, cmd, log_dir)?;
    proc.wait_ready(None)?;
    Ok(proc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_gives_cpu_0_to_the_servers_and_the_rest_to_the_load() {
        assert!(layout(1).is_err());
        assert_eq!(layout(2), Ok(("0".to_owned(), "1".to_owned())));
        assert_eq!(layout(8), Ok(("0".to_owned(), "1-7".to_owned())));
        let pinned = layout(4).unwrap();
        let args = |cmd: &Command| {
            std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let server = command_in(Some(&pinned), "app", Role::Server);
        assert_eq!(args(&server), ["taskset", "-c", "0", "app"]);
        let load = command_in(Some(&pinned), "wrk", Role::Load);
        assert_eq!(args(&load), ["taskset", "-c", "1-3", "wrk"]);
        assert_eq!(args(&command_in(None, "wrk", Role::Load)), ["wrk"]);
    }
}
