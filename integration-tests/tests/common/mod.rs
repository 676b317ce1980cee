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
    pub(crate) worker: Option<redtower_jobs::WorkerHandle>,
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
