//! A test app with the example app's session routes, generic over the store.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_trait::async_trait;
use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, Request, Response, StatusCode},
    response::IntoResponse,
    routing::{delete, get, post},
};
use redtower_session::{
    AuthSession, SessionBackend, SessionInfo, SessionLayer, SessionMeta, UserSessions, bind_user,
    status_for,
    tower_sessions::{Session, cookie::Key},
};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt as _;
use tower_sessions_core::session::{Id, Record};

#[derive(Clone)]
pub struct AppState<S> {
    pub store: S,
    /// For deterministic races: `/slow` signals `loaded` after reading the session, then
    /// waits for `release` before writing.
    pub loaded: Arc<Notify>,
    pub release: Arc<Notify>,
    /// For login ∥ login: `/slow-login` adds a permit to `logins_loaded` once it has read the
    /// pre-login session, then takes one from `logins_release` before binding the user.
    pub logins_loaded: Arc<Semaphore>,
    pub logins_release: Arc<Semaphore>,
}

async fn login<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    session: Session,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response<Body> {
    let user = body["user"].as_str().unwrap_or_default().to_owned();
    if user.is_empty() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let meta = SessionMeta::from_headers(&headers, Some("127.0.0.1".parse().unwrap()));
    if let Err(e) = bind_user(&session, &user, meta).await {
        return status_for(&e).into_response();
    }
    // Create now, so the response can name the new session.
    if let Err(e) = session.save().await {
        return status_for(&e).into_response();
    }
    let handle = session.id().map(|id| st.store.handle(&id));
    Json(json!({ "user": user, "handle": handle })).into_response()
}

/// `/login`, held between reading the pre-login session and binding the user.
async fn slow_login<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    session: Session,
    headers: HeaderMap,
    body: Json<Value>,
) -> Response<Body> {
    if let Err(e) = session.get::<Value>("anon").await {
        return status_for(&e).into_response();
    }
    st.logins_loaded.add_permits(1);
    st.logins_release.acquire().await.unwrap().forget();
    login(State(st), session, headers, body).await
}

async fn me(auth: AuthSession) -> Response<Body> {
    let visits: u64 = match auth.session.get("visits").await {
        Ok(v) => v.unwrap_or(0) + 1,
        Err(e) => return status_for(&e).into_response(),
    };
    if let Err(e) = auth.session.insert("visits", visits).await {
        return status_for(&e).into_response();
    }
    Json(json!({ "user": auth.user, "visits": visits })).into_response()
}

async fn whoami(auth: AuthSession) -> String {
    auth.user
}

async fn anon_visit(session: Session) -> Response<Body> {
    let n: u64 = session.get("anon").await.ok().flatten().unwrap_or(0) + 1;
    match session.insert("anon", n).await {
        Ok(()) => n.to_string().into_response(),
        Err(e) => status_for(&e).into_response(),
    }
}

async fn public() -> &'static str {
    "hello"
}

async fn logout(auth: AuthSession) -> StatusCode {
    match auth.session.flush().await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(e) => status_for(&e),
    }
}

async fn sessions<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    auth: AuthSession,
) -> Result<Json<Vec<SessionInfo>>, StatusCode> {
    st.store
        .list(&auth.user, auth.session.id())
        .await
        .map(Json)
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
}

