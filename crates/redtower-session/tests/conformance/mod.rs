//! The conformance suite: every check written once, run per backend by `conformance!`.
#![allow(dead_code, unreachable_pub)]

pub mod app;
pub mod http;

use std::{collections::HashMap, time::Duration};

use redtower_session::{Binding, SessionBackend, SessionMeta, USER_KEY, UserSessions as _};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};

/// Store settings a check asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    pub idle: Option<Duration>,
    pub absolute: Option<Duration>,
    pub max_data: Option<usize>,
    pub max_per_user: Option<usize>,
}

pub trait Backend {
    type Store: SessionBackend + SessionStore + Clone;
    /// A fresh, empty store (own key prefix) with touch interval 0.
    fn store(&self, opts: Opts) -> impl Future<Output = Self::Store>;
    /// Whether `user`'s index exists in the backend (the Redis key, or a memory entry).
    fn index_exists(&self, store: &Self::Store, user: &str) -> impl Future<Output = bool>;
    /// How many entries `user`'s index holds (ZCARD, or the memory index).
    fn index_len(&self, store: &Self::Store, user: &str) -> impl Future<Output = usize>;
    /// How many session records the backend holds (keys of the store's prefix, or memory).
    fn records(&self, store: &Self::Store) -> impl Future<Output = usize>;
    /// How many sessions the store watches now.
    fn watched(&self, store: &Self::Store) -> usize;
}

pub fn record(data: Vec<(&str, Value)>, ttl: Duration) -> Record {
    Record {
        id: Id::default(),
        data: data.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        expiry_date: OffsetDateTime::now_utc() + ttl,
    }
}

pub fn bound(user: &str, ua: &str) -> Record {
    let binding = serde_json::to_value(Binding::new(
        user,
        SessionMeta::new()
            .user_agent(ua)
            .ip("203.0.113.7".parse().unwrap()),
    ))
    .unwrap();
    let _ = HashMap::<String, Value>::new();
    record(
        vec![(USER_KEY, binding), ("n", json!(1))],
        Duration::from_secs(3600),
    )
}

const HOUR: Duration = Duration::from_secs(3600);

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub async fn create<S: SessionStore>(s: &S, mut r: Record) -> Record {
    s.create(&mut r).await.unwrap();
    r
}

async fn alive<S: SessionStore>(s: &S, id: &Id) -> bool {
    s.load(id).await.unwrap().is_some()
}

pub async fn check_crud<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let input = record(vec![("n", json!(1))], HOUR);
    let input_id = input.id;
    let mut r = create(&s, input).await;
    assert_ne!(r.id, input_id, "create assigns a fresh id");
    let loaded = s.load(&r.id).await.unwrap().expect("created session loads");
    assert_eq!(loaded.data["n"], json!(1));
    assert_eq!(loaded.expiry_date, r.expiry_date, "expiry kept to the ms");
    let drift = (loaded.expiry_date - (OffsetDateTime::now_utc() + HOUR)).abs();
    assert!(drift < time::Duration::seconds(5), "{drift}");

    r.data.insert("n".into(), json!(2));
    s.save(&r).await.unwrap();
    assert_eq!(s.load(&r.id).await.unwrap().unwrap().data["n"], json!(2));

    s.delete(&r.id).await.unwrap();
    assert!(!alive(&s, &r.id).await);
    assert!(s.save(&r).await.is_err(), "save after delete fails");
    assert!(!alive(&s, &r.id).await, "save never resurrects");
    s.delete(&r.id).await.unwrap();
    assert!(!alive(&s, &Id::default()).await);
}

pub async fn check_create_never_overwrites<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let base = record(vec![("who", json!("a"))], HOUR);
    let a = create(&s, base.clone()).await;
    let mut other = base;
    other.data.insert("who".into(), json!("b"));
    let b2 = create(&s, other).await;
    assert_ne!(a.id, b2.id);
    assert_eq!(
        s.load(&a.id).await.unwrap().unwrap().data["who"],
        json!("a")
    );
    assert_eq!(
        s.load(&b2.id).await.unwrap().unwrap().data["who"],
        json!("b")
    );
}

