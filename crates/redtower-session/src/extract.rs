//! [`AuthSession`]: an extractor for handlers that need a logged-in user.

use axum_core::response::{IntoResponse, Response};
use http::{StatusCode, request::Parts};
use tower_sessions_core::{Session, session, session_store};

use crate::{current_user, outcome};

/// A logged-in session: the [`Session`] plus the user [`bind_user`](crate::bind_user) bound
/// to it. Rejects with 401 when there is no user (no cookie, or a session that is missing,
/// expired or revoked), 503 when the store is unreachable.
///
/// ```
/// use redtower_session::AuthSession;
///
/// async fn me(auth: AuthSession) -> String {
///     format!("hello {}", auth.user)
/// }
/// ```
#[derive(Debug, Clone)]
pub struct AuthSession {
    /// The session.
    pub session: Session,
    /// The user id it is bound to.
    pub user: String,
}

/// Why [`AuthSession`] was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionRejection {
    /// No `Session` extension: the session layer is not installed.
    MissingLayer,
    /// No logged-in session.
    Unauthenticated,
    /// The store could not be reached.
    Unavailable,
    /// The store failed otherwise.
    Failed,
}

impl SessionRejection {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingLayer | Self::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response body.
    pub fn body_text(&self) -> &'static str {
        match self {
            Self::MissingLayer => "Can't extract session. Is `SessionLayer` enabled?",
            Self::Unauthenticated => "not logged in",
            Self::Unavailable => "session store unavailable",
            Self::Failed => "session store error",
        }
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        tracing::trace!(target: "redtower::session::rejection", status = %self.status(), body = self.body_text(), rejection_type = ?self);
        let mut res = (self.status(), self.body_text()).into_response();
        if self == Self::Unavailable {
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        res
    }
}

/// The status a handler should answer when a [`Session`] method fails: 503 when the store
/// (Redis) could not be reached, 500 otherwise (under [`SessionLayer`](crate::SessionLayer),
/// a 500 caused by a session revoked mid-request becomes 401 and clears the cookie).
///
/// ```
/// use http::StatusCode;
/// use redtower_session::{status_for, tower_sessions::session_store};
///
/// let down = session_store::Error::Backend("redis unavailable: timeout".into());
/// assert_eq!(status_for(&down.into()), StatusCode::SERVICE_UNAVAILABLE);
/// let bug = session_store::Error::Decode("bad json".into());
/// assert_eq!(status_for(&bug.into()), StatusCode::INTERNAL_SERVER_ERROR);
/// ```
pub fn status_for(err: &session::Error) -> StatusCode {
    if outcome::current() & outcome::OUTAGE != 0 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match err {
        session::Error::Store(session_store::Error::Backend(msg))
            if msg.starts_with("redis unavailable") =>
        {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for AuthSession {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionRejection::MissingLayer)?;
        match current_user(&session).await {
            Ok(Some(user)) => Ok(Self { session, user }),
            Ok(None) => Err(SessionRejection::Unauthenticated),
            Err(err) if status_for(&err) == StatusCode::SERVICE_UNAVAILABLE => {
                Err(SessionRejection::Unavailable)
            }
            Err(err) => {
                tracing::error!(target: "redtower::session", error = %err, "session store failed");
                Err(SessionRejection::Failed)
            }
        }
    }
}
