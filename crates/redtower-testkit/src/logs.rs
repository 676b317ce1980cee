//! [`LogBuffer`]: what a test's code logged, kept in memory so the test can assert on it.

use std::{
    io::Write,
    sync::{Arc, Mutex, PoisonError},
};

/// An in-memory sink for log output, for tests that assert what was (or was not) logged.
/// Clones share one buffer. Give `move || buffer.clone()` to a `tracing_subscriber` as its
/// writer:
///
/// ```
/// use std::io::Write;
/// use redtower_testkit::LogBuffer;
///
/// let logs = LogBuffer::default();
/// let mut writer = logs.clone(); // what `tracing_subscriber::fmt().with_writer(..)` gets
/// writer.write_all(b"WARN applying the failure policy\n").unwrap();
/// assert!(logs.text().contains("failure policy"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
