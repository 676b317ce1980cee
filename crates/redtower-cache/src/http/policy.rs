//! RFC 9111 pieces: `Cache-Control`, `Expires`, `Vary`, conditional requests.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, StatusCode, header};

/// The `Cache-Control` directives the cache acts on (request or response).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) swr: Option<u64>,
    pub(crate) sie: Option<u64>,
    /// Header names from qualified `no-cache="..."` / `private="..."`: stripped before storing.
    pub(crate) strip: Vec<String>,
}

impl Directives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        Self::parse_values(headers.get_all(header::CACHE_CONTROL))
    }

    /// The directives of the first targeted field (RFC 9213) in `fields` that the response
    /// carries with a valid, non-empty value; `None` when there is none (then `Cache-Control`
    /// and `Expires` apply).
    pub(crate) fn targeted(headers: &HeaderMap, fields: &[HeaderName]) -> Option<Self> {
        fields.iter().find_map(|field| {
            let values = headers.get_all(field);
            let mut any = false;
            for v in &values {
                let text = v.to_str().ok()?;
                if !valid_dictionary(text) {
                    return None;
                }
                any |= !text.trim().is_empty();
            }
            any.then(|| Self::parse_values(values))
        })
    }

    fn parse_values(values: http::header::GetAll<'_, http::HeaderValue>) -> Self {
        let mut d = Self::default();
        for value in values {
            let Ok(value) = value.to_str() else {
                // Unparseable: be conservative.
                d.no_store = true;
                continue;
            };
            for item in split_directives(value) {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let secs = || arg.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => match arg {
                        Some(fields) if !fields.is_empty() => d.strip.extend(fields_of(fields)),
                        _ => d.no_cache = true,
                    },
                    "private" => match arg {
                        Some(fields) if !fields.is_empty() => d.strip.extend(fields_of(fields)),
                        _ => d.private = true,
                    },
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "must-understand" => d.must_understand = true,
                    // A malformed max-age is treated as stale (RFC 9111 4.2.1).
                    "max-age" => d.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => d.s_maxage = Some(secs().unwrap_or(0)),
                    "stale-while-revalidate" => d.swr = secs(),
                    "stale-if-error" => d.sie = secs(),
                    _ => {}
                }
            }
        }
        d
    }
}

