//! Tags from a response header (`Surrogate-Key`, `Cache-Tag`): parsed, bounded, stripped.

use http::{HeaderMap, HeaderName};

/// The most tags one response adds to its entry; further ones are dropped.
pub(crate) const MAX_TAGS: usize = 32;

/// The longest tag, in bytes; longer ones are dropped.
pub(crate) const MAX_TAG_LEN: usize = 128;

/// Removes every `name` field from `headers` and returns the valid tags it listed (space or
/// comma separated, so both `Surrogate-Key: a b` and `Cache-Tag: a,b` read the same),
/// without duplicates, in order, at most [`MAX_TAGS`]. Tags longer than [`MAX_TAG_LEN`] or
/// with bytes outside visible ASCII are dropped with a debug log.
pub(crate) fn take(headers: &mut HeaderMap, name: &HeaderName, route: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let mut dropped = 0usize;
    for value in headers.get_all(name) {
        for tag in value
            .as_bytes()
            .split(|b| *b == b' ' || *b == b',' || *b == b'\t')
            .filter(|t| !t.is_empty())
        {
            let valid = tag.len() <= MAX_TAG_LEN && tag.iter().all(|b| b.is_ascii_graphic());
            match std::str::from_utf8(tag) {
                Ok(t) if valid && tags.len() < MAX_TAGS => {
                    if !tags.iter().any(|s| s == t) {
                        tags.push(t.to_owned());
                    }
                }
                _ => dropped += 1,
            }
        }
    }
    headers.remove(name);
    if dropped > 0 {
        tracing::debug!(target: "redtower::cache", route, header = %name, dropped, "response tags dropped (invalid, longer than 128 bytes, or over 32 per entry)");
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&[u8]]) -> (Vec<String>, HeaderMap) {
        let name = HeaderName::from_static("surrogate-key");
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&name, HeaderValue::from_bytes(v).unwrap());
        }
        (take(&mut h, &name, "t"), h)
    }

    #[test]
    fn spaces_commas_and_repeated_fields() {
        let (tags, rest) = parse(&[b"a b  c", b"c,d, e"]);
        assert_eq!(tags, ["a", "b", "c", "d", "e"]);
        assert!(rest.is_empty());
    }

    #[test]
    fn invalid_long_and_extra_tags_are_dropped() {
        let long = "x".repeat(MAX_TAG_LEN + 1);
        let ok = "y".repeat(MAX_TAG_LEN);
        let (tags, _) = parse(&[format!("{long} {ok} caf\u{e9}").as_bytes()]);
        assert_eq!(tags, [ok]);
        let many: Vec<String> = (0..MAX_TAGS + 5).map(|i| format!("t{i}")).collect();
        let (tags, _) = parse(&[many.join(" ").as_bytes()]);
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(tags[MAX_TAGS - 1], format!("t{}", MAX_TAGS - 1));
    }
}
