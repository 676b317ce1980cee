//! The axum SSE endpoint: [`SseEndpoint`].

use std::{
    fmt,
    ops::RangeInclusive,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{FromRequestParts, RawPathParams, Request},
    response::{IntoResponse, Response},
    routing::MethodRouter,
};
use http::{HeaderValue, StatusCode, header, request::Parts};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Access, AllowAll, Channel, ChannelAuthorizer, PubSub, PublishToken, auth::Named};

mod cursor;
pub(crate) mod frame;
mod open;
mod rejection;
mod stream;

pub(crate) use cursor::Cursor;
use cursor::parse_cursors;
pub use open::{OnOpen, StreamOptions};
pub use rejection::SseRejection;

pub(crate) const TARGET: &str = "redtower::pubsub::sse";

/// The JavaScript client helper (also in `assets/client.js`): serve it to your pages.
pub const CLIENT_JS: &str = include_str!("../../assets/client.js");

/// An axum handler that streams channels to browsers with Server-Sent Events.
///
/// Serve it on a route with a `{channel}` path parameter (`GET /events/{channel}`), or on one
/// without, where the channels come from the query (`GET /events?channel=a&channel=b`, for
/// browsers' limit of 6 HTTP/1.1 connections per origin). Per request it:
///
/// 1. validates every channel name (`400 Bad Request` otherwise), and asks the
///    [`ChannelAuthorizer`] for each (`403 Forbidden` when one is refused), before it
///    subscribes to anything;
/// 2. subscribes (`503 Service Unavailable` with `Retry-After` when the store is down), then
///    resumes from the `Last-Event-ID` header or the `last_event_id` query parameter: the
///    missed events come from the history, then live ones follow, without gap or duplicate;
/// 3. when the history cannot cover the gap (trimmed, expired, new epoch), sends
///    `event: resync` whose `id:` is the newest event id, so the page reloads its state and a
///    later reconnect resumes from there; the stream then goes on live;
/// 4. catches a slow client that lagged behind the live broadcast up from the history, and
///    only when the history cannot cover it sends `resync` and ends the stream; slow clients
///    never slow the others down;
/// 5. sends a random `retry:` hint first, a keep-alive comment after every
///    [`keep_alive`](Self::keep_alive) of silence, and ends the stream after a randomized
///    [`max_lifetime`](Self::max_lifetime) or at once on [`shutdown`](Self::shutdown).
///
/// Responses carry `Content-Type: text/event-stream`, `Cache-Control: no-cache` and
/// `X-Accel-Buffering: no` (nginx would buffer otherwise). Event ids are `<epoch>:<offset>`;
/// with several channels an id is the list of every channel's position, comma-separated in
/// query order (`-` for none yet), and `data` is `{"channel": "<name>", "data": <event>}`.
///
/// Cloning is cheap. See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct SseEndpoint {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pubsub: PubSub,
    authorizer: Named,
    pub(crate) keep_alive: Duration,
    pub(crate) retry: RangeInclusive<Duration>,
    pub(crate) max_lifetime: Duration,
    pub(crate) shutdown: CancellationToken,
    /// Watches `shutdown` for the streams; made on the first request.
    pub(crate) shutdown_signal: OnceLock<Arc<stream::ShutdownSignal>>,
    pub(crate) max_replay: usize,
    pub(crate) max_replay_bytes: usize,
    max_channels: usize,
    max_connections: usize,
    max_connections_per_client: usize,
    on_open: Arc<dyn OnOpen>,
    connections: Arc<open::Connections>,
}

impl fmt::Debug for SseEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEndpoint")
            .field("pubsub", &self.inner.pubsub)
            .field("keep_alive", &self.inner.keep_alive)
            .field("retry", &self.inner.retry)
            .field("max_lifetime", &self.inner.max_lifetime)
            .field("max_replay", &self.inner.max_replay)
            .field("max_replay_bytes", &self.inner.max_replay_bytes)
            .field("max_channels", &self.inner.max_channels)
            .field("max_connections", &self.inner.max_connections)
            .field(
                "max_connections_per_client",
                &self.inner.max_connections_per_client,
            )
            .finish_non_exhaustive()
    }
}