pub async fn check_record_expiry<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let r = create(
        &s,
        record(vec![("n", json!(1))], Duration::from_millis(700)),
    )
    .await;
    assert!(alive(&s, &r.id).await);
    sleep_ms(900).await;
    assert!(!alive(&s, &r.id).await, "expired session loads as None");
    assert!(s.save(&r).await.is_err());
    assert!(!alive(&s, &r.id).await);
}

pub async fn check_idle_timeout_slides_on_read<B: Backend>(b: B) {
    let s = b
        .store(Opts {
            idle: Some(Duration::from_millis(1000)),
            ..Opts::default()
        })
        .await;
    let r = create(&s, record(vec![("n", json!(1))], HOUR)).await;
    let until = r.expiry_date - OffsetDateTime::now_utc();
    assert!(
        until <= time::Duration::milliseconds(1000),
        "idle caps expiry: {until}"
    );
    sleep_ms(600).await;
    assert!(alive(&s, &r.id).await);
    sleep_ms(600).await; // 1.2 s after create, 0.6 s after the read
    let again = s
        .load(&r.id)
        .await
        .unwrap()
        .expect("reads slide the idle timeout");
    assert!(again.expiry_date > r.expiry_date);
    sleep_ms(1300).await;
    assert!(!alive(&s, &r.id).await, "idle session expires");
}

pub async fn check_absolute_timeout_caps_activity<B: Backend>(b: B) {
    // Margins are wide (each 400 ms step has 1.1 s of idle slack, the loop 1.3 s of absolute
    // slack) so a loaded machine that oversleeps cannot turn this into a false failure.
    let s = b
        .store(Opts {
            idle: Some(Duration::from_millis(1500)),
            absolute: Some(Duration::from_millis(2500)),
            ..Opts::default()
        })
        .await;
    let mut r = create(&s, record(vec![("n", json!(1))], HOUR)).await;
    // Created with expiry = login + 1500 ms (idle), so the absolute deadline is that + 1000 ms.
    let deadline = r.expiry_date + time::Duration::milliseconds(1000);
    for _ in 0..3 {
        sleep_ms(400).await;
        assert!(alive(&s, &r.id).await);
    }
    r.data.insert("n".into(), json!(2));
    // tower-sessions sets the expiry it wants on every save.
    r.expiry_date = OffsetDateTime::now_utc() + HOUR;
    s.save(&r).await.unwrap();
    let e = s.load(&r.id).await.unwrap().unwrap().expiry_date;
    assert!(e <= deadline, "capped by absolute: {e} > {deadline}");
    sleep_ms(1400).await; // at least 2.6 s after login
    assert!(
        !alive(&s, &r.id).await,
        "activity never extends past the absolute timeout"
    );
}

pub async fn check_size_cap<B: Backend>(b: B) {
    let s = b
        .store(Opts {
            max_data: Some(100),
            ..Opts::default()
        })
        .await;
    let mut big = record(vec![("blob", json!("x".repeat(200)))], HOUR);
    assert!(s.create(&mut big).await.is_err(), "oversized create fails");
    let mut r = create(&s, record(vec![("n", json!(1))], HOUR)).await;
    r.data.insert("blob".into(), json!("x".repeat(200)));
    assert!(s.save(&r).await.is_err(), "oversized save fails");
    let loaded = s.load(&r.id).await.unwrap().unwrap();
    assert!(!loaded.data.contains_key("blob"), "old data kept");
}

