//! Headless Chromium for the console's tests: Debian's `chromium` driven through `chromedriver` (WebDriver over
//! loopback HTTP, `fantoccini`), with helpers that wait on the page instead of sleeping.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The browser and its driver: `KEYMETER_TEST_CHROMIUM` / `KEYMETER_TEST_CHROMEDRIVER`, else Debian's paths.
pub fn find() -> Result<(PathBuf, PathBuf), String> {
    let pick = |var: &str, default: &str| {
        PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()))
    };
    let chromium = pick("KEYMETER_TEST_CHROMIUM", "/usr/bin/chromium");
    let driver = pick("KEYMETER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    for (path, package) in [(&chromium, "chromium"), (&driver, "chromium-driver")] {
        if !path.exists() {
            return Err(format!(
                "{} is missing (apt-get install {package}, or set KEYMETER_TEST_CHROMIUM / KEYMETER_TEST_CHROMEDRIVER)",
                path.display()
            ));
        }
    }
    Ok((chromium, driver))
}

/// `chromedriver` on a free loopback port, killed when dropped.
pub struct Driver {
    _child: tokio::process::Child,
    pub url: String,
}

pub async fn driver(path: &Path) -> Driver {
    let port = crate::support::binary::free_port();
    let child = tokio::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = keymeter::http::client(Duration::from_secs(2)).unwrap();
    let started = Instant::now();
    while http.get(format!("{url}/status")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { _child: child, url }
}

/// A headless Chromium session with a fresh profile, its console logged.
pub async fn session(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display())],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Runs `script` (a function body returning a value) in the page.
pub async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect(script)
}

/// Waits (at most 15 s) until `script` returns `true` in the page.
pub async fn until(client: &Client, script: &str) {
    let started = Instant::now();
    loop {
        if js(client, script).await == Value::Bool(true) {
            return;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let page = client.source().await.unwrap_or_default();
            panic!("waited 15 s for: {script}\nthe page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .expect(css)
        .text()
        .await
        .expect(css)
}

pub async fn type_into(client: &Client, css: &str, value: &str) {
    let field = client.find(Locator::Css(css)).await.expect(css);
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

pub async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect(css);
}

/// Opens a console page by its link, as a user would.
pub async fn visit(client: &Client, page: &str) {
    click(client, &format!("#nav a[href='#{page}']")).await;
    until(
        client,
        &format!("return !document.getElementById('{page}').hidden"),
    )
    .await;
}

/// The browser console's entries since the last call (chromedriver's log endpoint).
pub async fn console_log(client: &Client, driver: &Driver) -> Vec<Value> {
    let id = client.session_id().await.unwrap().expect("a session id");
    let http = keymeter::http::client(Duration::from_secs(5)).unwrap();
    let answer: Value = http
        .post(format!("{}/session/{id}/se/log", driver.url))
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["value"].as_array().cloned().unwrap_or_default()
}

/// Screenshots of the current page at desktop and phone widths.
pub async fn screenshots(client: &Client, dir: &Path, name: &str) {
    for (width, height, label) in [(1280, 900, "desktop"), (375, 812, "phone")] {
        client.set_window_size(width, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}-{label}.png")), png).unwrap();
        if label == "phone" {
            // Readable at 375 px: nothing wider than the viewport but the tables' own scrolling boxes.
            let wide = js(
                client,
                "if (document.documentElement.scrollWidth <= window.innerWidth + 1) return []; \
                 return [...document.querySelectorAll('body *')].filter(e => e.offsetParent !== null \
                   && e.getBoundingClientRect().right > window.innerWidth + 1)\
                   .map(e => e.tagName + '#' + e.id + '.' + e.className)",
            )
            .await;
            assert_eq!(wide, json!([]), "{name} is wider than 375 px");
        }
    }
    client.set_window_size(1280, 900).await.unwrap();
}