/// Whether a targeted field's value has the shape of a Structured Fields dictionary (RFC 8941):
/// `key[=value]` members, keys lowercase tokens, no space around `=`.
fn valid_dictionary(s: &str) -> bool {
    split_directives(s).into_iter().all(|item| {
        let item = item.trim_matches([' ', '\t']);
        let (key, value) = item.split_once('=').unwrap_or((item, "1"));
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
        let value = value.split(';').next().unwrap_or_default();
        let integer = matches!(
            key,
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
        );
        key_ok
            && !value.is_empty()
            && !value.starts_with([' ', '\t'])
            && (!integer || value.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Splits on commas outside quotes.
fn split_directives(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn fields_of(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
}

/// The response's `Vary` names, lowercased and sorted; `None` for `Vary: *`.
pub(crate) fn vary(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(value) = value.to_str() else {
            return None;
        };
        for name in value.split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Status codes stored by default (RFC 9111 4.2.2 heuristically cacheable, minus the ones we
/// only store as negative results, minus 206 which needs range support).
pub(crate) fn cacheable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308)
}

/// Final statuses the cache understands well enough to store when the response states its
/// freshness explicitly (RFC 9111 3): all but `206` (a part: ranges are served from full
/// responses) and `304` (it updates a stored response, 4.3.4).
pub(crate) fn understood_status(status: StatusCode) -> bool {
    (200..600).contains(&status.as_u16()) && !matches!(status.as_u16(), 206 | 304)
}

/// Statuses whose caching requirements the cache implements, for `must-understand` (RFC 9111
/// 5.2.2.3): the final statuses of RFC 9110 and other registered ones.
pub(crate) fn known_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=305 | 307 | 308 | 400..=417 | 421..=426 | 428 | 429 | 431 | 451
            | 500..=505 | 511
    )
}

/// Statuses stored only when the route opts in to negative caching.
pub(crate) fn negative_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 405 | 410 | 414 | 501)
}

/// The freshness lifetime the response grants a shared cache, if it states one:
/// `s-maxage`, then `max-age`, then `Expires` minus `Date` (or now).
pub(crate) fn explicit_lifetime(
    d: &Directives,
    headers: &HeaderMap,
    now_ms: u64,
) -> Option<Duration> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(parse_date) else {
        // An invalid Expires (such as "0") means already expired.
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_date)
        .unwrap_or_else(|| {
            UNIX_EPOCH
                .checked_add(Duration::from_millis(now_ms))
                .unwrap_or(UNIX_EPOCH)
        });
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// An HTTP date (RFC 9110 5.6.7: IMF-fixdate, RFC 850, asctime), read leniently as
/// recipients should: surrounding space, any case, and a weekday that does not match the date
/// are accepted (another zone, such as `UTC`, is not: the date is invalid).
pub(crate) fn parse_date(v: &str) -> Option<std::time::SystemTime> {
    let v = v.trim();
    if let Ok(t) = httpdate::parse_http_date(v) {
        return Some(t);
    }
    let upper = v.to_ascii_uppercase();
    let base = upper.strip_suffix(" GMT").unwrap_or(&upper).trim();
    // Title-case the day and month names again ("MON" -> "Mon").
    let mut fixed = String::with_capacity(base.len() + 4);
    let mut prev_alpha = false;
    for c in base.chars() {
        if c.is_ascii_alphabetic() && prev_alpha {
            fixed.push(c.to_ascii_lowercase());
        } else {
            fixed.push(c);
        }
        prev_alpha = c.is_ascii_alphabetic();
    }
    let fixed = if fixed.contains(',') {
        format!("{fixed} GMT")
    } else {
        fixed // asctime: no zone
    };
    if let Ok(t) = httpdate::parse_http_date(&fixed) {
        return Some(t);
    }
    // A weekday that does not match the date: the date counts.
    let rest = fixed.get(3..)?;
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        .iter()
        .find_map(|day| httpdate::parse_http_date(&format!("{day}{rest}")).ok())
}

/// The heuristic lifetime (RFC 9111 4.2.2) of a response with `Last-Modified`: `fraction` of
/// the time between it and the response's `Date` (or now).
pub(crate) fn heuristic_lifetime(
    headers: &HeaderMap,
    fraction: f64,
    now_ms: u64,
) -> Option<Duration> {
    let lm = parse_date(headers.get(header::LAST_MODIFIED)?.to_str().ok()?)?;
    let date = headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_date)
        .unwrap_or_else(|| {
            UNIX_EPOCH
                .checked_add(Duration::from_millis(now_ms))
                .unwrap_or(UNIX_EPOCH)
        });
    let since = date.duration_since(lm).ok()?;
    Some(since.mul_f64(fraction.min(1.0)))
}

/// The `Age` the origin already reported: the first value (`Age: 7200, 0` is 7200).
pub(crate) fn origin_age(headers: &HeaderMap) -> Duration {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(v.split(',').next().unwrap_or_default().trim()))
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// A `delta-seconds` value (RFC 9111 1.2.2): digits only; a value too large for a `u64`
/// saturates to `u64::MAX` ("the greatest positive integer it can conveniently represent")
/// instead of being rejected. `None` for anything else (empty, sign, space, non-digits).
pub(crate) fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// Whether an `If-None-Match` list matches `etag` (weak comparison, RFC 9110 13.1.2).
pub(crate) fn none_match(if_none_match: &str, etag: Option<&str>) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if if_none_match.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else {
        return false;
    };
    let etag = strip(etag);
    if_none_match.split(',').any(|t| strip(t) == etag)
}

