//! Just enough HTTP/1.1 and RESP over `std::net` for the harness's own requests (readiness,
//! logging in, sanity checks) and Redis `INFO`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// A response: status, `Set-Cookie` values and body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) cookies: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    /// The `Cookie:` header value that replays every cookie this response set.
    pub(crate) fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .filter_map(|c| c.split(';').next())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(port: u16, raw: &str) -> Result<Response, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(raw.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let cookies = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .collect();
    Ok(Response {
        status,
        cookies,
        headers,
        body: body.to_owned(),
    })
}

/// `GET path`, with an optional `Cookie` header.
pub(crate) fn get(port: u16, path: &str, cookie: Option<&str>) -> Result<Response, String> {
    let cookie = cookie.map_or_else(String::new, |c| format!("Cookie: {c}\r\n"));
    request(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}Connection: close\r\n\r\n"
        ),
    )
}

/// `POST path` with a JSON body.
pub(crate) fn post_json(port: u16, path: &str, json: &str) -> Result<Response, String> {
    request(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        ),
    )
}

/// The text of a Redis `INFO <section>` reply.
pub(crate) fn redis_info(port: u16, section: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let cmd = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    stream
        .write_all(cmd.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
            let len: usize = len.parse().map_err(|_| "bad INFO reply")?;
            if rest.len() >= len {
                return Ok(rest[..len].to_owned());
            }
        }
    }
    Err("INFO: connection closed".to_owned())
}

/// `INFO commandstats`: calls and microseconds per command name.
pub(crate) fn commandstats(port: u16) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let info = redis_info(port, "commandstats")?;
    let mut stats = BTreeMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |k: &str| -> u64 {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        stats.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    Ok(stats)
}

/// Runs `f` while a `MONITOR` connection watches Redis and returns how many commands clients
/// sent meanwhile (commands run by Lua scripts are not counted): the round trips `f` caused,
/// when nothing else talks to this Redis.
pub(crate) fn client_commands<T>(
    redis: u16,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<(u64, T), String> {
    let mut monitor =
        redtower_testkit::Monitor::connect(redis).map_err(|e| format!("MONITOR: {e}"))?;
    let out = f();
    let sent = monitor.try_take().map_err(|e| format!("MONITOR: {e}"))?;
    Ok((sent.len() as u64, out?))
}
