//! [`device_name`]: a readable device name from a `User-Agent`, for a user's session list.
//!
//! A compact classifier of the common browsers and systems, by design: the full
//! `ua-parser` rule set is about a thousand regular expressions compiled at start-up, far
//! more than "Firefox 128 on Windows" in a session list needs. Unknown agents fall back to
//! their first product token ("MyApp 2"), never to the raw string.

/// A readable name for the device behind `user_agent`: browser and major version, then the
/// system, e.g. `Firefox 128 on Windows`, `Safari 17 on iPhone`, `Chrome 126 on Android`,
/// `curl 8`. At most 64 characters.
///
/// ```
/// use redtower_session::device_name;
///
/// let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0";
/// assert_eq!(device_name(ua), "Firefox 128 on Windows");
/// let ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 \
///           (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
/// assert_eq!(device_name(ua), "Safari 17 on iPhone");
/// assert_eq!(device_name("curl/8.5.0"), "curl 8");
/// assert_eq!(device_name(""), "Unknown device");
/// ```
pub fn device_name(user_agent: &str) -> String {
    let browser = browser(user_agent);
    let os = os(user_agent);
    let name = match (browser, os) {
        (Some(b), Some(os)) => format!("{b} on {os}"),
        (Some(b), None) => b,
        (None, Some(os)) => format!("Browser on {os}"),
        (None, None) => match product(user_agent) {
            Some(p) => p,
            None => "Unknown device".to_owned(),
        },
    };
    cut(name, 64)
}

/// Browsers, most specific token first (Edge and Opera also say Chrome and Safari; Chrome
/// also says Safari).
const BROWSERS: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("YaBrowser/", "Yandex Browser"),
    ("Vivaldi/", "Vivaldi"),
    ("FxiOS/", "Firefox"),
    ("Firefox/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("curl/", "curl"),
    ("Wget/", "Wget"),
    ("PostmanRuntime/", "Postman"),
    ("okhttp/", "OkHttp"),
    ("python-requests/", "Python requests"),
];

fn browser(ua: &str) -> Option<String> {
    for (token, name) in BROWSERS {
        if let Some(v) = version_after(ua, token) {
            return Some(with_version(name, v));
        }
    }
    // Safari names its version in `Version/`, after checking it is not one of the above.
    if ua.contains("Safari/") {
        return Some(match version_after(ua, "Version/") {
            Some(v) => with_version("Safari", v),
            None => "Safari".to_owned(),
        });
    }
    None
}

fn os(ua: &str) -> Option<&'static str> {
    // Order matters: iOS agents say "like Mac OS X", Android agents say "Linux".
    const SYSTEMS: &[(&str, &str)] = &[
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("iPod", "iPod"),
        ("Android", "Android"),
        ("Windows Phone", "Windows Phone"),
        ("Windows", "Windows"),
        ("CrOS", "ChromeOS"),
        ("Macintosh", "macOS"),
        ("Mac OS X", "macOS"),
        ("Ubuntu", "Ubuntu"),
        ("Linux", "Linux"),
        ("FreeBSD", "FreeBSD"),
    ];
    SYSTEMS
        .iter()
        .find(|(token, _)| ua.contains(token))
        .map(|(_, name)| *name)
}

/// The major version right after `token` (digits only), if the token is there.
fn version_after<'a>(ua: &'a str, token: &str) -> Option<&'a str> {
    let at = ua.find(token)? + token.len();
    let rest = &ua[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn with_version(name: &str, version: &str) -> String {
    if version.is_empty() {
        name.to_owned()
    } else {
        format!("{name} {version}")
    }
}

/// The first product token, `name/1.2` as `name 1`, for agents no rule knows.
fn product(ua: &str) -> Option<String> {
    let token = ua.split_whitespace().next()?;
    let (name, version) = token.split_once('/').unwrap_or((token, ""));
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(32)
        .collect();
    if name.is_empty() || name == "Mozilla" {
        return None;
    }
    let major: String = version.chars().take_while(char::is_ascii_digit).collect();
    Some(with_version(&name, &major))
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::device_name;

    #[test]
    fn names_the_common_browsers_and_systems() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                "Chrome 126 on Windows",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87",
                "Edge 126 on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "Safari 17 on macOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile Safari/537.36",
                "Chrome 126 on Android",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.153 Mobile/15E148 Safari/604.1",
                "Chrome 126 on iPhone",
            ),
            (
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
                "Firefox 127 on Ubuntu",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
                "Samsung Internet 25 on Android",
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                "Chrome 126 on ChromeOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0",
                "Opera 111 on Windows",
            ),
            ("MyApp/2.3 (build 7)", "MyApp 2"),
            ("Mozilla/5.0", "Unknown device"),
        ];
        for (ua, want) in cases {
            assert_eq!(device_name(ua), want, "{ua}");
        }
    }

    #[test]
    fn hostile_agents_give_short_names() {
        let long = "x".repeat(10_000);
        assert!(device_name(&long).len() <= 64);
        assert_eq!(device_name("Chrome/"), "Chrome");
        assert_eq!(device_name("é/ü"), "Unknown device");
        let odd = format!("Firefox/{}", "9".repeat(200));
        assert!(device_name(&odd).len() <= 64);
    }
}
