//! The resume point a stream request asks for (`Last-Event-ID` or `last_event_id`), per
//! channel.

use crate::EventId;

/// What the request asked to resume from, per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Nothing: start live.
    None,
    /// After this event.
    After(EventId),
    /// `0`: the channel had no history; everything in it now is new.
    Start,
    /// Something that is not an event id (or not for these channels): resync.
    Invalid,
}

pub(crate) fn parse_cursors(raw: Option<&str>, n: usize, multi: bool) -> Vec<Cursor> {
    let Some(raw) = raw else {
        return vec![Cursor::None; n];
    };
    let parts: Vec<&str> = if multi {
        raw.split(',').collect()
    } else {
        vec![raw]
    };
    if parts.len() != n {
        return vec![Cursor::Invalid; n];
    }
    parts
        .into_iter()
        .map(|p| match p.trim() {
            "-" if multi => Cursor::None,
            "0" => Cursor::Start,
            p => p.parse().map_or(Cursor::Invalid, Cursor::After),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse() {
        let id: EventId = "e:3".parse().unwrap();
        assert_eq!(parse_cursors(None, 2, true), vec![Cursor::None; 2]);
        assert_eq!(
            parse_cursors(Some("e:3"), 1, false),
            vec![Cursor::After(id.clone())]
        );
        assert_eq!(
            parse_cursors(Some("-,e:3"), 2, true),
            vec![Cursor::None, Cursor::After(id)]
        );
        assert_eq!(
            parse_cursors(Some("e:3"), 2, true),
            vec![Cursor::Invalid; 2]
        );
        assert_eq!(parse_cursors(Some("junk"), 1, false), vec![Cursor::Invalid]);
        assert_eq!(parse_cursors(Some("0"), 1, false), vec![Cursor::Start]);
        let max = format!("x:{}", u64::MAX);
        assert_eq!(
            parse_cursors(Some(&max), 1, false),
            vec![Cursor::After(EventId::new("x", u64::MAX).unwrap())]
        );
        let over = format!("x:{}0", u64::MAX);
        assert_eq!(parse_cursors(Some(&over), 1, false), vec![Cursor::Invalid]);
    }

    proptest::proptest! {
        /// Any header text gives one cursor per channel, and never panics.
        #[test]
        fn any_last_event_id_parses(raw in "\\PC{0,80}", n in 1usize..5, multi: bool) {
            let cursors = parse_cursors(Some(&raw), n, multi);
            proptest::prop_assert_eq!(cursors.len(), n);
        }

        /// `<epoch>:<offset>` for any u64 offset round-trips; one more digit is invalid.
        #[test]
        fn any_offset_parses(epoch in "[A-Za-z0-9]{1,32}", offset: u64) {
            let id = format!("{epoch}:{offset}");
            let expected = EventId::new(&epoch, offset).unwrap();
            proptest::prop_assert_eq!(parse_cursors(Some(&id), 1, false), vec![Cursor::After(expected)]);
        }
    }
}
