//! Server-Sent Events framing (WHATWG HTML, "Server-sent events", "Parsing an event stream").

use bytes::{BufMut, Bytes, BytesMut};

/// Writes one field per line of `value`, splitting on `\r\n`, `\n` and `\r` so that no line
/// break inside a value can end the field (or the event) early.
fn field(buf: &mut BytesMut, name: &str, value: &str) {
    let mut rest = value;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        buf.put_slice(name.as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(&rest.as_bytes()[..end]);
        buf.put_u8(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// Appends one event. `id` and `event` must be single-line (ours always are); `data` may hold
/// any text.
pub(crate) fn event(buf: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        field(buf, "event", first_line(name));
    }
    if let Some(id) = id {
        // An id with a NUL is ignored by browsers; ours never have one.
        if id.is_empty() {
            buf.put_slice(b"id\n");
        } else {
            field(buf, "id", first_line(id));
        }
    }
    field(buf, "data", data);
    buf.put_u8(b'\n');
}

/// Appends an id-only frame: it sets the browser's `lastEventId` without firing an event.
pub(crate) fn event_id_only(buf: &mut BytesMut, id: &str) {
    if id.is_empty() {
        buf.put_slice(b"id\n\n");
    } else {
        field(buf, "id", first_line(id));
        buf.put_u8(b'\n');
    }
}

/// Appends a comment (ignored by clients; keeps proxies from timing the stream out).
pub(crate) fn comment(buf: &mut BytesMut, text: &str) {
    field(buf, "", text);
}

/// Appends the reconnection delay hint field (browsers apply it as soon as it is parsed; it
/// needs a following frame end, which the next frame gives).
pub(crate) fn retry(buf: &mut BytesMut, millis: u64) {
    buf.put_slice(format!("retry: {millis}\n").as_bytes());
}

fn first_line(s: &str) -> &str {
    s.split(['\r', '\n']).next().unwrap_or("")
}

/// The keep-alive frame: an empty comment.
pub(crate) fn keep_alive() -> Bytes {
    Bytes::from_static(b":\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_multi_line_data() {
        let mut buf = BytesMut::new();
        event(&mut buf, Some("e:1"), Some("x"), "a\nb\r\nc\rd");
        assert_eq!(
            &buf[..],
            b"event: x\nid: e:1\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let mut buf = BytesMut::new();
        comment(&mut buf, "hi\nthere");
        assert_eq!(&buf[..], b": hi\n: there\n");
    }

    /// Parses `bytes` with `eventsource-stream` (an independent parser), fed in chunks of
    /// `chunk` bytes to exercise split lines.
    fn parse(bytes: &[u8], chunk: usize) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = bytes
            .chunks(chunk.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::executor::block_on(
            futures::stream::iter(chunks)
                .eventsource()
                .map(|e| e.unwrap())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn round_trip_through_an_independent_parser() {
        let mut buf = BytesMut::new();
        comment(&mut buf, "ok");
        retry(&mut buf, 3456);
        event(&mut buf, Some("ep:1"), None, "{\"a\":1}");
        comment(&mut buf, "keep\nalive");
        buf.extend_from_slice(&keep_alive());
        event(
            &mut buf,
            Some("ep:2"),
            Some("resync"),
            "line one\nline two\r\nthree\rfour",
        );
        event(&mut buf, Some("ep:3"), None, " leading space and : colons");
        event(&mut buf, Some("ep:4"), None, "");
        event(&mut buf, Some("ep:5"), None, "\n\n");
        event_id_only(&mut buf, "ep:6");
        event(&mut buf, Some(""), None, "reset id");
        for chunk in [1, 3, 7, usize::MAX] {
            let events = parse(&buf, chunk);
            let seen: Vec<(&str, &str, &str)> = events
                .iter()
                .filter(|e| !e.data.is_empty() || e.event != "message")
                .map(|e| (e.event.as_str(), e.id.as_str(), e.data.as_str()))
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("message", "ep:1", "{\"a\":1}"),
                    ("resync", "ep:2", "line one\nline two\nthree\nfour"),
                    ("message", "ep:3", " leading space and : colons"),
                    ("message", "ep:5", "\n\n"),
                    ("message", "", "reset id"),
                ],
                "chunk size {chunk}"
            );
            assert_eq!(
                events[0].retry,
                Some(std::time::Duration::from_millis(3456))
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_survives_framing(data in "\\PC*( |\n|\r\n|\r|:|\\PC)*", id in "[A-Za-z0-9]{1,12}:[0-9]{1,6}") {
            let mut buf = BytesMut::new();
            event(&mut buf, Some(&id), None, &data);
            let events = parse(&buf, 5);
            let normalized = data.replace("\r\n", "\n").replace('\r', "\n");
            let got: Vec<_> = events.iter().filter(|e| !e.data.is_empty()).collect();
            if normalized.is_empty() {
                proptest::prop_assert!(got.is_empty());
            } else {
                proptest::prop_assert_eq!(got.len(), 1);
                proptest::prop_assert_eq!(&got[0].data, &normalized);
                proptest::prop_assert_eq!(&got[0].id, &id);
            }
        }
    }
}
