//! The binary: starts with no Redis, serves, and shuts down promptly on SIGTERM even with an
//! SSE stream open.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn sigterm_ends_streams_and_exits() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_redtower-example"))
        .env_remove("REDIS_URL")
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let started = Instant::now();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the app exited early"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    // An open SSE stream.
    let mut sse = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sse.write_all(b"GET /events/news HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    sse.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let stopping = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stream was ended by the server, not left hanging.
    sse.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rest = Vec::new();
    let _ = sse.read_to_end(&mut rest);
}