/// The longest keep-alive interval and stream lifetime: timers computed from them stay
/// within what the clock can represent.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

impl SseEndpoint {
    /// An endpoint streaming from `pubsub`, allowing every channel ([`AllowAll`]).
    pub fn new(pubsub: PubSub) -> Self {
        Self {
            inner: Arc::new(Inner {
                pubsub,
                authorizer: Named(Arc::new(AllowAll)),
                keep_alive: Duration::from_secs(15),
                retry: Duration::from_secs(2)..=Duration::from_secs(5),
                max_lifetime: Duration::from_secs(15 * 60),
                shutdown: CancellationToken::new(),
                shutdown_signal: OnceLock::new(),
                max_replay: 500,
                max_replay_bytes: 512 * 1024,
                max_channels: 16,
                max_connections: 10_000,
                max_connections_per_client: 32,
                on_open: Arc::new(()),
                connections: Arc::default(),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                f(inner);
                // The token may have changed: watch the new one.
                inner.shutdown_signal = OnceLock::new();
            }
            None => {
                let old = &self.inner;
                let mut inner = Inner {
                    pubsub: old.pubsub.clone(),
                    authorizer: Named(old.authorizer.0.clone()),
                    keep_alive: old.keep_alive,
                    retry: old.retry.clone(),
                    max_lifetime: old.max_lifetime,
                    shutdown: old.shutdown.clone(),
                    shutdown_signal: OnceLock::new(),
                    max_replay: old.max_replay,
                    max_replay_bytes: old.max_replay_bytes,
                    max_channels: old.max_channels,
                    max_connections: old.max_connections,
                    max_connections_per_client: old.max_connections_per_client,
                    on_open: old.on_open.clone(),
                    // Clones count their streams together.
                    connections: old.connections.clone(),
                };
                f(&mut inner);
                self.inner = Arc::new(inner);
            }
        }
        self
    }

    /// Who may subscribe to which channel. Defaults to [`AllowAll`].
    #[must_use]
    pub fn authorizer(self, authorizer: impl ChannelAuthorizer) -> Self {
        let authorizer: Arc<dyn ChannelAuthorizer> = Arc::new(authorizer);
        self.with(|i| i.authorizer = Named(authorizer))
    }

    /// Silence after which a keep-alive comment is sent. Defaults to 15 seconds; at most a
    /// day.
    #[must_use]
    pub fn keep_alive(self, interval: Duration) -> Self {
        self.with(|i| i.keep_alive = interval.clamp(Duration::from_millis(1), MAX_TIMER))
    }

    /// The range the per-connection random `retry:` hint (the browser's reconnect delay) is
    /// drawn from, so that clients of a restarted server do not all come back at once.
    /// Defaults to 2 to 5 seconds.
    #[must_use]
    pub fn retry(self, min: Duration, max: Duration) -> Self {
        self.with(|i| i.retry = min.min(max)..=max.max(min))
    }

    /// The longest a stream lives; each one ends after a random time between two thirds of it
    /// and all of it, and the browser reconnects (and resumes). This spreads reconnects and
    /// moves clients onto new instances after a deploy. Defaults to 15 minutes; at most a
    /// day.
    #[must_use]
    pub fn max_lifetime(self, lifetime: Duration) -> Self {
        self.with(|i| i.max_lifetime = lifetime.clamp(Duration::from_millis(1), MAX_TIMER))
    }

    /// A token whose cancellation ends every open stream at once, so that axum's graceful
    /// shutdown does not wait for them. Defaults to a token that is never cancelled.
    ///
    /// ```
    /// use redtower_pubsub::{CancellationToken, PubSub, SseEndpoint};
    ///
    /// let shutdown = CancellationToken::new();
    /// let sse = SseEndpoint::new(PubSub::memory()).shutdown(shutdown.clone());
    /// // axum::serve(listener, app)
    /// //     .with_graceful_shutdown(async move { ctrl_c().await; shutdown.cancel() })
    /// # let _ = sse;
    /// ```
    #[must_use]
    pub fn shutdown(self, token: CancellationToken) -> Self {
        self.with(|i| i.shutdown = token)
    }

    /// The most events replayed to resume one channel; a client further behind gets
    /// `resync`. Defaults to 500.
    #[must_use]
    pub fn max_replay(self, n: usize) -> Self {
        self.with(|i| i.max_replay = n.max(1))
    }

    /// The most bytes of event data replayed when one stream opens, over all its channels;
    /// a client further behind gets `resync`. Nothing is read from the history for a cursor
    /// that cannot be served (another epoch, too many events missing). Defaults to 512 KiB.
    #[must_use]
    pub fn max_replay_bytes(self, bytes: usize) -> Self {
        self.with(|i| i.max_replay_bytes = bytes.max(1))
    }

    /// The most channels one request may ask for (`400` beyond). Defaults to 16.
    #[must_use]
    pub fn max_channels(self, n: usize) -> Self {
        self.with(|i| i.max_channels = n.max(1))
    }

    /// The most streams open at once through this endpoint and its clones (`503 Service
    /// Unavailable` with `Retry-After` beyond). Defaults to 10,000.
    #[must_use]
    pub fn max_connections(self, n: usize) -> Self {
        self.with(|i| i.max_connections = n.max(1))
    }

    /// The most streams open at once for one client key ([`StreamOptions::client_key`], from
    /// the [`on_open`](Self::on_open) hook: a user id or an IP address); `429 Too Many
    /// Requests` with `Retry-After` beyond. Streams without a key only count toward
    /// [`max_connections`](Self::max_connections). Defaults to 32.
    #[must_use]
    pub fn max_connections_per_client(self, n: usize) -> Self {
        self.with(|i| i.max_connections_per_client = n.max(1))
    }

    /// A hook run for every stream after its channels are authorized: it returns the
    /// stream's [`StreamOptions`] (a future that resolves when the reader's access ends, the
    /// client key for the per-client limit). Defaults to `()` (nothing).
    ///
    /// ```
    /// use redtower_pubsub::{Channel, PubSub, SseEndpoint, StreamOptions};
    /// use tokio::sync::watch;
    ///
    /// /// What an auth layer put in the request: the user, and a flag raised on revocation.
    /// #[derive(Clone)]
    /// struct Login { user: String, revoked: watch::Receiver<bool> }
    ///
    /// let sse = SseEndpoint::new(PubSub::memory()).on_open(|req: &http::request::Parts, _: &[Channel]| {
    ///     let Some(login) = req.extensions.get::<Login>().cloned() else {
    ///         return StreamOptions::new();
    ///     };
    ///     let mut revoked = login.revoked;
    ///     StreamOptions::new()
    ///         .client_key(&login.user)
    ///         .access_ends(async move {
    ///             let _ = revoked.wait_for(|r| *r).await;
    ///         })
    /// });
    /// # let _ = sse;
    /// ```
    #[must_use]
    pub fn on_open(self, hook: impl OnOpen) -> Self {
        let hook: Arc<dyn OnOpen> = Arc::new(hook);
        self.with(|i| i.on_open = hook)
    }

    /// How many streams are open through this endpoint and its clones.
    pub fn open_connections(&self) -> usize {
        self.inner.connections.open(None).0
    }

    /// A `GET` method router serving this endpoint: `.route("/events/{channel}",
    /// sse.method_router())`. Chain more methods on it (`.post(publish)`).
    pub fn method_router<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let this = self.clone();
        axum::routing::get(move |req: Request| async move { this.handle(req).await })
    }

