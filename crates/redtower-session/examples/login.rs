//! Sessions with login, logout and "log out everywhere" (every session of the user ends, on
//! every device and instance). In process, or over Redis with `REDIS_URL` and the same
//! `SESSION_SECRET` (64+ characters) on every instance.
//!
//! `cargo run -p redtower-session --example login`, then `curl -c jar -d alice
//! localhost:3000/login`, `curl -b jar localhost:3000/me`, `curl -b jar -X POST
//! localhost:3000/logout-everywhere`. `ADDR`: the listen address.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get, routing::post};
use redtower_client::{Redis, RedisConfig};
use redtower_session::tower_sessions::{Session, cookie::Key};
use redtower_session::{AuthSession, MemoryStore, RedisStore, SessionBackend, SessionLayer};
use redtower_session::{SessionMeta, bind_user, status_for};

type Store = Arc<dyn SessionBackend>;

async fn login(session: Session, user: String) -> Result<String, StatusCode> {
    let user = user.trim(); // check a password here
    let bound = bind_user(&session, user, SessionMeta::new()).await;
    bound.map_err(|e| status_for(&e))?;
    Ok(format!("logged in as {user}\n"))
}

async fn logout(auth: AuthSession) -> Result<StatusCode, StatusCode> {
    auth.session.flush().await.map_err(|e| status_for(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logout_everywhere(
    State(store): State<Store>,
    auth: AuthSession,
) -> Result<String, StatusCode> {
    let ended = store.revoke_all(&auth.user).await;
    let ended = ended.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(format!("{ended} sessions ended\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = match std::env::var("SESSION_SECRET") {
        Ok(secret) => Key::try_from(secret.as_bytes())?,
        Err(_) => Key::generate(), // in process: sessions end with it
    };
    let store: Store = match std::env::var("REDIS_URL") {
        // Signed cookies never use the key's encryption half: it keys the store's HMAC of ids.
        Ok(_) => Arc::new(RedisStore::new(
            Redis::new(RedisConfig::from_env()?)?,
            key.encryption(),
        )?),
        Err(_) => Arc::new(MemoryStore::new()),
    };
    let app = Router::new()
        .route("/login", post(login))
        .route(
            "/me",
            get(|auth: AuthSession| async move { format!("you are {}\n", auth.user) }),
        )
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        // `secure(false)`: plain HTTP on localhost; keep the default behind TLS.
        .layer(SessionLayer::new(store.clone(), key).secure(false))
        .with_state(store);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
