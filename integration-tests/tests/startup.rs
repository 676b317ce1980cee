//! Start-up: the app waits for Redis before accepting traffic, up to `REDIS_CONNECT_WAIT`, and
//! starts degraded when Redis is away.

use std::time::{Duration, Instant};

use redtower_example::{Config, Services};
use redtower_testkit::{RedisServer, unique_prefix};
use reqwest::{Client, StatusCode};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-boot";

fn services(url: &str, wait: &str) -> Services {
    let prefix = unique_prefix("wait");
    let vars = [
        ("REDIS_URL", url),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("REDIS_CONNECT_WAIT", wait),
        ("SESSION_SECRET", SECRET),
    ];
    let config = Config::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    Services::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_waits_for_redis_then_starts_degraded_when_it_is_away() {
    // Redis up: ready as soon as it is connected.
    let up = services(&redtower_testkit::shared_url(), "5s");
    assert!(up.wait_for_redis().await);

    // Redis away: the wait is bounded, then the app runs degraded.
    let port = redtower_testkit::free_port();
    let away = services(&format!("redis://127.0.0.1:{port}"), "300ms");
    let started = Instant::now();
    assert!(!away.wait_for_redis().await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let router = redtower_example::app(&away).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let http = Client::new();
    let health = format!("http://{addr}/health");
    let res = http.get(&health).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Requests are still answered, by the failure policies.
    let res = http
        .get(format!("http://{addr}/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Redis appears: /health says so without a restart.
    let _server = RedisServer::options().port(port).start();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if http.get(&health).send().await.unwrap().status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "/health never turned ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
