//! Benchmark probes: routes that exist for the load harness (`cargo xtask bench`), not for
//! users. They isolate what each layer costs:
//!
//! * `GET /plain`: no layer at all, not even the session layer: the ceiling every other
//!   route is compared with;
//! * `GET /whoami`: reads the session and nothing else (no write, no other layer);
//! * `GET /api/stacked`: the request-path layers of a real API route on top of each other:
//!   the rate limit (its own `stacked` policy at `API_RATE_LIMIT`), then a login check that
//!   reads the session, then a per-user response cache in front of the handler;
//! * `GET /stats`: how often the "database" behind `/products/featured` was called on this
//!   instance, so the harness can tell the cache's hit rate.

use axum::{
    Json, Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use redtower_cache::Credentials;
use redtower_session::tower_sessions::Session;
use serde_json::{Value, json};

use crate::{BuildError, Services, error::ApiError, sessions::session_error};

/// `GET /plain`, served outside every layer of the app (merged after the session layer).
pub(crate) fn plain_router() -> Router {
    Router::new().route("/plain", get(plain))
}

/// `GET /stats`, which reads no session.
pub(crate) fn public_routes() -> Router<Services> {
    Router::new().route("/stats", get(stats))
}

/// `GET /whoami` and `GET /api/stacked`, to be served under the session layer.
pub(crate) fn session_routes(services: &Services) -> Result<Router<Services>, BuildError> {
    let limit = services
        .limits
        .per_client("stacked", services.config().api_rate)?;
    let cache = services
        .cache
        .layer(std::time::Duration::from_secs(60))
        // The answer names the user: one entry per session.
        .credentials(Credentials::PerUser)
        .route_name("/api/stacked");
    let stacked = Router::new()
        .route("/api/stacked", get(stacked))
        .route_layer(cache)
        .route_layer(middleware::from_fn(require_login))
        .route_layer(limit);
    Ok(Router::new().route("/whoami", get(whoami)).merge(stacked))
}

async fn stats(State(services): State<Services>) -> Json<Value> {
    Json(json!({ "featured_db_calls": services.cache.featured_db_calls() }))
}

async fn plain() -> Json<Value> {
    Json(json!({"hello": "world"}))
}

async fn user_of(session: &Session) -> Result<String, ApiError> {
    redtower_session::current_user(session)
        .await
        .map_err(|e| session_error(&e))?
        .ok_or_else(ApiError::unauthorized)
}

/// `{"user": "..."}` for a logged-in session, 401 otherwise. Reads, never writes.
async fn whoami(session: Session) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "user": user_of(&session).await? })))
}

/// 401 unless the session is logged in.
async fn require_login(session: Session, req: Request, next: Next) -> Response {
    match user_of(&session).await {
        Ok(_) => next.run(req).await,
        Err(error) => error.into_response(),
    }
}

/// The user's dashboard: who they are and the featured products.
async fn stacked(session: Session) -> Result<Json<Value>, ApiError> {
    let user = user_of(&session).await?;
    Ok(Json(json!({
        "user": user,
        "featured": [
            {"id": 1, "name": "Rust mug", "price_cents": 1200},
            {"id": 2, "name": "Ferris plush", "price_cents": 2400},
        ],
    })))
}
