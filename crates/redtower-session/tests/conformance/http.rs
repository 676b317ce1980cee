//! HTTP-level checks through `SessionLayer`, written once and run per backend.

use axum::http::StatusCode;
use redtower_session::{SessionBackend, tower_sessions::cookie::Key};
use serde_json::json;

use super::app::{Counting, app, id_of, login_as, send};

pub async fn http_cookie_defaults<S: SessionBackend + Clone>(store: S) {
    let (router, _) = app(store, Key::generate());
    let r = send(
        &router,
        "POST",
        "/login",
        None,
        Some(json!({"user": "alice"})),
    )
    .await;
    let c = r.set_cookie.unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(c.contains(attr), "{attr} in {c}");
    }
    assert!(!c.contains("Max-Age"), "a browser-session cookie: {c}");
    assert!(c.starts_with("id="));
}

pub async fn http_fixation<S: SessionBackend + Clone>(store: S) {
    let (router, _) = app(store.clone(), Key::generate());
    // An anonymous session with data.
    let r = send(&router, "GET", "/anon", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let before = r.cookie();
    let old_id = id_of(&before);
    assert!(store.load_record(&old_id).await.unwrap().is_some());
    // Login through that session.
    let r = send(
        &router,
        "POST",
        "/login",
        Some(&before),
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let after = r.cookie();
    assert_ne!(id_of(&after), old_id, "login cycles the id");
    assert!(
        store.load_record(&old_id).await.unwrap().is_none(),
        "the pre-login id is dead"
    );
    let r = send(&router, "GET", "/whoami", Some(&before), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&router, "GET", "/me", Some(&after), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, json!({"user": "alice", "visits": 1}));
    // Data from before login survives the cycle.
    let r = send(&router, "GET", "/anon", Some(&after), None).await;
    assert_eq!(r.status, StatusCode::OK);
}

pub async fn http_logout_and_list<S: SessionBackend + Clone>(store: S) {
    let (router, _) = app(store, Key::generate());
    let phone = login_as(&router, "alice").await;
    let laptop = login_as(&router, "alice").await;
    let r = send(&router, "GET", "/me/sessions", Some(&laptop), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let current: Vec<_> = list
        .iter()
        .filter(|s| s["current"] == json!(true))
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["user_agent"], json!("test-agent/1"));
    assert_eq!(current[0]["ip"], json!("127.0.0.1"));
    let phone_handle = list.iter().find(|s| s["current"] == json!(false)).unwrap()["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/me/sessions/{phone_handle}");
    assert_eq!(
        send(&router, "DELETE", &path, Some(&laptop), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = send(&router, "GET", "/me", Some(&phone), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "revoked device");
    assert!(
        r.set_cookie.unwrap().contains("Max-Age=0"),
        "cookie cleared"
    );
    assert_eq!(
        send(&router, "DELETE", &path, Some(&laptop), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Logout.
    let r = send(&router, "POST", "/logout", Some(&laptop), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(
        send(&router, "GET", "/me", Some(&laptop), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

pub async fn http_forged_cookies_never_reach_the_store<S: SessionBackend + Clone>(store: S) {
    let counting = Counting::new(store);
    let (router, _) = app(counting.clone(), Key::generate());
    let good = login_as(&router, "alice").await;
    let (name, value) = good.split_once('=').unwrap();
    let mut flipped = value.as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let other_key_cookie = {
        let (other, _) = app(counting.clone(), Key::generate());
        login_as(&other, "mallory").await
    };
    let forged = [
        format!("{name}={}", String::from_utf8(flipped).unwrap()),
        format!("{name}={}", &value[..value.len() - 5]),
        format!("{name}={}", &value[44..]),
        format!("{name}={}", "A".repeat(16 * 1024)),
        format!("{name}=garbage;;==%00<>\\\"x\""),
        format!("{name}="),
        other_key_cookie,
    ];
    let before = counting.calls();
    for cookie in &forged {
        for path in ["/me", "/whoami", "/public"] {
            let r = send(&router, "GET", path, Some(cookie), None).await;
            let want = if path == "/public" {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(r.status, want, "{path} with {:.60}", cookie);
            assert!(r.set_cookie.is_none(), "no new session for a forged cookie");
        }
    }
    assert_eq!(
        counting.calls(),
        before,
        "forged cookies never reach the store"
    );
    assert_eq!(
        send(&router, "GET", "/whoami", Some(&good), None)
            .await
            .status,
        StatusCode::OK
    );
}

pub async fn http_revoked_mid_request_is_401<S: SessionBackend + Clone>(store: S) {
    let (router, state) = app(store.clone(), Key::generate());
    let cookie = login_as(&router, "alice").await;
    let id = id_of(&cookie);
    let slow = {
        let router = router.clone();
        let cookie = cookie.clone();
        tokio::spawn(async move { send(&router, "POST", "/slow", Some(&cookie), None).await })
    };
    // The request has loaded its session; now another request revokes it.
    state.loaded.notified().await;
    assert!(store.revoke("alice", &store.handle(&id)).await.unwrap());
    state.release.notify_one();
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "not a bare 500");
    assert!(
        r.set_cookie.unwrap().contains("Max-Age=0"),
        "cookie cleared"
    );
    assert!(
        store.load_record(&id).await.unwrap().is_none(),
        "not resurrected"
    );
    assert_eq!(
        send(&router, "GET", "/me", Some(&cookie), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

pub async fn http_logout_everywhere<S: SessionBackend + Clone>(store: S) {
    let (router, state) = app(store.clone(), Key::generate());
    let a1 = login_as(&router, "alice").await;
    let a2 = login_as(&router, "alice").await;
    let bob = login_as(&router, "bob").await;
    // A request of a1 is in flight (session loaded) while a2 logs out everywhere.
    let slow = {
        let router = router.clone();
        let a1 = a1.clone();
        tokio::spawn(async move { send(&router, "POST", "/slow", Some(&a1), None).await })
    };
    state.loaded.notified().await;
    let r = send(&router, "POST", "/logout-everywhere", Some(&a2), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    state.release.notify_one();
    assert_eq!(slow.await.unwrap().status, StatusCode::UNAUTHORIZED);
    for c in [&a1, &a2] {
        assert_eq!(
            send(&router, "GET", "/me", Some(c), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        send(&router, "GET", "/me", Some(&bob), None).await.status,
        StatusCode::OK
    );
    assert!(store.list("alice", None).await.unwrap().is_empty());
}

/// Two logins through the same pre-login cookie (a double-clicked button, two tabs), both past
/// reading that session before either binds the user: each gets a session of its own, the
/// pre-login id stays dead, and the index holds both, so "log out everywhere" ends both.
pub async fn http_login_vs_login_from_one_cookie<S: SessionBackend + Clone>(store: S) {
    let (router, state) = app(store.clone(), Key::generate());
    let anon = send(&router, "GET", "/anon", None, None).await.cookie();
    let old_id = id_of(&anon);
    let login = |user: &'static str| {
        let router = router.clone();
        let anon = anon.clone();
        tokio::spawn(async move {
            send(
                &router,
                "POST",
                "/slow-login",
                Some(&anon),
                Some(json!({ "user": user })),
            )
            .await
        })
    };
    let (first, second) = (login("alice"), login("alice"));
    // Both have loaded the pre-login session; now both bind and save.
    state.logins_loaded.acquire_many(2).await.unwrap().forget();
    state.logins_release.add_permits(2);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(
        (first.status, second.status),
        (StatusCode::OK, StatusCode::OK)
    );
    let (a, b) = (first.cookie(), second.cookie());
    assert_ne!(id_of(&a), id_of(&b), "two sessions, not one shared");
    assert!(
        store.load_record(&old_id).await.unwrap().is_none(),
        "the pre-login id stays dead"
    );
    assert_eq!(
        send(&router, "GET", "/whoami", Some(&anon), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    for c in [&a, &b] {
        assert_eq!(
            send(&router, "GET", "/whoami", Some(c), None).await.status,
            StatusCode::OK
        );
    }
    let listed = store.list("alice", None).await.unwrap();
    assert_eq!(listed.len(), 2, "no lost index entry: {listed:?}");
    let r = send(&router, "POST", "/logout-everywhere", Some(&a), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for c in [&a, &b] {
        assert_eq!(
            send(&router, "GET", "/whoami", Some(c), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(store.list("alice", None).await.unwrap().is_empty());
}

/// Instantiates every HTTP check for one store expression: a concrete store, or
/// `erased <store as Arc<dyn SessionBackend>>` (every check but the drop-in one, which needs a
/// `tower-sessions` `SessionStore`).
#[macro_export]
macro_rules! http_checks {
    (@each $attrs:tt $store:expr; $($check:ident),*) => {
        $( $crate::http_checks!(@one $attrs $store; $check); )*
    };
    (@one [$(#[$m:meta])*] $store:expr; $check:ident) => {
        $(#[$m])*
        async fn $check() {
            conformance::http::$check($store).await;
        }
    };
    (erased $attrs:tt $store:expr) => {
        $crate::http_checks!(@each $attrs $store;
            http_cookie_defaults, http_fixation, http_logout_and_list,
            http_forged_cookies_never_reach_the_store, http_revoked_mid_request_is_401,
            http_logout_everywhere, http_login_vs_login_from_one_cookie,
            http_secure_switch_for_development,
            http_login_as_another_user_starts_empty, http_logout_others);
    };
    ($attrs:tt $store:expr) => {
        $crate::http_checks!(erased $attrs $store);
        $crate::http_checks!(@one $attrs $store; http_drop_in_for_session_manager_layer);
    };
}

pub async fn http_secure_switch_for_development<S: SessionBackend + Clone>(store: S) {
    use redtower_session::SessionLayer;
    let router = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|s: redtower_session::tower_sessions::Session| async move {
                s.insert("n", 1).await.unwrap();
            }),
        )
        .layer(SessionLayer::new(store, Key::generate()).secure(false));
    let c = send(&router, "GET", "/", None, None)
        .await
        .set_cookie
        .unwrap();
    assert!(!c.contains("Secure"), "{c}");
    assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax"), "{c}");
}

/// tower-sessions' own expectations of a store, through its plain `SessionManagerLayer`.
pub async fn http_drop_in_for_session_manager_layer<
    S: redtower_session::tower_sessions::SessionStore + Clone,
>(
    store: S,
) {
    use axum::routing::get;
    use redtower_session::tower_sessions::{Session, SessionManagerLayer};
    let router = axum::Router::new()
        .route(
            "/insert",
            get(|s: Session| async move { s.insert("foo", 42).await.unwrap() }),
        )
        .route(
            "/get",
            get(|s: Session| async move { format!("{:?}", s.get::<i32>("foo").await.unwrap()) }),
        )
        .route("/noop", get(|| async {}))
        .route(
            "/cycle",
            get(|s: Session| async move { s.cycle_id().await.unwrap() }),
        )
        .route(
            "/flush",
            get(|s: Session| async move { s.flush().await.unwrap() }),
        )
        .layer(SessionManagerLayer::new(store).with_secure(false));
    assert!(
        send(&router, "GET", "/noop", None, None)
            .await
            .set_cookie
            .is_none()
    );
    let c = send(&router, "GET", "/insert", None, None).await.cookie();
    let r = send(&router, "GET", "/get", Some(&c), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie.is_none(), "reads write no cookie");
    assert_eq!(r.text, "Some(42)");
    for bogus in ["id=bogus", "id=AAAAAAAAAAAAAAAAAAAAAA"] {
        let r = send(&router, "GET", "/insert", Some(bogus), None).await;
        assert_ne!(r.cookie(), bogus, "an unknown id gets a new session");
    }
    let cycled = send(&router, "GET", "/cycle", Some(&c), None)
        .await
        .cookie();
    assert_ne!(cycled, c);
    assert_eq!(
        send(&router, "GET", "/get", Some(&cycled), None).await.text,
        "Some(42)"
    );
    assert_eq!(
        send(&router, "GET", "/get", Some(&c), None).await.text,
        "None",
        "the old id is dead"
    );
    let r = send(&router, "GET", "/flush", Some(&cycled), None).await;
    assert!(r.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(
        send(&router, "GET", "/get", Some(&cycled), None).await.text,
        "None"
    );
}

/// Anonymous -> logged in keeps the session data; logging in as another user from a session
/// bound to someone else starts from empty data; logging in again as the same user keeps it.
pub async fn http_login_as_another_user_starts_empty<S: SessionBackend + Clone>(store: S) {
    let (router, _) = app(store, Key::generate());
    let login = |cookie: String, user: &'static str| {
        let router = router.clone();
        async move {
            let r = send(
                &router,
                "POST",
                "/login",
                Some(&cookie),
                Some(json!({"user": user})),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK);
            r.cookie()
        }
    };
    let r = send(&router, "GET", "/anon", None, None).await;
    let anon = r.cookie();
    assert_eq!(
        send(&router, "GET", "/anon", Some(&anon), None).await.text,
        "2"
    );
    let alice = login(anon, "alice").await;
    assert_eq!(
        send(&router, "GET", "/anon", Some(&alice), None).await.text,
        "3",
        "anonymous data survives login"
    );
    for visits in [1, 2] {
        let r = send(&router, "GET", "/me", Some(&alice), None).await;
        assert_eq!(r.json, json!({"user": "alice", "visits": visits}));
    }
    let alice_again = login(alice, "alice").await;
    let r = send(&router, "GET", "/me", Some(&alice_again), None).await;
    assert_eq!(
        r.json,
        json!({"user": "alice", "visits": 3}),
        "same user: data kept"
    );

    let bob = login(alice_again.clone(), "bob").await;
    let r = send(&router, "GET", "/me", Some(&bob), None).await;
    assert_eq!(
        r.json,
        json!({"user": "bob", "visits": 1}),
        "nothing of alice's session carries over to bob"
    );
    assert_eq!(
        send(&router, "GET", "/anon", Some(&bob), None).await.text,
        "1"
    );
    let r = send(&router, "GET", "/whoami", Some(&alice_again), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the old id is dead");
}

/// `POST /logout-others`: every other session of the user ends, the current one stays usable.
pub async fn http_logout_others<S: SessionBackend + Clone>(store: S) {
    let (router, _) = app(store.clone(), Key::generate());
    let laptop = login_as(&router, "alice").await;
    let phone = login_as(&router, "alice").await;
    let tablet = login_as(&router, "alice").await;
    let bob = login_as(&router, "bob").await;
    let r = send(&router, "POST", "/logout-others", Some(&laptop), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for other in [&phone, &tablet] {
        let r = send(&router, "GET", "/whoami", Some(other), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    for visits in [1, 2] {
        let r = send(&router, "GET", "/me", Some(&laptop), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.json["visits"],
            json!(visits),
            "the current session still saves"
        );
    }
    let r = send(&router, "GET", "/me/sessions", Some(&laptop), None).await;
    let list = r.json.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["current"], json!(true));
    assert_eq!(
        send(&router, "GET", "/whoami", Some(&bob), None)
            .await
            .status,
        StatusCode::OK
    );
    let r = send(&router, "POST", "/logout-others", None, None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "needs a logged-in session"
    );
    let _ = id_of(&laptop);
}