/// Whether the entry is unmodified since the request's `If-Modified-Since`.
pub(crate) fn not_modified_since(ims: &str, last_modified: Option<&str>) -> bool {
    let (Ok(ims), Some(Ok(lm))) = (
        httpdate::parse_http_date(ims),
        last_modified.map(httpdate::parse_http_date),
    ) else {
        return false;
    };
    lm <= ims
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn parses_cache_control_case_insensitively_across_lines() {
        let d = Directives::parse(&headers(&[
            (
                "cache-control",
                "Public, MAX-AGE=60, stale-while-revalidate=30",
            ),
            (
                "cache-control",
                "no-cache=\"set-cookie, x-a\", stale-if-error=\"90\"",
            ),
        ]));
        assert!(d.public && !d.no_cache && !d.no_store);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.swr, Some(30));
        assert_eq!(d.sie, Some(90));
        assert_eq!(d.strip, vec!["set-cookie", "x-a"]);
        let d = Directives::parse(&headers(&[("cache-control", "private, max-age=abc")]));
        assert!(d.private);
        assert_eq!(d.max_age, Some(0));
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let h = headers(&[("cache-control", "max-age=10, s-maxage=20")]);
        let d = Directives::parse(&h);
        assert_eq!(explicit_lifetime(&d, &h, 0), Some(Duration::from_secs(20)));
        let h = headers(&[
            ("expires", "Thu, 01 Jan 1970 00:01:40 GMT"),
            ("date", "Thu, 01 Jan 1970 00:00:40 GMT"),
        ]);
        assert_eq!(
            explicit_lifetime(&Directives::parse(&h), &h, 0),
            Some(Duration::from_secs(60))
        );
        let h = headers(&[("expires", "0")]);
        assert_eq!(
            explicit_lifetime(&Directives::parse(&h), &h, 0),
            Some(Duration::ZERO)
        );
        assert_eq!(
            explicit_lifetime(&Directives::default(), &HeaderMap::new(), 0),
            None
        );
    }

    #[test]
    fn vary_merges_lines_and_rejects_star() {
        let h = headers(&[
            ("vary", "Accept-Language, accept-encoding"),
            ("vary", "Accept-Language"),
        ]);
        let names: Vec<_> = vary(&h)
            .unwrap()
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        assert_eq!(names, ["accept-encoding", "accept-language"]);
        assert_eq!(vary(&headers(&[("vary", "accept, *")])), None);
    }

    #[test]
    fn targeted_fields_must_be_valid_dictionaries() {
        let cdn = [HeaderName::from_static("cdn-cache-control")];
        let targeted =
            |v: &'static str| Directives::targeted(&headers(&[("cdn-cache-control", v)]), &cdn);
        assert_eq!(targeted("max-age=60").unwrap().max_age, Some(60));
        assert!(targeted("no-store, max-age=60").unwrap().no_store);
        for invalid in [
            "max-age =60",
            "max-age= 60",
            "max-age=\"60\"",
            "Max-Age=60",
            "max-age=6.5",
            "",
        ] {
            assert_eq!(targeted(invalid), None, "{invalid:?}");
        }
        assert_eq!(Directives::targeted(&HeaderMap::new(), &cdn), None);
    }

    #[test]
    fn age_uses_the_first_value() {
        assert_eq!(
            origin_age(&headers(&[("age", "7200, 0")])),
            Duration::from_secs(7200)
        );
        assert_eq!(
            origin_age(&headers(&[("age", "0"), ("age", "7200")])),
            Duration::ZERO
        );
    }

    #[test]
    fn statuses() {
        for s in [200, 302, 400, 500, 599, 299] {
            assert!(understood_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [206, 304, 101] {
            assert!(!understood_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert!(known_status(StatusCode::OK));
        assert!(!known_status(StatusCode::from_u16(599).unwrap()));
    }

    #[test]
    fn dates_are_read_leniently() {
        let want = parse_date("Thu, 18 Aug 2050 02:01:18 GMT").unwrap();
        for v in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gMT",
            " Thu, 18 Aug 2050 02:01:18 GMT ",
            "Thu Aug 18 02:01:18 2050",
            "Thursday, 18-Aug-50 02:01:18 GMT",
        ] {
            assert_eq!(parse_date(v), Some(want), "{v}");
        }
        assert!(parse_date("Thu Aug  8 02:01:18 2050").is_some());
        for invalid in [
            "0",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
        ] {
            assert_eq!(parse_date(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn etag_matching_is_weak() {
        assert!(none_match("W/\"a\", \"b\"", Some("\"a\"")));
        assert!(none_match("*", None));
        assert!(!none_match("\"c\"", Some("\"a\"")));
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn map(name: &'static str, value: &str) -> Option<HeaderMap> {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).ok()?);
        Some(h)
    }

    proptest! {
        #[test]
        fn delta_seconds_saturate_and_never_panic(digits in "[0-9]{1,60}") {
            let parsed = delta_seconds(&digits).unwrap();
            match digits.parse::<u64>() {
                Ok(n) => prop_assert_eq!(parsed, n),
                Err(_) => prop_assert_eq!(parsed, u64::MAX),
            }
        }

        #[test]
        fn cache_control_of_any_text_parses(value in "\\PC{0,80}") {
            if let Some(h) = map("cache-control", &value) {
                let d = Directives::parse(&h);
                let _ = explicit_lifetime(&d, &h, u64::MAX);
                let _ = explicit_lifetime(&d, &h, 0);
            }
        }

        #[test]
        fn huge_directive_values_saturate(
            n in prop_oneof![Just(u64::MAX.to_string()), "[0-9]{19,40}"],
            name in prop_oneof![Just("max-age"), Just("s-maxage"),
                Just("stale-while-revalidate"), Just("stale-if-error")],
        ) {
            let h = map("cache-control", &format!("{name}={n}, stale-while-revalidate={n}, stale-if-error={n}")).unwrap();
            let d = Directives::parse(&h);
            let expected = n.parse::<u64>().unwrap_or(u64::MAX);
            prop_assert_eq!(d.swr, Some(expected));
            prop_assert_eq!(d.sie, Some(expected));
            let lifetime = explicit_lifetime(&d, &h, 0);
            if name.contains("max") {
                prop_assert_eq!(lifetime, Some(Duration::from_secs(expected)));
            }
        }

        #[test]
        fn any_expires_date_and_age_are_handled(
            expires in "\\PC{0,40}",
            date in "\\PC{0,40}",
            age in "\\PC{0,30}",
            now in any::<u64>(),
        ) {
            let mut h = HeaderMap::new();
            for (n, v) in [("expires", &expires), ("date", &date), ("age", &age)] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(n, v);
                }
            }
            let _ = explicit_lifetime(&Directives::parse(&h), &h, now);
            let _ = origin_age(&h);
        }
    }

    #[test]
    fn far_expires_and_huge_age() {
        let h = map("expires", "Fri, 31 Dec 9999 23:59:59 GMT").unwrap();
        let life = explicit_lifetime(&Directives::parse(&h), &h, u64::MAX).unwrap();
        assert_eq!(
            life,
            Duration::ZERO,
            "a clock past the year 9999 sees it expired"
        );
        let life = explicit_lifetime(&Directives::parse(&h), &h, 0).unwrap();
        assert!(life > Duration::from_secs(7000 * 365 * 24 * 3600));
        let h = map("age", "99999999999999999999999999").unwrap();
        assert_eq!(origin_age(&h), Duration::from_secs(u64::MAX));
        let h = map("age", "-5").unwrap();
        assert_eq!(origin_age(&h), Duration::ZERO);
    }
}