async fn revoke<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    auth: AuthSession,
    Path(handle): Path<String>,
) -> StatusCode {
    match st.store.revoke(&auth.user, &handle).await {
        Ok(true) => StatusCode::NO_CONTENT,
        Ok(false) => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn logout_everywhere<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    auth: AuthSession,
) -> StatusCode {
    match st.store.revoke_all(&auth.user).await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn logout_others<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    auth: AuthSession,
) -> StatusCode {
    let Some(current) = auth.session.id() else {
        return StatusCode::UNAUTHORIZED;
    };
    match st.store.revoke_others(&auth.user, &current).await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn slow<S: UserSessions + Clone>(
    State(st): State<AppState<S>>,
    auth: AuthSession,
) -> StatusCode {
    st.loaded.notify_one();
    st.release.notified().await;
    match auth.session.insert("late", true).await {
        Ok(()) => StatusCode::OK,
        Err(e) => status_for(&e),
    }
}

pub fn app<S: SessionBackend + Clone>(store: S, key: Key) -> (Router, AppState<S>) {
    app_with(store, key, |layer| layer)
}

/// [`app`] with the session layer configured by `configure`.
pub fn app_with<S: SessionBackend + Clone>(
    store: S,
    key: Key,
    configure: impl FnOnce(SessionLayer) -> SessionLayer,
) -> (Router, AppState<S>) {
    let state = AppState {
        store: store.clone(),
        loaded: Arc::new(Notify::new()),
        release: Arc::new(Notify::new()),
        logins_loaded: Arc::new(Semaphore::new(0)),
        logins_release: Arc::new(Semaphore::new(0)),
    };
    let router = Router::new()
        .route("/login", post(login::<S>))
        .route("/me", get(me))
        .route("/whoami", get(whoami))
        .route("/anon", get(anon_visit))
        .route("/public", get(public))
        .route("/logout", post(logout))
        .route("/me/sessions", get(sessions::<S>))
        .route("/me/sessions/{handle}", delete(revoke::<S>))
        .route("/logout-everywhere", post(logout_everywhere::<S>))
        .route("/logout-others", post(logout_others::<S>))
        .route("/slow", post(slow::<S>))
        .route("/slow-login", post(slow_login::<S>))
        .layer(configure(SessionLayer::new(store, key)))
        .with_state(state.clone());
    (router, state)
}

/// A response, its status, its `Set-Cookie` (if any) and its JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub set_cookie: Option<String>,
    pub retry_after: Option<String>,
    pub json: Value,
    pub text: String,
}

impl Reply {
    /// `name=value` of the Set-Cookie header.
    pub fn cookie(&self) -> String {
        self.set_cookie
            .as_deref()
            .expect("a Set-Cookie header")
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }
}

pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("user-agent", "test-agent/1");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let status = parts.status;
    let header = |n: &str| parts.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    let set_cookie = header("set-cookie");
    let retry_after = header("retry-after");
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Reply {
        text,
        status,
        set_cookie,
        retry_after,
        json,
    }
}

pub async fn login_as(app: &Router, user: &str) -> String {
    let r = send(app, "POST", "/login", None, Some(json!({ "user": user }))).await;
    assert_eq!(r.status, StatusCode::OK, "login");
    r.cookie()
}

/// The session id inside a signed cookie `name=<44-char MAC><22-char id>`.
pub fn id_of(cookie: &str) -> Id {
    let value = cookie.split_once('=').unwrap().1;
    Id::from_str(&value[value.len() - 22..]).unwrap()
}

/// A store wrapper counting every call that reaches the store.
#[derive(Debug, Clone)]
pub struct Counting<S> {
    pub inner: S,
    pub calls: Arc<AtomicUsize>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: SessionBackend + Clone> SessionBackend for Counting<S> {
    async fn create_record(&self, r: &mut Record) -> redtower_session::Result<()> {
        self.hit();
        self.inner.create_record(r).await
    }
    async fn save_record(&self, r: &Record) -> redtower_session::Result<()> {
        self.hit();
        self.inner.save_record(r).await
    }
    async fn load_record(&self, id: &Id) -> redtower_session::Result<Option<Record>> {
        self.hit();
        self.inner.load_record(id).await
    }
    async fn delete_record(&self, id: &Id) -> redtower_session::Result<()> {
        self.hit();
        self.inner.delete_record(id).await
    }
    fn connections(&self) -> u64 {
        self.inner.connections()
    }
    fn has_connected(&self) -> bool {
        self.inner.has_connected()
    }
}

#[async_trait]
impl<S: UserSessions + Clone> UserSessions for Counting<S> {
    fn handle(&self, id: &Id) -> String {
        self.inner.handle(id)
    }
    async fn list(
        &self,
        user: &str,
        current: Option<Id>,
    ) -> redtower_session::Result<Vec<SessionInfo>> {
        self.hit();
        self.inner.list(user, current).await
    }
    async fn revoke(&self, user: &str, handle: &str) -> redtower_session::Result<bool> {
        self.hit();
        self.inner.revoke(user, handle).await
    }
    async fn revoke_all(&self, user: &str) -> redtower_session::Result<u64> {
        self.hit();
        self.inner.revoke_all(user).await
    }
    async fn revoke_others(&self, user: &str, current: &Id) -> redtower_session::Result<u64> {
        self.hit();
        self.inner.revoke_others(user, current).await
    }
    fn watch(&self, id: &Id) -> redtower_session::Result<redtower_session::SessionWatch> {
        self.inner.watch(id)
    }
}