pub async fn check_bind_and_list<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a1 = create(&s, bound("alice", "UA1")).await;
    let a2 = create(&s, bound("alice", "UA2")).await;
    let _b1 = create(&s, bound("bob", "UA3")).await;
    let list = s.list("alice", Some(a1.id)).await.unwrap();
    assert_eq!(list.len(), 2);
    let mine: Vec<_> = list.iter().filter(|i| i.current).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].handle, s.handle(&a1.id));
    assert_eq!(mine[0].user_agent.as_deref(), Some("UA1"));
    assert_eq!(mine[0].ip.as_deref(), Some("203.0.113.7"));
    for info in &list {
        assert!(!info.handle.contains(&a1.id.to_string()));
        assert!(!info.handle.contains(&a2.id.to_string()));
        assert!(info.created_at <= info.last_seen_at);
        assert!(info.expires_at > OffsetDateTime::now_utc());
    }
    assert_eq!(s.list("bob", None).await.unwrap().len(), 1);
    assert!(s.list("carol", None).await.unwrap().is_empty());
    let json = serde_json::to_value(&list[0]).unwrap();
    for field in [
        "handle",
        "created_at",
        "last_seen_at",
        "user_agent",
        "ip",
        "current",
    ] {
        assert!(json.get(field).is_some(), "{field}");
    }
}

const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Device names in the list, and the event hook: login, sign out this device, log out my
/// other devices, expiry found by the index cleanup (once).
pub async fn check_events_and_device_names<B: Backend>(b: B) {
    use redtower_session::{SessionEvent, WithEvents};
    use std::sync::{Arc, Mutex};
    let s = b
        .store(Opts {
            idle: Some(Duration::from_millis(1000)),
            ..Opts::default()
        })
        .await;
    let log: Arc<Mutex<Vec<SessionEvent>>> = Arc::default();
    let sink = log.clone();
    let w = WithEvents::new(s.clone(), move |e: &SessionEvent| {
        sink.lock().unwrap().push(e.clone())
    });
    let take = || std::mem::take(&mut *log.lock().unwrap());
    let mut a1 = bound("alice", FIREFOX);
    w.create_record(&mut a1).await.unwrap();
    let mut a2 = bound("alice", "curl/8.5.0");
    w.create_record(&mut a2).await.unwrap();
    let mut anon = record(vec![("n", json!(1))], HOUR);
    w.create_record(&mut anon).await.unwrap();
    let (h1, h2) = (w.handle(&a1.id), w.handle(&a2.id));
    let events = take();
    assert_eq!(events.len(), 2, "one login per bound session: {events:?}");
    assert!(
        matches!(&events[0], SessionEvent::Login { user, handle, meta }
        if user == "alice" && *handle == h1 && meta.user_agent.as_deref() == Some(FIREFOX))
    );

    let list = w.list("alice", Some(a1.id)).await.unwrap();
    let mut devices: Vec<_> = list.iter().map(|i| i.device.clone().unwrap()).collect();
    devices.sort();
    assert_eq!(devices, ["Firefox 128 on Windows", "curl 8"]);
    assert!(take().is_empty(), "listing live sessions reports nothing");

    // Sign out this device.
    assert!(w.revoke("alice", &h1).await.unwrap());
    assert!(
        !w.revoke("alice", &h1).await.unwrap(),
        "already gone: no second event"
    );
    assert_eq!(
        take(),
        [SessionEvent::Revoked {
            user: "alice".into(),
            handle: h1.clone()
        }]
    );
    assert!(!alive(&s, &a1.id).await);

    // Expiry: the idle timeout runs out on the backend's own clock (Redis TIME, or the paused
    // Tokio clock of the memory store), which no event announces: sleep past it. A younger
    // session keeps the index alive (on Redis the index expires with a user's last session,
    // and with it what could report that one).
    sleep_ms(700).await;
    let mut young = bound("alice", FIREFOX);
    w.create_record(&mut young).await.unwrap();
    let _ = take();
    sleep_ms(600).await; // 1.3 s after a2's last use, 0.6 s after the young one's
    let left = w.list("alice", None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, w.handle(&young.id));
    assert_eq!(
        take(),
        [SessionEvent::Expired {
            user: "alice".into(),
            handle: h2.clone()
        }]
    );
    assert_eq!(w.list("alice", None).await.unwrap().len(), 1);
    assert!(take().is_empty(), "an expiry is reported once");

    // Log out my other devices.
    let mut a3 = bound("alice", FIREFOX);
    w.create_record(&mut a3).await.unwrap();
    let mut a4 = bound("alice", FIREFOX);
    w.create_record(&mut a4).await.unwrap();
    let _ = take();
    assert_eq!(w.revoke_others("alice", &a3.id).await.unwrap(), 2);
    assert_eq!(
        take(),
        [SessionEvent::RevokedAll {
            user: "alice".into(),
            count: 2,
            kept: Some(w.handle(&a3.id)),
        }]
    );
}

