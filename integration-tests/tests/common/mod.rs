//! The example app served on a free port, shared by the app-level test binaries.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use redtower_example::{Config, Services, app};
use reqwest::{Client, StatusCode};

/// The session secret every test instance shares.
pub(crate) const SECRET: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-test";

/// A running app instance.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) services: Services,
    pub(crate) worker: Option<redtower_example::Workers>,
}

impl TestApp {
    /// Serves the app with `env` (plus fast test defaults) and waits until `/health` is 200.
    pub(crate) async fn spawn(redis_url: Option<&str>, prefix: &str, env: &[(&str, &str)]) -> Self {
        let app = Self::spawn_at_once(redis_url, prefix, env).await;
        // Connections are lazy: wait until /health says Redis is up, as a load balancer would.
        let client = Client::new();
        for _ in 0..500 {
            let res = client.get(app.url("/health")).send().await.unwrap();
            if res.status() == StatusCode::OK {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the app never became healthy");
    }

    /// Serves the app with `env` (plus fast test defaults) and returns as soon as its port
    /// accepts connections, while its Redis connection may still be being made.
    pub(crate) async fn spawn_at_once(
        redis_url: Option<&str>,
        prefix: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.entry("ORDER_SHIP_DELAY_MS".into())
            .or_insert_with(|| "100".into());
        vars.entry("FEATURED_DELAY_MS".into())
            .or_insert_with(|| "20".into());
        vars.entry("SESSION_SECRET".into())
            .or_insert_with(|| SECRET.into());
        // Tests log in and publish far more often than a person; those that test these
        // limits set them.
        for limit in [
            "LOGIN_RATE_LIMIT",
            "LOGIN_USER_RATE_LIMIT",
            "LOGIN_FAILURE_RATE_LIMIT",
            "PUBLISH_RATE_LIMIT",
        ] {
            vars.entry(limit.into())
                .or_insert_with(|| "100000/1m".into());
        }
        if let Some(url) = redis_url {
            vars.insert("REDIS_URL".into(), url.to_owned());
            vars.insert("REDIS_KEY_PREFIX".into(), prefix.to_owned());
        }
        let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
        let services = Services::new(config.clone()).unwrap();
        let worker = config.worker.then(|| services.start_worker());
        let router = app(&services).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = services.shutdown_token();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            services,
            worker,
        }
    }

    /// `http://<addr><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Ends SSE streams and stops the worker, handing its jobs back.
    pub(crate) async fn stop(self) {
        self.services.shutdown_token().cancel();
        if let Some(worker) = self.worker {
            worker.shutdown().await.unwrap();
        }
    }
}

/// The frames of an SSE response as `(event, parsed data)`, as they arrive (frames without data
/// are skipped); the receiver sees the channel close when the stream ends.
#[allow(dead_code)] // not every test binary reads streams
pub(crate) fn sse_frames<T: Send + 'static>(
    res: reqwest::Response,
    parse: impl Fn(&str) -> T + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, T)> {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut event = "message".to_owned();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if !data.is_empty() && tx.send((event, parse(&data))).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
