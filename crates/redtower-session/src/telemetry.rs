//! The metrics this crate records through the [`metrics`] facade (listed in the crate docs):
//! one counter of the layer's store calls by operation and outcome, and one of the sessions
//! ended by revocation. Labels are fixed words, never a user or a session id.

use crate::Error;

/// Store calls made by the [`SessionLayer`](crate::SessionLayer), by `op` and `outcome`.
pub(crate) const STORE_CALLS: &str = "redtower_session_store_calls_total";
/// Sessions ended through [`UserSessions`](crate::UserSessions), by `scope`.
pub(crate) const REVOKED: &str = "redtower_session_revoked_total";

/// Counts one store call of the layer: `op` is `load`, `create`, `save` or `delete`.
/// Outcomes: `found` / `missing` (a load), `ok` (other operations), `gone` (a write to a
/// session that was deleted, expired or revoked), `unavailable` (an outage or the breaker
/// open), `error` (anything else).
pub(crate) fn store_call<T>(op: &'static str, result: Result<Option<&T>, &Error>) {
    let outcome = match result {
        Ok(Some(_)) if op == "load" => "found",
        Ok(None) if op == "load" => "missing",
        Ok(_) => "ok",
        Err(Error::Gone) => "gone",
        Err(e) if e.is_outage() => "unavailable",
        Err(_) => "error",
    };
    metrics::counter!(STORE_CALLS, "op" => op, "outcome" => outcome).increment(1);
}

/// Counts `n` sessions ended by a revocation of `scope`: `one` (`revoke`), `all`
/// (`revoke_all`, "log out everywhere") or `others` (`revoke_others`).
pub(crate) fn revoked(scope: &'static str, n: u64) {
    metrics::counter!(REVOKED, "scope" => scope).increment(n);
}