pub async fn check_revoke_one<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a1 = create(&s, bound("alice", "UA1")).await;
    let a2 = create(&s, bound("alice", "UA2")).await;
    let h1 = s.handle(&a1.id);
    assert!(
        !s.revoke("bob", &h1).await.unwrap(),
        "another user's handle"
    );
    assert!(!s.revoke("alice", "not a handle").await.unwrap());
    assert!(!s.revoke("alice", "{x}:*").await.unwrap());
    assert!(s.revoke("alice", &h1).await.unwrap());
    assert!(!alive(&s, &a1.id).await);
    assert!(alive(&s, &a2.id).await);
    let list = s.list("alice", None).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].handle, s.handle(&a2.id));
    assert!(!s.revoke("alice", &h1).await.unwrap(), "already gone");
}

pub async fn check_revoke_all_kills_only_that_user<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a1 = create(&s, bound("alice", "UA1")).await;
    let a2 = create(&s, bound("alice", "UA2")).await;
    let b1 = create(&s, bound("bob", "UA3")).await;
    let anon = create(&s, record(vec![("n", json!(1))], HOUR)).await;
    assert_eq!(s.revoke_all("alice").await.unwrap(), 2);
    assert!(!alive(&s, &a1.id).await);
    assert!(!alive(&s, &a2.id).await);
    assert!(alive(&s, &b1.id).await);
    assert!(alive(&s, &anon.id).await);
    assert!(s.list("alice", None).await.unwrap().is_empty());
    assert!(!b.index_exists(&s, "alice").await);
    assert_eq!(s.list("bob", None).await.unwrap().len(), 1);
    // Logging in again afterwards works.
    let a3 = create(&s, bound("alice", "UA4")).await;
    assert!(alive(&s, &a3.id).await);
    assert_eq!(s.list("alice", None).await.unwrap().len(), 1);
    assert_eq!(s.revoke_all("nobody").await.unwrap(), 0);
}

pub async fn check_race_save_vs_revoke<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a = create(&s, bound("alice", "UA1")).await;
    // Request A has loaded the session ...
    let mut in_flight = s.load(&a.id).await.unwrap().unwrap();
    // ... when request B revokes it ...
    assert!(s.revoke("alice", &s.handle(&a.id)).await.unwrap());
    // ... and A then saves.
    in_flight.data.insert("n".into(), json!(99));
    assert!(
        s.save(&in_flight).await.is_err(),
        "the save reports the session gone"
    );
    assert!(!alive(&s, &a.id).await, "no resurrection");
    assert!(s.list("alice", None).await.unwrap().is_empty());
    assert!(!b.index_exists(&s, "alice").await);
}

pub async fn check_race_save_vs_delete<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a = create(&s, bound("alice", "UA1")).await;
    let mut in_flight = s.load(&a.id).await.unwrap().unwrap();
    s.delete(&a.id).await.unwrap(); // logout in another tab
    in_flight.data.insert("n".into(), json!(99));
    assert!(s.save(&in_flight).await.is_err());
    assert!(!alive(&s, &a.id).await, "no resurrection");
    assert!(s.list("alice", None).await.unwrap().is_empty());
}