    /// A `POST` method router that publishes the JSON request body on the `{channel}` path
    /// parameter and answers `202 Accepted` with `{"id": "<event id>"}`. The channel is
    /// validated (`400`) and the [`ChannelAuthorizer`] asked for [`Access::Publish`] (`403`);
    /// a body that is not JSON gets axum's JSON rejection (`400`/`415`/`422`), a store outage
    /// `503`. Combine it with the stream: `sse.method_router().merge(sse.publish_method_router())`.
    pub fn publish_method_router<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let this = self.clone();
        axum::routing::post(move |req: Request| async move { this.handle_publish(req).await })
    }

    /// Serves one publish request (for custom wiring; see
    /// [`publish_method_router`](Self::publish_method_router)).
    pub async fn handle_publish(&self, req: Request) -> Response {
        let (mut parts, body) = req.into_parts();
        let name = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(k, _)| *k == "channel")
                    .map(|(_, v)| v.to_owned())
            });
        let Some(name) = name else {
            return SseRejection::NoChannel.into_response();
        };
        let channel = match Channel::new(&name) {
            Ok(channel) => channel,
            Err(e) => return SseRejection::InvalidChannel(e).into_response(),
        };
        if !self
            .inner
            .authorizer
            .0
            .authorize(&parts, &channel, Access::Publish)
            .await
        {
            return SseRejection::Forbidden.into_response();
        }
        let token = match parts.headers.get("idempotency-key") {
            None => PublishToken::random(),
            Some(value) => match value.to_str().ok().map(PublishToken::new) {
                Some(Ok(token)) => token,
                _ => return SseRejection::InvalidIdempotencyKey.into_response(),
            },
        };
        let req = Request::from_parts(parts, body);
        let axum::Json(value) =
            match <axum::Json<serde_json::Value> as axum::extract::FromRequest<()>>::from_request(
                req,
                &(),
            )
            .await
            {
                Ok(json) => json,
                Err(rejection) => return rejection.into_response(),
            };
        let json = value.to_string();
        match self
            .inner
            .pubsub
            .publish_json_with(&channel, json, &token)
            .await
        {
            Ok(id) => (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "id": id })),
            )
                .into_response(),
            Err(crate::Error::PayloadTooLarge { len, max }) => {
                SseRejection::PayloadTooLarge { len, max }.into_response()
            }
            Err(error) => SseRejection::Unavailable(error).into_response(),
        }
    }

    /// Serves one request (for custom wiring; [`method_router`](Self::method_router) calls it).
    /// The [`on_open`](Self::on_open) hook gives the stream's options.
    pub async fn handle(&self, req: Request) -> Response {
        self.serve(req, None).await
    }

    /// Serves one request with `options` given by the caller (the [`on_open`](Self::on_open)
    /// hook is not called): for a handler of your own that knows the reader.
    ///
    /// ```
    /// use axum::{Router, extract::Request, routing::get};
    /// use redtower_pubsub::{PubSub, SseEndpoint, StreamOptions};
    ///
    /// let sse = SseEndpoint::new(PubSub::memory());
    /// let app: Router = Router::new().route(
    ///     "/events/{channel}",
    ///     get(move |req: Request| async move {
    ///         // e.g. from your session: when it is revoked, and who it is.
    ///         let options = StreamOptions::new()
    ///             .client_key("user:alice")
    ///             .access_ends(std::future::pending());
    ///         sse.handle_with(req, options).await
    ///     }),
    /// );
    /// # let _ = app;
    /// ```
    pub async fn handle_with(&self, req: Request, options: StreamOptions) -> Response {
        self.serve(req, Some(options)).await
    }

    async fn serve(&self, req: Request, options: Option<StreamOptions>) -> Response {
        let (mut parts, _body) = req.into_parts();
        let span = tracing::info_span!(
            target: TARGET,
            "redtower.pubsub.subscribe",
            outcome = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        let opened = self
            .open(&mut parts, options)
            .instrument(span.clone())
            .await;
        match opened {
            Ok(response) => {
                span.record("outcome", "open");
                response
            }
            Err(rejection) => {
                span.record("outcome", "rejected");
                span.record("http.response.status_code", rejection.status().as_u16());
                rejection.into_response()
            }
        }
    }

    async fn open(
        &self,
        parts: &mut Parts,
        options: Option<StreamOptions>,
    ) -> Result<Response, SseRejection> {
        let asked = Asked::from_request(parts).await?;
        let channels = self.channels(&asked.names)?;
        self.authorize(parts, &channels).await?;
        let header_cursor = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cursor = header_cursor
            .or(asked.cursor)
            .filter(|c| !c.trim().is_empty());
        let cursors = parse_cursors(cursor.as_deref(), channels.len(), asked.multi);
        let mut options = match options {
            Some(options) => options,
            None => self.inner.on_open.on_open(parts, &channels).await,
        };
        if let Some(ends) = options.access_ends.as_mut() {
            // Access that already ended opens nothing.
            if futures::poll!(ends.as_mut()).is_ready() {
                tracing::debug!(target: TARGET, "access ended before the stream opened");
                return Err(SseRejection::Forbidden);
            }
        }
        let permit = self.admit(options.client_key.clone())?;
        let body = stream::open(
            self.inner.clone(),
            channels,
            cursors,
            asked.multi,
            permit,
            options.access_ends,
        )
        .await
        .map_err(SseRejection::Unavailable)?;
        Ok(event_stream(body))
    }

    /// The distinct channels named, validated, within [`max_channels`](Self::max_channels).
    fn channels(&self, names: &[String]) -> Result<Vec<Channel>, SseRejection> {
        let mut channels: Vec<Channel> = Vec::with_capacity(names.len());
        for name in names {
            let channel = Channel::new(name).map_err(SseRejection::InvalidChannel)?;
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        if channels.len() > self.inner.max_channels {
            return Err(SseRejection::TooManyChannels(self.inner.max_channels));
        }
        Ok(channels)
    }

    /// Asks the authorizer for every channel, before anything is subscribed.
    async fn authorize(&self, parts: &Parts, channels: &[Channel]) -> Result<(), SseRejection> {
        for channel in channels {
            if !self
                .inner
                .authorizer
                .0
                .authorize(parts, channel, Access::Subscribe)
                .await
            {
                tracing::debug!(target: TARGET, channel = %channel, "subscription forbidden");
                return Err(SseRejection::Forbidden);
            }
        }
        Ok(())
    }

    /// A place for one more stream, within the process and per-client limits.
    fn admit(&self, client_key: Option<Arc<str>>) -> Result<open::Permit, SseRejection> {
        self.inner
            .connections
            .admit(
                client_key,
                self.inner.max_connections,
                self.inner.max_connections_per_client,
            )
            .map_err(|refused| {
                metrics::counter!("redtower_pubsub_sse_refused_total", "limit" => match refused {
                    open::Refused::Process(_) => "process",
                    open::Refused::Client(_) => "client",
                })
                .increment(1);
                match refused {
                    open::Refused::Process(max) => SseRejection::TooManyConnections(max),
                    open::Refused::Client(max) => SseRejection::TooManyForClient(max),
                }
            })
    }
}

/// What a stream request names: channels from the `{channel}` path parameter, or else from
/// `channel` query parameters (`multi`), and the `last_event_id` query parameter.
struct Asked {
    names: Vec<String>,
    multi: bool,
    cursor: Option<String>,
}

impl Asked {
    async fn from_request(parts: &mut Parts) -> Result<Self, SseRejection> {
        let path_channel = RawPathParams::from_request_parts(parts, &())
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(k, _)| *k == "channel")
                    .map(|(_, v)| v.to_owned())
            });
        let mut names = Vec::new();
        let mut cursor = None;
        for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            match &*k {
                "channel" if path_channel.is_none() => names.push(v.into_owned()),
                "last_event_id" => cursor = Some(v.into_owned()),
                _ => {}
            }
        }
        let multi = path_channel.is_none();
        if let Some(name) = path_channel {
            names = vec![name];
        }
        if names.is_empty() {
            return Err(SseRejection::NoChannel);
        }
        Ok(Self {
            names,
            multi,
            cursor,
        })
    }
}

/// The `200` response carrying an event stream.
fn event_stream(body: stream::SseBody) -> Response {
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
