//! What the stores tell the [`SessionLayer`](crate::SessionLayer) about the current request.
//!
//! `SessionStore` methods can only return a stringly `session_store::Error`, and
//! `tower-sessions` turns a failed save into a bare 500. The layer runs each request inside a
//! task-local scope; the stores record there whether Redis failed or a write found the session
//! gone, and the layer turns the 500 into 503 or 401 (+ a cleared cookie).

use std::cell::Cell;

use crate::Error;

pub(crate) const OUTAGE: u8 = 1;
pub(crate) const GONE: u8 = 2;

tokio::task_local! {
    pub(crate) static FLAGS: Cell<u8>;
}

pub(crate) fn record(err: &Error) {
    let flag = match err {
        Error::Gone => GONE,
        e if e.is_outage() => OUTAGE,
        _ => return,
    };
    let _ = FLAGS.try_with(|f| f.set(f.get() | flag));
}

pub(crate) fn current() -> u8 {
    FLAGS.try_with(Cell::get).unwrap_or(0)
}