pub async fn check_race_touch_vs_revoke_all<B: Backend>(b: B) {
    let s = b
        .store(Opts {
            idle: Some(Duration::from_secs(60)),
            ..Opts::default()
        })
        .await;
    let a = create(&s, bound("alice", "UA1")).await;
    let other = create(&s, bound("alice", "UA2")).await;
    // A read (with idle refresh) is in flight while revoke_all runs.
    let touched = s.load(&a.id).await.unwrap().unwrap();
    s.revoke_all("alice").await.unwrap();
    assert!(s.save(&touched).await.is_err(), "no lost revocation");
    assert!(!alive(&s, &a.id).await);
    assert!(!alive(&s, &other.id).await);
    // revoke_all first, then the touch: the touch sees nothing.
    let c = create(&s, bound("alice", "UA3")).await;
    s.revoke_all("alice").await.unwrap();
    assert!(s.load(&c.id).await.unwrap().is_none());
}

pub async fn check_race_login_vs_login<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let (mut r1, mut r2) = (bound("alice", "UA1"), bound("alice", "UA2"));
    let (x, y) = tokio::join!(s.create(&mut r1), s.create(&mut r2));
    x.unwrap();
    y.unwrap();
    assert_ne!(r1.id, r2.id);
    assert!(alive(&s, &r1.id).await);
    assert!(alive(&s, &r2.id).await);
    let list = s.list("alice", None).await.unwrap();
    assert_eq!(list.len(), 2, "no lost index entry");
}

pub async fn check_index_hygiene<B: Backend>(b: B) {
    let s = b
        .store(Opts {
            idle: Some(Duration::from_millis(1500)),
            ..Opts::default()
        })
        .await;
    // Margins of 0.4 s and more either side of the idle timeout, for a busy machine.
    let first = create(&s, bound("alice", "UA1")).await;
    sleep_ms(1000).await;
    let second = create(&s, bound("alice", "UA2")).await;
    assert_eq!(s.list("alice", None).await.unwrap().len(), 2);
    sleep_ms(900).await; // first: 1.9 s idle, second: 0.9 s
    let list = s.list("alice", None).await.unwrap();
    assert_eq!(list.len(), 1, "only live sessions are listed");
    assert_eq!(list[0].handle, s.handle(&second.id));
    assert!(!alive(&s, &first.id).await);
    assert!(b.index_exists(&s, "alice").await);
    sleep_ms(1100).await; // second: 2.0 s idle
    assert!(
        !b.index_exists(&s, "alice").await,
        "the index expires with its last session"
    );
    assert!(s.list("alice", None).await.unwrap().is_empty());
}

pub async fn check_delete_prunes_index<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a = create(&s, bound("alice", "UA1")).await;
    assert!(b.index_exists(&s, "alice").await);
    s.delete(&a.id).await.unwrap();
    assert!(s.list("alice", None).await.unwrap().is_empty());
    assert!(
        !b.index_exists(&s, "alice").await,
        "no index without sessions"
    );
}

/// A bounded flood of logins for one user: the index and the stored records stay at the cap,
/// the newest sessions live and the oldest revoked; list and revoke_all handle at most the cap.
pub async fn check_sessions_per_user_are_capped<B: Backend>(b: B) {
    let s = b
        .store(Opts {
            max_per_user: Some(5),
            ..Opts::default()
        })
        .await;
    let mut ids = Vec::new();
    for i in 0..300 {
        // Each login expires 1 ms after the one before (as logins a moment apart do), so
        // "the oldest" is well defined even when several land in one millisecond.
        let mut r = bound("alice", &format!("UA{i}"));
        r.expiry_date += Duration::from_millis(i);
        let r = create(&s, r).await;
        ids.push(r.id);
        let len = b.index_len(&s, "alice").await;
        assert!(len <= 5, "index at {len} after {} logins", i + 1);
    }
    assert_eq!(b.index_len(&s, "alice").await, 5);
    assert_eq!(b.records(&s).await, 5, "evicted sessions are deleted");
    let list = s.list("alice", None).await.unwrap();
    assert_eq!(list.len(), 5);
    let newest: Vec<String> = ids[295..].iter().map(|id| s.handle(id)).collect();
    for info in &list {
        assert!(newest.contains(&info.handle), "only the newest are kept");
    }
    for id in &ids[..295] {
        assert!(!alive(&s, id).await, "the oldest are revoked");
    }
    for id in &ids[295..] {
        assert!(alive(&s, id).await);
    }
    // Another user is not affected.
    let bob = create(&s, bound("bob", "UA")).await;
    assert!(alive(&s, &bob.id).await);
    assert_eq!(s.revoke_all("alice").await.unwrap(), 5);
    assert!(alive(&s, &bob.id).await);
}

