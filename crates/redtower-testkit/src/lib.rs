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
//! * [`Example`]: a crate's example program started on a free port, with a minimal HTTP/1.1
//!   client ([`HttpResponse`], [`HttpStream`]) for tests that run the examples.
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

mod cluster;
mod example;
mod logs;
mod monitor;
mod process;
mod proxy;
mod resp;
mod sentinel;
mod server;
mod shared;

pub use cluster::RedisCluster;
pub use example::{Example, HttpResponse, HttpStream, example_path};
pub use logs::LogBuffer;
pub use monitor::Monitor;
pub use process::free_port;
pub use proxy::{Fault, FaultProxy, ResetLoop};
pub use resp::Reply;
pub use sentinel::{Promotion, RedisSentinel};
pub use server::{RedisServer, ServerOptions};
pub use shared::{shared, shared_cluster, shared_url, unique_prefix};
