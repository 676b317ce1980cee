//! Running `wrk --latency` and reading its report.

/// How `wrk` is run.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) threads: u32,
    pub(crate) connections: u32,
    pub(crate) seconds: u32,
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub(crate) errors: u64,
}

/// `wrk -t<threads> -c<connections> -d<seconds>s --latency http://127.0.0.1:<port><path>`,
/// with `-H "Cookie: ..."` for one cookie, or a script that sends `cookies` in turn (each
/// request the next one; every `wrk` thread starts at its own offset).
pub(crate) fn run(
    load: &Load,
    port: u16,
    path: &str,
    cookies: &[String],
) -> Result<WrkResult, String> {
    let mut cmd = super::procs::command("wrk", super::procs::Role::Load);
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency");
    let script = match cookies {
        [] => None,
        [cookie] => {
            cmd.arg("-H").arg(format!("Cookie: {cookie}"));
            None
        }
        many => {
            let file =
                std::env::temp_dir().join(format!("redtower-wrk-{}.lua", std::process::id()));
            std::fs::write(&file, cookie_script(many))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            cmd.arg("-s").arg(&file);
            Some(file)
        }
    };
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd.output().map_err(|e| format!("wrk: {e}"));
    if let Some(file) = script {
        let _ = std::fs::remove_file(file);
    }
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}"))
}

/// A `wrk` script whose requests carry `cookies` in turn. The requests are formatted once, in
/// `init`, so a request costs `wrk` one table lookup.
fn cookie_script(cookies: &[String]) -> String {
    let mut lua = String::from("local cookies = {\n");
    for c in cookies {
        lua.push_str(&format!(
            "  \"{}\",\n",
            c.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    // `setup` runs in the main Lua state and hands each thread its starting offset (a global
    // of the thread's state), so that the threads do not send the same cookies in step.
    lua.push_str(
        "}\n\
         local reqs, n, threads = {}, 0, 0\n\
         function setup(thread)\n\
           thread:set(\"start\", threads * 17)\n\
           threads = threads + 1\n\
         end\n\
         function init(args)\n\
           for i, c in ipairs(cookies) do reqs[i] = wrk.format(nil, nil, { Cookie = c }) end\n\
           n = start or 0\n\
         end\n\
         function request()\n\
           n = n + 1\n\
           return reqs[(n % #reqs) + 1]\n\
         end\n",
    );
    lua
}

/// A `wrk` duration such as `812.00us`, `1.23ms` or `2.01s`, in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen_rps = false;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50.000%" | "50%"), Some(v)) => r.p50_ms = millis(v)?,
            (Some("99.000%" | "99%"), Some(v)) => r.p99_ms = millis(v)?,
            (Some("Requests/sec:"), Some(v)) => {
                r.rps = v.parse().ok()?;
                seen_rps = true;
            }
            (Some(n), Some("requests")) => r.requests = n.parse().ok()?,
            (Some("Non-2xx"), _) => {
                r.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?;
            }
            (Some("Socket"), Some("errors:")) => {
                // Socket errors: connect 0, read 0, write 0, timeout 0
                r.errors += line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    seen_rps.then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_report() {
        let text = "Running 5s test @ http://127.0.0.1:3000/plain
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  512.00us  14.00ms   80.00%
    Req/Sec    28.00k     2.00k   31.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.80ms
     99%    3.50ms
  278000 requests in 5.00s, 35.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  55600.12
Transfer/sec:      7.00MB
";
        let r = parse(text).unwrap();
        assert_eq!(r.requests, 278_000);
        assert!((r.rps - 55_600.12).abs() < 1e-6);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 3.5).abs() < 1e-9);
        assert_eq!(r.errors, 7);
        assert_eq!(millis("2s"), Some(2000.0));
        assert!(parse("garbage").is_none());
    }
}
