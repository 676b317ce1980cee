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

/// Appends the reconnection delay hint.
pub(crate) fn retry(buf: &mut BytesMut, millis: u64) {
    buf.put_slice(format!("retry: {millis}\n\n").as_bytes());
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
}