/// The default cap is 100.
pub async fn check_default_cap_is_100<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    for i in 0..130 {
        create(&s, bound("alice", &format!("UA{i}"))).await;
    }
    assert_eq!(b.index_len(&s, "alice").await, 100);
    assert_eq!(b.records(&s).await, 100);
    assert_eq!(s.list("alice", None).await.unwrap().len(), 100);
}

pub async fn check_revoke_others<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let mut a1 = create(&s, bound("alice", "UA1")).await;
    let a2 = create(&s, bound("alice", "UA2")).await;
    let a3 = create(&s, bound("alice", "UA3")).await;
    let b1 = create(&s, bound("bob", "UA4")).await;
    assert_eq!(s.revoke_others("alice", &a1.id).await.unwrap(), 2);
    assert!(alive(&s, &a1.id).await, "the current session stays");
    assert!(!alive(&s, &a2.id).await);
    assert!(!alive(&s, &a3.id).await);
    assert!(alive(&s, &b1.id).await, "other users are not affected");
    let list = s.list("alice", Some(a1.id)).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].current);
    // The kept session is fully usable: it saves, and it is still indexed.
    a1.data.insert("n".into(), json!(7));
    s.save(&a1).await.unwrap();
    assert_eq!(s.load(&a1.id).await.unwrap().unwrap().data["n"], json!(7));
    // Twice in a row keeps it again; then "log out everywhere" ends it too.
    assert_eq!(s.revoke_others("alice", &a1.id).await.unwrap(), 0);
    assert!(alive(&s, &a1.id).await);
    assert_eq!(s.revoke_all("alice").await.unwrap(), 1);
    assert!(!alive(&s, &a1.id).await);
    // A current id that is not alice's (here bob's) keeps nothing of alice's.
    let a4 = create(&s, bound("alice", "UA5")).await;
    s.revoke_others("alice", &b1.id).await.unwrap();
    assert!(!alive(&s, &a4.id).await);
    assert!(alive(&s, &b1.id).await, "and never touches the other user");
}

/// Waits for `watch` up to `within`; returns how long it took.
pub async fn resolves(watch: impl Future<Output = ()>, within: Duration, what: &str) -> Duration {
    let started = tokio::time::Instant::now();
    tokio::time::timeout(within, watch)
        .await
        .unwrap_or_else(|_| panic!("the watch of a session that was {what} did not resolve"));
    started.elapsed()
}

/// The promise is 1 s (interval 250 ms + a round trip); a busy machine gets slack.
pub const WATCH_SLACK: Duration = Duration::from_secs(3);

