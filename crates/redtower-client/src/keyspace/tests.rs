use proptest::prelude::*;

use super::*;

/// What a segment stands for, recovered from its escaped text.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Plain(Vec<u8>),
    Hashed(String),
}

fn decode(seg: &str) -> Decoded {
    if let Some(hash) = seg.strip_prefix('#') {
        return Decoded::Hashed(hash.to_owned());
    }
    if seg == "%" {
        return Decoded::Plain(Vec::new());
    }
    let b = seg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            assert!(
                is_plain(b[i]),
                "unescaped byte {:?} in {seg:?}",
                b[i] as char
            );
            out.push(b[i]);
            i += 1;
        }
    }
    Decoded::Plain(out)
}

fn expected(raw: &[u8]) -> Decoded {
    let escaped: usize = raw.iter().map(|&b| if is_plain(b) { 1 } else { 3 }).sum();
    if escaped > Segment::MAX_LEN {
        Decoded::Hashed(Segment::secret(raw).as_str()[1..].to_owned())
    } else {
        Decoded::Plain(raw.to_vec())
    }
}

/// Parses `<base>:{tag}(:part)*` back into its segments.
fn parse<'k>(ns: &Namespace, key: &'k str) -> (&'k str, Vec<&'k str>) {
    let rest = key
        .strip_prefix(ns.as_str())
        .unwrap()
        .strip_prefix(":{")
        .unwrap();
    let close = rest.find('}').unwrap();
    let tag = &rest[..close];
    let tail = &rest[close + 1..];
    let parts = if tail.is_empty() {
        Vec::new()
    } else {
        tail.strip_prefix(':').unwrap().split(':').collect()
    };
    (tag, parts)
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Short strings biased to the characters that matter.
        prop::collection::vec(
            prop::sample::select(b"a0:{}*?[]%#\\ \n\r\t\x00\xff-_./~".to_vec()),
            0..12
        ),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 100..300),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The key decodes back to exactly the inputs (or their hashes): the builder is injective.
    #[test]
    fn keys_decode_back_to_their_inputs(
        tag in arb_bytes(),
        parts in prop::collection::vec(arb_bytes(), 0..4),
    ) {
        let ns = Keyspace::default().namespace("t");
        let mut key = ns.key(Segment::from_bytes(&tag));
        for p in &parts {
            key = key.push(Segment::from_bytes(p));
        }
        let (tag_s, parts_s) = parse(&ns, key.as_str());
        prop_assert_eq!(decode(tag_s), expected(&tag));
        prop_assert_eq!(parts_s.len(), parts.len());
        for (s, raw) in parts_s.iter().zip(&parts) {
            prop_assert_eq!(decode(s), expected(raw));
        }
    }

    /// Text escapes exactly as its bytes do.
    #[test]
    fn text_and_its_bytes_escape_alike(raw in ".{0,40}", plain in "[a-z0-9:_-]{0,40}") {
        for text in [raw.as_str(), plain.as_str()] {
            prop_assert_eq!(Segment::new(text), Segment::from_bytes(text.as_bytes()));
        }
    }

    /// Two different inputs never build the same key.
    #[test]
    fn different_inputs_give_different_keys(
        a in (arb_bytes(), prop::collection::vec(arb_bytes(), 0..3)),
        b in (arb_bytes(), prop::collection::vec(arb_bytes(), 0..3)),
    ) {
        let ns = Keyspace::default().namespace("t");
        let build = |(tag, parts): &(Vec<u8>, Vec<Vec<u8>>)| {
            parts.iter().fold(ns.key(Segment::from_bytes(tag)), |k, p| k.push(Segment::from_bytes(p)))
        };
        prop_assert_eq!(build(&a) == build(&b), a == b);
    }

    /// Exactly one non-empty hash tag, which alone decides the slot; bounded length.
    #[test]
    fn exactly_one_tag_decides_the_slot(
        tag in arb_bytes(),
        parts in prop::collection::vec(arb_bytes(), 0..4),
    ) {
        let ns = Keyspace::new("app:prod").unwrap().namespace("c:t");
        let key = parts
            .iter()
            .fold(ns.key(Segment::from_bytes(&tag)), |k, p| k.push(Segment::from_bytes(p)));
        let s = key.as_str();
        prop_assert_eq!(s.matches('{').count(), 1);
        prop_assert_eq!(s.matches('}').count(), 1);
        prop_assert!(!key.tag().is_empty());
        prop_assert!(!s.bytes().any(|b| b.is_ascii_control() || b"*?[]\\ ".contains(&b)));
        prop_assert!(s.len() <= ns.as_str().len() + 3 + 5 * (Segment::MAX_LEN + 1));
        prop_assert_eq!(key.slot(), fred::util::redis_keyslot(key.tag().as_bytes()));
        prop_assert_eq!(key.slot(), ns.key(Segment::from_bytes(&tag)).slot());
    }
}

#[test]
fn adversarial_segments_are_escaped() {
    let ns = Keyspace::default().namespace("rl");
    let cases: &[(&str, &str)] = &[
        ("{", "rt:rl:{%7B}"),
        ("}", "rt:rl:{%7D}"),
        (":", "rt:rl:{%3A}"),
        ("*", "rt:rl:{%2A}"),
        ("a\nb", "rt:rl:{a%0Ab}"),
        ("", "rt:rl:{%}"),
        ("%", "rt:rl:{%25}"),
        ("#x", "rt:rl:{%23x}"),
    ];
    for (raw, want) in cases {
        assert_eq!(ns.key(*raw).as_str(), *want, "{raw:?}");
    }
    let huge = "a".repeat(1 << 20);
    let key = ns.key(huge.as_str());
    assert_eq!(key.as_str().len(), "rt:rl:{}".len() + 44);
    assert_eq!(key.tag(), Segment::secret(huge.as_bytes()).as_str());
}

#[test]
fn strict_segments_reject_instead_of_escaping() {
    for bad in ["", "a:b", "{x}", "a*", "new\nline", &"x".repeat(129)] {
        assert!(Segment::strict(bad).is_err(), "{bad:?}");
    }
    assert_eq!(Segment::strict("user-42").unwrap().as_str(), "user-42");
}

#[test]
fn prefixes_are_validated() {
    for bad in ["", "a{b}", "a b", ":a", "a:", "a::b", "a*", &"p".repeat(65)] {
        assert!(
            matches!(Keyspace::new(bad), Err(KeyError::InvalidPrefix(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        Keyspace::new("my-app:prod.v2").unwrap().prefix(),
        "my-app:prod.v2"
    );
}

#[test]
#[should_panic(expected = "invalid keyspace namespace")]
fn namespace_names_are_checked() {
    let _ = Keyspace::default().namespace("Bad{name}");
}

#[test]
fn patterns_are_prefix_scoped() {
    let ks = Keyspace::new("app").unwrap();
    let ns = ks.namespace("s:u");
    assert_eq!(ks.pattern().as_str(), "app:*");
    assert_eq!(ns.pattern().as_str(), "app:s:u:*");
    assert_eq!(ns.tag_pattern("a*b").as_str(), "app:s:u:{a%2Ab}*");
}
