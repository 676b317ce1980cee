//! An instance process for the chaos tests: an example binary of this crate (built next to
//! the test, see [`redtower_testkit::example_path`]) that prints `ready` once it serves.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Starts example `example` on queue `queue` of the Redis at `url` under key prefix `prefix`,
/// and waits until it prints `ready`. Killed when dropped.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) async fn spawn(example: &str, url: &str, prefix: &str, queue: &str) -> Child {
    let (child, line) = start(example, url, prefix, queue).await;
    assert_eq!(line, "ready");
    child
}

/// Starts example `example` as [`spawn`] does, and returns it with the first line it prints.
pub(crate) async fn start(example: &str, url: &str, prefix: &str, queue: &str) -> (Child, String) {
    let mut child = Command::new(redtower_testkit::example_path("redtower-jobs", example))
        .env("REDIS_URL", url)
        .env("JOBS_PREFIX", prefix)
        .env("JOBS_QUEUE", queue)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("instance started")
        .unwrap()
        .expect("instance printed a line");
    (child, line)
}
