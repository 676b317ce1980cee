//! The fault proxy against a real server, spoken to in raw RESP.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use redtower_testkit::{Fault, FaultProxy, RedisServer, unique_prefix};

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
    }
    out
}

/// Sends one command and reads one reply chunk; `None` when the connection closed first.
fn call(s: &mut TcpStream, args: &[&str]) -> Option<String> {
    s.write_all(&resp(args)).ok()?;
    let mut buf = [0; 512];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

fn get(server: &RedisServer, key: &str) -> Option<String> {
    server.cmd(&["GET", key]).as_text()
}

#[test]
fn passes_through_by_default() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let mut s = connect(proxy.port());
    assert_eq!(call(&mut s, &["PING"]).as_deref(), Some("+PONG\r\n"));
    assert_eq!(proxy.connections_accepted(), 1);
}

#[test]
fn a_lost_reply_ran_in_redis_and_the_connection_drops() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let key = unique_prefix("lost");
    let mut s = connect(proxy.port());
    assert_eq!(call(&mut s, &["INCR", &key]).as_deref(), Some(":1\r\n"));

    proxy.lose_next_reply();
    assert_eq!(
        call(&mut s, &["INCR", &key]),
        None,
        "the reply must not arrive"
    );
    assert_eq!(proxy.lost_replies(), 1);
    // The command ran: the counter moved although its reply was lost.
    assert_eq!(get(&server, &key).as_deref(), Some("2"));

    // One-shot: a new connection is served normally.
    let mut s = connect(proxy.port());
    assert_eq!(call(&mut s, &["INCR", &key]).as_deref(), Some(":3\r\n"));
}

#[test]
fn black_hole_never_answers_and_forwards_nothing() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let key = unique_prefix("hole");
    proxy.set(Fault::BlackHole);
    let mut s = connect(proxy.port());
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(call(&mut s, &["SET", &key, "x"]), None);
    assert_eq!(get(&server, &key), None, "nothing reached redis");

    proxy.set(Fault::PassThrough);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(call(&mut s, &["PING"]).as_deref(), Some("+PONG\r\n"));
}

#[test]
fn latency_delays_replies() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let mut s = connect(proxy.port());
    let started = Instant::now();
    assert_eq!(call(&mut s, &["PING"]).as_deref(), Some("+PONG\r\n"));
    // Held in both directions: at least the latency, once each way.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn refuse_closes_new_connections_and_reset_all_closes_live_ones() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let mut live = connect(proxy.port());
    assert_eq!(call(&mut live, &["PING"]).as_deref(), Some("+PONG\r\n"));

    proxy.set(Fault::Refuse);
    let mut refused = connect(proxy.port());
    assert_eq!(call(&mut refused, &["PING"]), None);
    // A live connection is kept under Refuse...
    assert_eq!(call(&mut live, &["PING"]).as_deref(), Some("+PONG\r\n"));
    // ...until everything is reset.
    proxy.reset_all();
    assert_eq!(call(&mut live, &["PING"]), None);
    assert_eq!(proxy.resets(), 1);

    proxy.set(Fault::PassThrough);
    let mut fresh = connect(proxy.port());
    assert_eq!(call(&mut fresh, &["PING"]).as_deref(), Some("+PONG\r\n"));
}

#[test]
fn lose_replies_loses_about_the_ratio_asked() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let key = unique_prefix("ratio");
    proxy.lose_replies(1, 4);
    let (mut answered, mut sent) = (0, 0);
    while sent < 400 {
        let mut s = connect(proxy.port());
        while sent < 400 {
            sent += 1;
            if call(&mut s, &["INCR", &key]).is_some() {
                answered += 1;
            } else {
                break;
            }
        }
    }
    proxy.lose_replies(0, 0);
    let lost = proxy.lost_replies();
    // Every command ran, answered or not.
    assert_eq!(get(&server, &key).as_deref(), Some("400"));
    assert_eq!(answered + lost, 400);
    // 1 in 4 of 400: far from both 0 and 400.
    assert!((30..=200).contains(&lost), "lost {lost}");
}

#[test]
fn reset_every_keeps_closing_live_connections_until_stopped() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let resets = proxy.reset_every(Duration::from_millis(20));
    // Every connection made while the loop runs is closed soon after it opens.
    for _ in 0..3 {
        let mut s = connect(proxy.port());
        let deadline = Instant::now() + Duration::from_secs(5);
        while call(&mut s, &["PING"]).is_some() {
            assert!(
                Instant::now() < deadline,
                "a live connection was never reset"
            );
            // The poll interval of a wait bounded by `deadline`.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(proxy.resets() >= 3, "{} resets", proxy.resets());
    resets.stop();
    let after = proxy.resets();
    let mut kept = connect(proxy.port());
    // Five reset intervals: long enough for a loop that did not stop to close `kept`, which is
    // what the assertions below would then catch (`stop` joined the thread, so a correct loop
    // cannot).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(call(&mut kept, &["PING"]).as_deref(), Some("+PONG\r\n"));
    assert_eq!(proxy.resets(), after, "no reset after stop");
}
