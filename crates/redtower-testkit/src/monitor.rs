//! [`Monitor`]: the commands a server receives, as `MONITOR` shows them.

use std::io::{BufRead, BufReader, Write};

use crate::{process::CMD_TIMEOUT, resp};

/// A `MONITOR` connection to a server: the commands its clients send, in order, without the
/// commands that scripts run (`redis.call`), so each is one request on the wire.
///
/// ```
/// let server = redtower_testkit::RedisServer::start();
/// let mut monitor = server.monitor();
/// server.cmd(&["SET", "k", "v"]);
/// assert_eq!(monitor.take(), [r#""SET" "k" "v""#]);
/// ```
#[derive(Debug)]
pub struct Monitor {
    port: u16,
    reader: BufReader<std::net::TcpStream>,
    markers: u64,
}

impl Monitor {
    /// Watches the server listening on `port` of this host (any server, not only one this kit
    /// started).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or refuses `MONITOR`.
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(CMD_TIMEOUT))?;
        (&stream).write_all(b"*1\r\n$7\r\nMONITOR\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim_end() != "+OK" {
            return Err(std::io::Error::other(format!("MONITOR answered {line:?}")));
        }
        Ok(Self {
            port,
            reader,
            markers: 0,
        })
    }

    /// The commands clients sent since the last call (or since the monitor connected), each
    /// as `MONITOR` quotes it (`"EVALSHA" "…" …`), in order; commands run inside scripts are
    /// left out. Returns once the server has shown all of them (it echoes a marker sent after
    /// them, which is not included).
    ///
    /// # Panics
    ///
    /// When the server stops answering ([`try_take`](Self::try_take) returns the error).
    pub fn take(&mut self) -> Vec<String> {
        self.try_take()
            .unwrap_or_else(|e| panic!("MONITOR on port {}: {e}", self.port))
    }

    /// [`take`](Self::take), with the server's failure to answer as an error.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or the `MONITOR` connection ends.
    pub fn try_take(&mut self) -> std::io::Result<Vec<String>> {
        self.markers += 1;
        let marker = format!(
            "redtower-testkit-monitor-{}-{}",
            std::process::id(),
            self.markers
        );
        resp::command(self.port, &["ECHO", &marker], CMD_TIMEOUT)?;
        let quoted = format!("\"{marker}\"");
        let mut sent = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the MONITOR connection closed",
                ));
            }
            let line = line.trim_end();
            // `+<time> [<db> <client>] "CMD" "arg" ...`; scripts' commands show `[<db> lua]`.
            let Some((client, command)) = line
                .strip_prefix('+')
                .and_then(|l| l.split_once(" ["))
                .and_then(|(_, rest)| rest.split_once("] "))
            else {
                continue;
            };
            if command.ends_with(&quoted) && command.starts_with("\"ECHO\"") {
                return Ok(sent);
            }
            if !client.ends_with(" lua") {
                sent.push(command.to_owned());
            }
        }
    }
}
