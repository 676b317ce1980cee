//! Sessions for axum/tower on [`tower-sessions`](tower_sessions), stored in Redis (or
//! memory), with a per-user session list and instant revocation.
//!
//! * [`RedisStore`] and [`MemoryStore`]: [`SessionBackend`]s, and drop-in `SessionStore`s. `create` never overwrites,
//!   `save` never resurrects a deleted or revoked session, keys are HMACs of the ids, TTLs
//!   have millisecond precision, idle timeouts slide on reads without rewriting the record,
//!   an absolute timeout caps everything, and session data has a size cap.
//! * [`bind_user`] at login (cycles the id against fixation; logging in as another user starts
//!   from empty data), [`UserSessions`] for `list` / `revoke` / `revoke_all` ("log out
//!   everywhere") / `revoke_others` ("log out my other devices"), [`AuthSession`] for handlers.
//! * A per-user cap ([`RedisStore::max_sessions_per_user`], 100 by default): one more login
//!   revokes the user's oldest session, so no flood of logins grows Redis or the index.
//! * [`UserSessions::watch`]: a future that resolves within about 250 ms of a session ending
//!   (revoked, logged out, expired) on any instance, to end live streams (SSE) bound to it.
//! * The session list shows each session's device in a readable form
//!   ([`SessionInfo::device`], from [`device_name`]: "Firefox 128 on Windows"), and
//!   `revoke(user, handle)` signs that one device out.
//! * [`WithEvents`]: a store wrapper that reports logins, revocations and expiries to a hook
//!   ([`SessionEvents`]) for audit logs; [`SessionEvent::Expired`] says exactly when an expiry
//!   is reported.
//! * [`SessionLayer`]: `SessionManagerLayer` with signed cookies and secure defaults that
//!   answers 401 (and clears the cookie) when a session is revoked mid-request, and 503 when
//!   Redis is down, instead of a bare 500.
//!
//! ```
//! use axum::{Json, Router, extract::{Path, State}, http::{HeaderMap, StatusCode}, routing::{delete, get, post}};
//! use redtower_session::{
//!     AuthSession, MemoryStore, SessionLayer, SessionMeta, UserSessions, bind_user,
//!     tower_sessions::{Session, cookie::Key},
//! };
//! use tower::ServiceExt as _;
//!
//! async fn login(session: Session, headers: HeaderMap, body: String) -> StatusCode {
//!     match bind_user(&session, &body, SessionMeta::from_headers(&headers, None)).await {
//!         Ok(()) => StatusCode::NO_CONTENT,
//!         Err(e) => redtower_session::status_for(&e),
//!     }
//! }
//! async fn me(auth: AuthSession) -> String {
//!     auth.user
//! }
//! async fn sessions(State(store): State<MemoryStore>, auth: AuthSession) -> Json<serde_json::Value> {
//!     let list = store.list(&auth.user, auth.session.id()).await.unwrap_or_default();
//!     Json(serde_json::to_value(list).unwrap_or_default())
//! }
//! async fn logout_everywhere(State(store): State<MemoryStore>, auth: AuthSession) -> StatusCode {
//!     match store.revoke_all(&auth.user).await {
//!         Ok(_) => StatusCode::NO_CONTENT,
//!         Err(_) => StatusCode::SERVICE_UNAVAILABLE,
//!     }
//! }
//! async fn revoke(State(store): State<MemoryStore>, auth: AuthSession, Path(handle): Path<String>) -> StatusCode {
//!     match store.revoke(&auth.user, &handle).await {
//!         Ok(true) => StatusCode::NO_CONTENT,
//!         Ok(false) => StatusCode::NOT_FOUND,
//!         Err(_) => StatusCode::SERVICE_UNAVAILABLE,
//!     }
//! }
//! async fn logout(auth: AuthSession) -> StatusCode {
//!     match auth.session.flush().await {
//!         Ok(()) => StatusCode::NO_CONTENT,
//!         Err(e) => redtower_session::status_for(&e),
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new();
//! let app = Router::new()
//!     .route("/login", post(login))
//!     .route("/me", get(me))
//!     .route("/logout", post(logout))
//!     .route("/me/sessions", get(sessions))
//!     .route("/me/sessions/{handle}", delete(revoke))
//!     .route("/logout-everywhere", post(logout_everywhere))
//!     .layer(SessionLayer::new(store.clone(), Key::generate()))
//!     .with_state(store.clone());
//!
//! # use axum::{body::Body, http::Request};
//! # let send = |req: Request<Body>| app.clone().oneshot(req);
//! # let cookie_of = |res: &axum::response::Response| {
//! #     res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
//! # };
//! // Log in twice (two devices).
//! let res = send(Request::post("/login").body(Body::from("alice")).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::NO_CONTENT);
//! let phone = cookie_of(&res);
//! assert!(res.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly"));
//! let res = send(Request::post("/login").body(Body::from("alice")).unwrap()).await.unwrap();
//! let laptop = cookie_of(&res);
//!
//! let me = |c: &str| Request::get("/me").header("cookie", c).body(Body::empty()).unwrap();
//! assert_eq!(send(me(&phone)).await.unwrap().status(), StatusCode::OK);
//! assert_eq!(store.list("alice", None).await.unwrap().len(), 2);
//!
//! // Revoke the phone from the laptop (handles come from GET /me/sessions).
//! let req = Request::get("/me/sessions").header("cookie", &laptop).body(Body::empty()).unwrap();
//! let body = axum::body::to_bytes(send(req).await.unwrap().into_body(), 1 << 20).await.unwrap();
//! let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! let phone_handle = list.as_array().unwrap().iter()
//!     .find(|s| s["current"] == false).unwrap()["handle"].as_str().unwrap().to_owned();
//! let req = Request::delete(format!("/me/sessions/{phone_handle}"))
//!     .header("cookie", &laptop).body(Body::empty()).unwrap();
//! assert_eq!(send(req).await.unwrap().status(), StatusCode::NO_CONTENT);
//! assert_eq!(send(me(&phone)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! let phone = cookie_of(&send(Request::post("/login").body(Body::from("alice")).unwrap()).await.unwrap());
//!
//! // Log out everywhere from the laptop: the phone's next request is rejected.
//! let req = Request::post("/logout-everywhere").header("cookie", &laptop).body(Body::empty()).unwrap();
//! assert_eq!(send(req).await.unwrap().status(), StatusCode::NO_CONTENT);
//! assert_eq!(send(me(&phone)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(send(me(&laptop)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! assert!(store.list("alice", None).await.unwrap().is_empty());
//! # }
//! ```
//!
//! The same with Redis (every instance sees a revocation on its next request):
//!
//! ```no_run
//! use std::time::Duration;
//! use redtower_client::{Redis, RedisConfig};
//! use redtower_session::{RedisStore, SessionLayer, tower_sessions::cookie::Key};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = Redis::new(RedisConfig::from_env()?)?;
//! let secret = std::env::var("SESSION_SECRET")?; // >= 64 bytes, the same on every instance
//! let store = RedisStore::new(redis, &secret.as_bytes()[..32])?
//!     .idle_timeout(Duration::from_secs(30 * 60))
//!     .absolute_timeout(Duration::from_secs(12 * 3600));
//! let layer = SessionLayer::new(store.clone(), Key::from(secret.as_bytes()));
//! # let _ = layer; Ok(()) }
//! ```
//!
//! Choosing the store at run time (Redis when configured, memory otherwise) is choosing an
//! `Arc<dyn SessionBackend>`: the layer is not generic over the store, and handlers call
//! [`UserSessions`] on the same `Arc` (see [`SessionBackend`]).
//!
//! # Design
//!
//! A record is a Redis HASH `<prefix>:s:{<bucket>}:<HMAC(id)>`; a user has an index
//! `<prefix>:s:{<bucket>}:u:<user>` (a ZSET of handles scored by expiry, whose own TTL is
//! always its highest score, so it disappears with its last session) and a revocation epoch
//! `<prefix>:s:{<bucket>}:g:<user>`. `bucket = HMAC(secret, user) mod 2^14` is carried in the
//! top 14 bits of a logged-in session's id (the other 114 bits are random), so the store finds
//! the user's slot from the cookie alone: record, index and epoch share one Cluster slot and
//! every operation (load with idle refresh, save, create, delete, list, revoke, revoke_all,
//! revoke_others) is one atomic Lua script, one round trip. A session records the epoch at login; bumping it
//! (`revoke_all`) kills every session of the user at its next use, even ones missing from the
//! index. The epoch key lives at least as long as the user's longest session.
//!
//! The trade-off: two cookies of the same user share 14 bits, which reveals only that they
//! may belong to the same user (1 in 16384 by chance); the cookie is signed, not encrypted.
//!
//! Under load, the loads that arrive while one is in flight leave together as one load script
//! call (one per slot on a Cluster), which loads them one after another: still one round trip
//! per request, one script call for many ([`RedisStore::coalesce_loads`]).
//!
//! Round trips per request: 0 when the handler does not touch the session, 1 for a read
//! (including the idle refresh), 1 for a write (with index upkeep), 1 for login from an
//! anonymous session (2 from an existing one: delete the old id, create the new one).
//!
//! Login from an existing session is the one step that is not a single atomic operation:
//! tower-sessions' `cycle_id` deletes the old record and creates the new one, and the two live
//! in different slots (an anonymous id carries a random bucket, a logged-in one the user's).
//! It stays correct because each half is atomic and neither can bring a dead id back: the
//! delete comes first, the create is `NX` under a fresh id, and a `save` is `XX`, so a
//! concurrent request on the old id finds it gone (no resurrection, no second owner). If the
//! process dies between the two halves the user is logged out, never logged in twice; two
//! concurrent logins through one cookie each get a session of their own, both indexed.
//!
//! # Limits
//!
//! Every resource a client can make the store hold is bounded:
//!
//! | limit | default | setter | why |
//! | --- | --- | --- | --- |
//! | sessions per user | 100 | [`max_sessions_per_user`](RedisStore::max_sessions_per_user) | a login needs no more than a user name in many apps; the 101st login revokes the session that expires soonest (the oldest), so the index, `list` and `revoke_all` never handle more than 100 entries (bounded work in one Lua script) and one user's Redis memory is capped (~100 records of at most the data cap) |
//! | session data | 16 KiB | [`max_data_size`](RedisStore::max_data_size) | a handler storing user input cannot grow one record without bound; a bigger save fails |
//! | session lifetime | 7 days | [`absolute_timeout`](RedisStore::absolute_timeout) | no activity keeps a session (or its keys) alive forever; every key has a TTL |
//! | idle lifetime | none | [`idle_timeout`](RedisStore::idle_timeout) | set it (e.g. 30 min) to end sessions nobody uses |
//! | watched sessions per store | 10,000 | [`max_watches`](RedisStore::max_watches) | each open stream costs one entry and a few bytes per check; beyond it `watch` fails with [`Error::TooManyWatches`] (answer 503) |
//! | watch check interval | 250 ms | [`watch_interval`](RedisStore::watch_interval) | one batched check per interval for all watches (standalone: one round trip of script calls of at most 500 keys; Cluster: pipelined `HMGET`s, then `GET`s of the epochs, two round trips); a watch resolves within about this plus the check |
//! | loads per coalesced script call | 64 | — | one script call never runs long while Redis serves nobody else |
//! | create attempts on id collisions | 8 | — | a broken random source fails with [`Error::Collision`] instead of looping |
//! | circuit breaker | open after 5 consecutive outage errors, for 1 s | [`SessionLayer::circuit_breaker`] | an outage answers 503 at once instead of holding every request for a timeout; never opened by a store still making its first connection |
//!
//! The memory store has the same limits; its per-user index is ordered by expiry, so pruning
//! and evicting never rescan it, and expired records are swept as the store doubles.
//!
//! # Retry safety
//!
//! The client re-sends a command that was in flight when its connection dropped (up to
//! `max_command_attempts`), so a script may run twice. Each is safe to run twice (the comment at
//! the top of each script says why):
//!
//! | script | changes state | safe under re-send? | how |
//! | --- | --- | --- | --- |
//! | `create` | record, index, epoch, evicts beyond the cap | yes | the id is chosen by the client, with a random creation token stored in the record: a re-send finds its own token and answers as the first run did (one record, one index entry, one eviction) |
//! | `load` | last seen, idle slide, deletes dead sessions | yes | touching again moves nothing back; deleting a dead session again changes nothing |
//! | `save` | data, expiry | yes | writes the same again; only updates a live record, so never resurrects |
//! | `delete` | deletes record and index entry | yes | a second run finds nothing |
//! | `list` | prunes dead entries | yes | pruning twice prunes nothing more |
//! | `revoke` | deletes one session | yes, in effect | a second run finds it gone (the reply then says "not found"; the session is revoked either way) |
//! | `revoke_all` | bumps the epoch, deletes indexed sessions | yes, in effect | a second bump only ends sessions created while the call was in flight; never undoes a revocation |
//! | `revoke_others` | as `revoke_all`, re-stamps the current session | yes, in effect | the current session carries the new epoch, so a second run keeps it again |
//! | `alive` (watches) | no | yes | read only |
//!
//! # Failure policy
//!
//! When Redis is down or slow, a request that needs its session is answered
//! `503 Service Unavailable` with `Retry-After: 1` (by the [`SessionLayer`], by
//! [`AuthSession`]'s rejection, or by a handler through [`status_for`]); the cookie is kept, so
//! an outage logs nobody out. A request whose handler does not touch the session sends nothing
//! to Redis and is not affected. A session revoked while its request ran is answered 401 with a
//! cleared cookie, and is never written back. Watches keep waiting through an outage (an
//! outage ends no session).
//!
//! The layer's circuit breaker ([`SessionLayer::circuit_breaker`], the client's
//! [`CircuitBreaker`](redtower_client::CircuitBreaker): 5 consecutive outage errors, 1 s
//! cool-down by default) then answers those 503s at once instead of after a timeout each: no
//! store call until the cool-down ends or the client reconnects, then one request probes the
//! store and its success closes the breaker. The user API ([`UserSessions`]) is called by
//! handlers and is not behind the breaker.
//!
//! A fresh [`Redis`](redtower_client::Redis) handle (a process that just started) waits for its
//! first connection before the first command, up to the command timeout: the first requests
//! are decided by Redis, not answered 503.
//!
//! # Tracing
//!
//! One span per request through [`SessionLayer`], `redtower.session` (target
//! `redtower::session`, DEBUG, so it costs nothing unless asked for), around the inner
//! service (the session is loaded lazily, when a handler reads it). Its one field, recorded at
//! the end of the request, is `outcome` = `loaded` (a session was found) \| `new` (one was
//! created) \| `expired` (the cookie named no live session) \| `none` (no session was read)
//! \| `revoked` (the session ended during the request) \| `error` (the store was
//! unavailable). No session id, user or cookie is ever a field.
//!
//! # Metrics
//!
//! Through the `metrics` facade, labelled by fixed words only (never a user or a session id):
//!
//! * `redtower_session_store_calls_total{op,outcome}`: the [`SessionLayer`]'s store calls,
//!   `op` one of `load`, `create`, `save`, `delete`; `outcome` one of `found` and `missing`
//!   (loads), `ok` (other operations), `gone` (a write to a session deleted, expired or revoked
//!   meanwhile), `unavailable` (an outage, or the circuit breaker open), `error`;
//! * `redtower_session_revoked_total{scope}`: sessions ended through [`UserSessions`] by
//!   [`RedisStore`] and [`MemoryStore`], `scope` one of `one` (`revoke`), `all` (`revoke_all`)
//!   and `others` (`revoke_others`).
//!
//! # Examples
//!
//! In [`examples/`](https://github.com/redtower-rs/redtower/tree/main/crates/redtower-session/examples), each a complete axum program:
//!
//! * `login.rs`: login, logout and "log out everywhere", in process or over Redis
//!   (`REDIS_URL`).
//!
//! # Features
//!
//! * `rustls`: TLS for Redis, forwarded to `redtower-client`.
//! * `testing`: helpers for this crate's tests (what a [`MemoryStore`] holds); not a stable
//!   API.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod device;
mod error;
mod events;
mod extract;
mod keys;
mod layer;
mod outcome;
mod service;
mod store;
mod telemetry;
mod user;
mod watch;

pub use device::device_name;
pub use error::{ConfigError, Error, Result};
pub use events::{SessionEvent, SessionEvents, WithEvents};
pub use extract::{AuthSession, SessionRejection, status_for};
pub use layer::SessionLayer;
pub use service::SessionGuard;
pub use store::{MemoryStore, RedisStore, SessionBackend};
pub use user::{
    Binding, SessionError, SessionInfo, SessionMeta, USER_KEY, UserSessions, bind_user,
    current_user,
};
pub use watch::SessionWatch;

pub use tower_sessions;
