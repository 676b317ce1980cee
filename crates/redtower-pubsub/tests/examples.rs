//! The `sse` example, run as a program over HTTP: in process, and over a test Redis (a
//! publish on one instance reaches a stream on another).

use redtower_testkit::{Example, HttpStream, shared_url, unique_prefix};

const PACKAGE: &str = env!("CARGO_PKG_NAME");

/// A stream open on `reader`, an event published through `writer`: the stream carries it,
/// with the id the publish answered. Returns the stream, still open.
fn publish_reaches_the_stream(reader: &Example, writer: &Example) -> HttpStream {
    let mut stream = reader.stream("/events/news", &[("accept", "text/event-stream")]);
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let res = writer.post(
        "/events/news",
        &[("content-type", "application/json")],
        br#"{"title":"hello"}"#,
    );
    assert_eq!(res.status, 202, "{}", res.body);
    let body: serde_json::Value = serde_json::from_str(&res.body).unwrap();
    let id = body["id"].as_str().unwrap();
    // The event's frame: its id (the stream may have sent a starting position first), then
    // its data.
    let id_line = format!("id: {id}");
    assert_eq!(stream.line(|l| l == id_line), Some(id_line.clone()));
    let data = stream.line(|l| l.starts_with("data: "));
    assert_eq!(data.as_deref(), Some(r#"data: {"title":"hello"}"#));
    stream
}

#[test]
fn in_process_a_post_reaches_the_open_stream_and_sigint_ends_it() {
    let example = Example::start(PACKAGE, "sse", &[]);
    let mut stream = publish_reaches_the_stream(&example, &example);
    // Ctrl-C with the stream open: the server ends the stream and exits.
    assert!(example.interrupt().success());
    assert_eq!(stream.line(|_| false), None);
}

#[test]
fn over_redis_a_post_on_one_instance_reaches_a_stream_on_another() {
    let url = shared_url();
    let prefix = unique_prefix("pubsub-example");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let reader = Example::start(PACKAGE, "sse", &env);
    let writer = Example::start(PACKAGE, "sse", &env);
    let mut stream = publish_reaches_the_stream(&reader, &writer);
    assert!(reader.interrupt().success());
    assert_eq!(stream.line(|_| false), None);
    assert!(writer.interrupt().success());
}
