//! A real browser (headless Chromium through ChromeDriver) drives the example app's page: logs
//! in, places an order, sees its shipping steps and the `shipped` update arrive live over SSE,
//! and after its order stream is dropped mid-way and the page reloaded, sees every step exactly
//! once (resumed from `Last-Event-ID`).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

mod common;

use common::TestApp;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipping steps the page shows, in order.
async fn steps(browser: &fantoccini::Client) -> Result<Vec<String>, fantoccini::error::CmdError> {
    let steps = browser
        .execute(
            "return Array.from(document.querySelectorAll('#steps li.step')).map(li => li.textContent);",
            Vec::new(),
        )
        .await?;
    Ok(serde_json::from_value(steps).expect("a list of steps"))
}

fn chromium() -> String {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    "chromium".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_logs_in_orders_and_sees_the_shipped_update() {
    // The app, on the in-process backends, as the README's first command runs it.
    // Steps 1.5 s apart: the test drops the order's stream after the first one.
    let app = TestApp::spawn(
        None,
        "",
        &[
            ("ORDER_SHIP_DELAY_MS", "300"),
            ("ORDER_STEP_DELAY_MS", "1500"),
        ],
    )
    .await;

    let port = redtower_testkit::free_port();
    let _driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (cargo xtask test installs it)"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium(),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let webdriver = format!("http://127.0.0.1:{port}");
    let mut browser = None;
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&webdriver)
            .await
        {
            Ok(c) => {
                browser = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let browser = browser.expect("a ChromeDriver session");

    let result = async {
        browser.goto(&app.url("/")).await?;
        browser
            .wait()
            .for_element(Locator::XPath("//span[@id='stream-state'][text()='open']"))
            .await?;
        let user = browser.find(Locator::Id("user")).await?;
        user.clear().await?;
        user.send_keys("dana").await?;
        browser.find(Locator::Id("login")).await?.click().await?;
        browser
            .wait()
            .for_element(Locator::XPath(
                "//p[@id='whoami'][contains(., 'Logged in as dana')]",
            ))
            .await?;
        browser.find(Locator::Id("order")).await?.click().await?;
        // The first step arrives live on the order's own stream; then the stream is dropped
        // (as a lost connection would), mid-way through the job.
        browser
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::XPath("//ul[@id='steps']/li[text()='packed']"))
            .await?;
        browser
            .execute(
                "for (const s of window.orderStreams.values()) s.close();",
                Vec::new(),
            )
            .await?;
        // Pending first, then the live update flips it to shipped without a reload.
        browser
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css("#orders li.status-shipped"))
            .await?;
        // The page rebuilds the list on every update, so an element handle can go stale between
        // finding it and reading it: read the whole list in one script call instead.
        let items = browser
            .execute(
                "return Array.from(document.querySelectorAll('#orders li'))\
                 .map(li => [li.dataset.orderId || '', li.className, li.textContent]);",
                Vec::new(),
            )
            .await?;
        let items: Vec<(String, String, String)> =
            serde_json::from_value(items).expect("a list of [id, class, text]");
        assert_eq!(items.len(), 1, "one order placed: {items:?}");
        let (order_id, class, text) = &items[0];
        assert!(order_id.starts_with("ord-"), "{order_id}");
        assert!(class.contains("status-shipped"), "{class}");
        assert_eq!(text, &format!("{order_id}: shipped"));
        let log = browser.find(Locator::Id("log")).await?.text().await?;
        assert!(log.contains("\"status\":\"shipped\""), "{log}");

        // The dropped stream missed the last steps (they are 1.5 s apart).
        let before = steps(&browser).await?;
        assert!(
            !before.is_empty() && before.len() < 3,
            "the stream was dropped mid-way: {before:?}"
        );
        // Reload: the page restores what it saw and a new EventSource resumes after the last
        // step it got (`?last_event_id=`): the rest comes from the channel's history.
        browser.refresh().await?;
        browser
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css("#steps li.tracking"))
            .await?;
        let after = steps(&browser).await?;
        assert_eq!(
            after,
            ["packed", "label printed", "shipped"],
            "every step exactly once"
        );
        let tracking = browser
            .find(Locator::Css("#steps li.tracking"))
            .await?
            .text()
            .await?;
        assert!(tracking.starts_with("tracking TRK-"), "{tracking}");
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = browser.close().await;
    result.unwrap();
    app.stop().await;
}
