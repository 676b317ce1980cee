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
/// A load found the session.
pub(crate) const LOADED: u8 = 4;
/// A load found nothing (expired, revoked or unknown id).
pub(crate) const MISSING: u8 = 8;
/// A new session was created.
pub(crate) const CREATED: u8 = 16;

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

fn mark(flag: u8) {
    let _ = FLAGS.try_with(|f| f.set(f.get() | flag));
}

/// Records what a load found.
pub(crate) fn loaded<T>(found: &Result<Option<T>, Error>) {
    match found {
        Ok(Some(_)) => mark(LOADED),
        Ok(None) => mark(MISSING),
        Err(_) => {}
    }
}

/// Records a created session.
pub(crate) fn created(result: &Result<(), Error>) {
    if result.is_ok() {
        mark(CREATED);
    }
}

/// The `outcome` of the request's `redtower.session` span (see the crate docs, "Tracing").
pub(crate) fn name(flags: u8) -> &'static str {
    if flags & OUTAGE != 0 {
        "error"
    } else if flags & GONE != 0 {
        "revoked"
    } else if flags & CREATED != 0 {
        "new"
    } else if flags & LOADED != 0 {
        "loaded"
    } else if flags & MISSING != 0 {
        "expired"
    } else {
        "none"
    }
}

pub(crate) fn current() -> u8 {
    FLAGS.try_with(Cell::get).unwrap_or(0)
}
