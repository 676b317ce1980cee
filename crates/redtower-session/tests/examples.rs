//! The `login` example, run as a program over HTTP: in process, and over a test Redis (two
//! instances sharing the sessions).

use redtower_testkit::{Example, shared_url, unique_prefix};

const PACKAGE: &str = env!("CARGO_PKG_NAME");

/// Logs in as `user` on `example`, returning the session cookie.
fn login(example: &Example, user: &str) -> String {
    let res = example.post("/login", &[], user.as_bytes());
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body, format!("logged in as {user}\n"));
    res.cookie().expect("a session cookie")
}

/// `GET /me` with `cookie`: its status.
fn me(example: &Example, cookie: &str) -> u16 {
    example.get("/me", &[("cookie", cookie)]).status
}

/// Login, a session that works, logout; then two devices and "log out everywhere", seen on
/// `other` (the same instance in process, another one over Redis).
fn login_logout_everywhere(example: &Example, other: &Example) {
    assert_eq!(example.get("/me", &[]).status, 401);
    let cookie = login(example, "alice");
    let res = example.get("/me", &[("cookie", &cookie)]);
    assert_eq!((res.status, res.body.as_str()), (200, "you are alice\n"));
    assert_eq!(
        example.post("/logout", &[("cookie", &cookie)], b"").status,
        204
    );
    assert_eq!(me(example, &cookie), 401);

    let laptop = login(example, "bob");
    let phone = login(other, "bob");
    assert_eq!(me(other, &laptop), 200);
    let res = example.post("/logout-everywhere", &[("cookie", &laptop)], b"");
    assert_eq!((res.status, res.body.as_str()), (200, "2 sessions ended\n"));
    assert_eq!(me(other, &phone), 401);
    assert_eq!(me(example, &laptop), 401);
}

#[test]
fn in_process_login_logout_and_log_out_everywhere() {
    let example = Example::start(PACKAGE, "login", &[]);
    login_logout_everywhere(&example, &example);
    assert!(example.interrupt().success());
}

#[test]
fn over_redis_log_out_everywhere_ends_sessions_on_every_instance() {
    let url = shared_url();
    let prefix = unique_prefix("session-example");
    let secret = "s".repeat(64);
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("SESSION_SECRET", secret.as_str()),
    ];
    let one = Example::start(PACKAGE, "login", &env);
    let two = Example::start(PACKAGE, "login", &env);
    login_logout_everywhere(&one, &two);
    assert!(one.interrupt().success());
    assert!(two.interrupt().success());
}