pub async fn check_watch_ends_with_the_session<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let revoked = create(&s, bound("alice", "UA1")).await;
    let logged_out = create(&s, bound("alice", "UA2")).await;
    let kept = create(&s, bound("bob", "UA3")).await;
    let expiring = create(
        &s,
        record(vec![("n", json!(1))], Duration::from_millis(600)),
    )
    .await;
    let w_revoked = s.watch(&revoked.id).unwrap();
    let w_revoked_twice = s.watch(&revoked.id).unwrap();
    let w_logged_out = s.watch(&logged_out.id).unwrap();
    let mut w_kept = s.watch(&kept.id).unwrap();
    let w_expiring = s.watch(&expiring.id).unwrap();
    assert_eq!(b.watched(&s), 5);

    assert!(s.revoke("alice", &s.handle(&revoked.id)).await.unwrap());
    let t = resolves(w_revoked, WATCH_SLACK, "revoked").await;
    eprintln!("watch: revoke seen after {t:?}");
    resolves(w_revoked_twice, WATCH_SLACK, "revoked").await;
    s.delete(&logged_out.id).await.unwrap();
    let t = resolves(w_logged_out, WATCH_SLACK, "logged out").await;
    eprintln!("watch: logout seen after {t:?}");
    resolves(w_expiring, WATCH_SLACK, "expired").await;
    assert!(
        futures::poll!(&mut w_kept).is_pending(),
        "a live session's watch stays pending"
    );
    sleep_ms(600).await;
    assert!(futures::poll!(&mut w_kept).is_pending());
    assert_eq!(b.watched(&s), 1);
    drop(w_kept);
    assert_eq!(b.watched(&s), 0, "a dropped watch is removed");

    // "Log out everywhere" and "log out other sessions".
    let a1 = create(&s, bound("alice", "UA4")).await;
    let a2 = create(&s, bound("alice", "UA5")).await;
    let a3 = create(&s, bound("alice", "UA6")).await;
    let (w1, mut w2, w3) = (
        s.watch(&a1.id).unwrap(),
        s.watch(&a2.id).unwrap(),
        s.watch(&a3.id).unwrap(),
    );
    s.revoke_others("alice", &a2.id).await.unwrap();
    resolves(w1, WATCH_SLACK, "revoked by revoke_others").await;
    resolves(w3, WATCH_SLACK, "revoked by revoke_others").await;
    assert!(futures::poll!(&mut w2).is_pending(), "the kept session");
    s.revoke_all("alice").await.unwrap();
    let t = resolves(w2, WATCH_SLACK, "revoked by revoke_all").await;
    eprintln!("watch: revoke_all seen after {t:?}");

    // A session that is already gone resolves at the first check.
    resolves(s.watch(&a1.id).unwrap(), WATCH_SLACK, "already gone").await;
}

pub async fn check_watches_are_capped<B: Backend>(b: B) {
    let s = b.store(Opts::default()).await;
    let a = create(&s, bound("alice", "UA1")).await;
    let watches: Vec<_> = (0..10_000).map(|_| s.watch(&a.id).unwrap()).collect();
    assert!(matches!(
        s.watch(&a.id),
        Err(redtower_session::Error::TooManyWatches { max: 10_000 })
    ));
    drop(watches);
    assert_eq!(b.watched(&s), 0);
    let again = s.watch(&a.id);
    assert!(again.is_ok());
}

/// Instantiates every check for one backend: `conformance!([#[attr]] backend_expr);`.
#[macro_export]
macro_rules! conformance {
    (@each $attrs:tt $backend:expr; $($check:ident),*) => {
        $( $crate::conformance!(@one $attrs $backend; $check); )*
    };
    (@one [$(#[$m:meta])*] $backend:expr; $check:ident) => {
        $(#[$m])*
        async fn $check() {
            conformance::$check($backend).await;
        }
    };
    ($attrs:tt $backend:expr) => {
        $crate::conformance!(@each $attrs $backend;
            check_crud, check_create_never_overwrites, check_record_expiry,
            check_idle_timeout_slides_on_read, check_absolute_timeout_caps_activity,
            check_size_cap, check_bind_and_list, check_revoke_one,
            check_revoke_all_kills_only_that_user,
            check_race_save_vs_revoke, check_race_save_vs_delete,
            check_race_touch_vs_revoke_all, check_race_login_vs_login,
            check_index_hygiene, check_delete_prunes_index,
            check_sessions_per_user_are_capped, check_default_cap_is_100, check_revoke_others,
            check_watch_ends_with_the_session, check_watches_are_capped,
            check_events_and_device_names);
    };
}
