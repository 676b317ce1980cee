//! `POST /login` (`{"user": "..."}` or any body: logs in as `alice`) and `GET /whoami`
//! (`{"user"}` or 401) through `tower-sessions` 0.14 + `tower-sessions-redis-store` 0.16, set
//! up like redtower's session layer: a 30-minute inactivity expiry refreshed on every request
//! (`with_always_save`, which is how tower-sessions keeps an idle timeout alive).

use axum::{
    Json, Router,
    http::StatusCode,
    routing::{get, post},
};
use redtower_baselines::{Error, port, redis, serve};
use serde_json::{Value, json};
use tower_sessions_014::{Expiry, Session, SessionManagerLayer};

async fn login(session: Session) -> Result<Json<Value>, StatusCode> {
    session
        .insert("user", "alice")
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(json!({"user": "alice"})))
}

async fn whoami(session: Session) -> Result<Json<Value>, StatusCode> {
    match session.get::<String>("user").await {
        Ok(Some(user)) => Ok(Json(json!({ "user": user }))),
        Ok(None) => Err(StatusCode::UNAUTHORIZED),
        Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = port()?;
    let client = redis().await?.dedicated()?;
    redtower_client::fred::interfaces::ClientLike::wait_for_connect(&client).await?;
    let store = tower_sessions_redis_store::RedisStore::new(client);
    let app = Router::new()
        .route("/login", post(login))
        .route("/whoami", get(whoami))
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_always_save(true)
                .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30))),
        );
    serve(app, port).await
}
