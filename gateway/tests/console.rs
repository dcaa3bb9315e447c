//! The web console (DESIGN §17) in a real browser: Debian's headless Chromium driven over WebDriver
//! (`chromedriver`) against the real `keymeter-gateway` binary. Skips, saying why, where either is missing; CI
//! installs both. Screenshots at desktop and phone widths land in `target/tmp/console-screenshots/`.

mod browser;
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::{click, console_log, js, screenshots, text, type_into, until, visit};
use keymeter::keys::{NewKey, Scope};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let (chromium, driver_path) = match browser::find() {
        Ok(found) => found,
        Err(why) => {
            eprintln!("skipping the browser test: {why}");
            return;
        }
    };
    let up = support::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/console.db", dir.path().display());
    // alice: the system OpenAI key, a $5 monthly budget; a console key and an admin key.
    support::prepare_alice(&store_url, 5).await;
    let config = support::config(&store_url);
    let store = config.connect().await.unwrap();
    let issuer = config.issuer(store.clone()).unwrap();
    let console_key = issuer
        .issue(
            NewKey::new("console", "alice")
                .scopes(Scope::parse_list("llm:chat,keys:write,reports,billing,write").unwrap()),
        )
        .await
        .unwrap();
    let admin = issuer
        .issue(NewKey::new("ops", "ops").scopes(Scope::parse_list("*").unwrap()))
        .await
        .unwrap();
    store.close().await;
    let console_key = console_key.token.expose_secret().to_owned();
    let admin = admin.token.expose_secret().to_owned();

    let log = dir.path().join("gateway.log");
    let journal = dir.path().join("journal");
    let vars = support::config_vars(&store_url);
    let gw = support::binary::start(
        &vars,
        &[
            "--journal",
            journal.to_str().unwrap(),
            "--openai-base-url",
            &up.url,
        ],
        &log,
    )
    .await;
    let http = keymeter::http::client(Duration::from_secs(10)).unwrap();

    // The page's headers: a strict CSP, no sniffing, no referrer.
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let answer = http.get(format!("{}{path}", gw.url)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let csp = answer.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
        assert!(answer.headers().get("set-cookie").is_none());
    }
    let page = http
        .get(format!("{}/console", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains(" style=") && !page.contains("onclick"),
        "no inline script or style"
    );

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let driver = browser::driver(&driver_path).await;
    let client = browser::session(&driver, &chromium, profile.path()).await;
    let base = format!("{}/console", gw.url);

    // Sign in: a wrong key is refused inline; the right one opens the overview.
    client.goto(&base).await.unwrap();
    until(&client, "return !document.getElementById('signin').hidden").await;
    screenshots(&client, &shots, "signin").await;
    type_into(&client, "#signin-key", "km_live_not-a-real-key").await;
    click(&client, "#signin-form button[type=submit]").await;
    until(
        &client,
        "return document.getElementById('signin-error').textContent.length > 0",
    )
    .await;
    // From the keyboard: the key, then Enter; the page's heading takes the focus.
    type_into(&client, "#signin-key", &format!("{console_key}\u{e007}")).await;
    until(
        &client,
        "return !document.getElementById('overview').hidden",
    )
    .await;
    until(
        &client,
        "return document.activeElement === document.getElementById('overview-title')",
    )
    .await;
    assert!(text(&client, "#who").await.contains("alice"));

    // API keys: create one with a subset of the scopes, see the secret once, use it through the proxy.
    visit(&client, "keys").await;
    until(
        &client,
        "return document.querySelectorAll('#key-table tbody tr').length == 2",
    )
    .await;
    let offered = js(
        &client,
        "return [...document.querySelectorAll('#create-scopes input')].map(i => i.value)",
    )
    .await;
    assert!(
        !offered
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "keys:write" || s == "admin"),
        "never offered: {offered}"
    );
    type_into(&client, "#create-name", "laptop").await;
    click(&client, "#create-form button[type=submit]").await;
    until(
        &client,
        "return !document.getElementById('secret-panel').hidden",
    )
    .await;
    let made = text(&client, "#secret-value").await;
    assert!(made.starts_with("km_live_"), "{made}");
    click(&client, "#secret-copy").await;
    until(
        &client,
        "return document.getElementById('secret-copied').textContent.length > 0",
    )
    .await;
    until(
        &client,
        "return document.querySelectorAll('#key-table tbody tr').length == 3",
    )
    .await;
    screenshots(&client, &shots, "keys").await;
    click(&client, "#secret-done").await;
    assert_eq!(
        js(
            &client,
            "return document.getElementById('secret-value').textContent"
        )
        .await,
        json!(""),
        "the secret leaves the page"
    );
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let answer = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&made)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the made key works through the proxy");
    // Rotated from the page (after its confirmation): the new secret shown once, the old one refused.
    let made_id = js(
        &client,
        "return [...document.querySelectorAll('#key-table tbody tr')].find(r => r.cells[0].textContent == 'laptop').dataset.id",
    )
    .await;
    let made_id = made_id.as_str().unwrap().to_owned();
    click(
        &client,
        &format!("button[data-action=rotate][data-id='{made_id}']"),
    )
    .await;
    client.accept_alert().await.unwrap();
    until(
        &client,
        "return !document.getElementById('secret-panel').hidden",
    )
    .await;
    let rotated = text(&client, "#secret-value").await;
    assert!(rotated.starts_with("km_live_") && rotated != made);
    click(&client, "#secret-done").await;
    let (status, _) = call(&http, &gw.url, &made, "/api/v1/key").await;
    assert_eq!(status, 401, "the rotated-away secret");
    let made = rotated;
    let (status, _) = call(&http, &gw.url, &made, "/api/v1/key").await;
    assert_eq!(status, 200);

    // Provider keys: a placeholder is refused inline and nothing changes; a real-shaped key is saved.
    visit(&client, "providers").await;
    until(
        &client,
        "return !!document.getElementById('provider-openai-key')",
    )
    .await;
    assert_eq!(
        text(&client, "#provider-openai [data-status=personal]").await,
        "Your key: none"
    );
    assert_eq!(
        text(&client, "#provider-openai [data-status=system]").await,
        "System key: available"
    );
    type_into(&client, "#provider-openai-key", "sk-your-key-here").await;
    click(&client, "#provider-openai form button[type=submit]").await;
    until(
        &client,
        "return document.getElementById('provider-openai-error').textContent.length > 0",
    )
    .await;
    let refused = text(&client, "#provider-openai-error").await;
    assert!(refused.to_lowercase().contains("placeholder"), "{refused}");
    assert_eq!(
        text(&client, "#provider-openai [data-status=personal]").await,
        "Your key: none"
    );
    type_into(&client, "#provider-openai-key", support::USER_OPENAI_KEY).await;
    click(&client, "#provider-openai form button[type=submit]").await;
    until(
        &client,
        "return document.querySelector('#provider-openai [data-status=personal]').textContent == 'Your key: saved'",
    )
    .await;
    screenshots(&client, &shots, "providers").await;

    // Models: what the key may call, priced per 1M tokens.
    visit(&client, "models").await;
    until(
        &client,
        "return document.querySelectorAll('#model-table tbody tr td code').length > 0",
    )
    .await;
    let prices = js(
        &client,
        "return [...document.querySelectorAll('#model-table tbody tr')].find(r => r.cells[0].textContent == 'gpt-4o-mini')?.cells[2].textContent",
    )
    .await;
    assert!(
        prices.as_str().is_some_and(|p| p.starts_with('$')),
        "{prices}"
    );
    screenshots(&client, &shots, "models").await;

    // Earlier days' usage, ingested as an SDK reports it (so the chart has a history).
    for back in 1..=12_i64 {
        let at = chrono::Utc::now() - chrono::Duration::days(back);
        let (model, format, usage) = if back % 3 == 0 {
            (
                "claude-sonnet-4-5",
                "anthropic",
                json!({"input_tokens": 900 * back, "output_tokens": 400}),
            )
        } else {
            (
                "gpt-4o",
                "openai",
                json!({"prompt_tokens": 1500 * back, "completion_tokens": 600, "total_tokens": 1500 * back + 600}),
            )
        };
        let body = json!({"request_id": format!("earlier-{back}"), "model": model, "usage": usage,
            "usage_format": format, "at": at});
        let answer = http
            .post(format!("{}/api/v1/usage", gw.url))
            .bearer_auth(&console_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    }

    // Overview: today's bar carries the day's spend as the report gives it (the journal drains within moments).
    let today = chrono::Utc::now().date_naive().to_string();
    let started = Instant::now();
    let spent = loop {
        let (_, report) = call(&http, &gw.url, &console_key, "/api/v1/usage?by=day").await;
        if let Some(cost) = report["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["key"] == today.as_str()))
            .and_then(|g| g["cost"].as_str())
        {
            break cost.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(spent, "0");
    visit(&client, "usage").await;
    visit(&client, "overview").await;
    until(
        &client,
        &format!(
            "const bar = document.querySelector('#chart rect[data-day=\"{today}\"]');\
             return !!bar && bar.getAttribute('data-cost') == '{spent}' && parseFloat(bar.getAttribute('height')) > 0"
        ),
    )
    .await;
    until(
        &client,
        "return document.querySelectorAll('#budgets meter').length == 1",
    )
    .await;
    // Today's figure is the owner's (the request was the made key's, not the signed-in one's).
    until(
        &client,
        "return document.getElementById('today-events').textContent == '1' \
         && document.getElementById('today-spend').textContent != '$0.00'",
    )
    .await;
    until(
        &client,
        "return [...document.querySelectorAll('#by-model tbody tr')].some(r => r.cells[0].textContent == 'gpt-4o-mini')",
    )
    .await;
    let bars = js(
        &client,
        "return [...document.querySelectorAll('#chart rect')].filter(r => parseFloat(r.getAttribute('height')) > 0).length",
    )
    .await;
    assert_eq!(bars, json!(13), "today and the twelve days before");
    // What the page costs beside the API calls it makes (printed for the record, not asserted: timing is the
    // benches' business): the page's own load, and the overview's four calls as the browser timed them.
    let timing = js(
        &client,
        "const nav = performance.getEntriesByType('navigation')[0]; \
         const calls = performance.getEntriesByType('resource').filter(r => r.name.includes('/api/v1/')); \
         return {page_loaded_ms: nav.loadEventEnd - nav.startTime, \
           assets: performance.getEntriesByType('resource').filter(r => r.name.includes('/console/')).length, \
           api_calls: calls.length, api_median_ms: calls.map(r => r.duration).sort((a, b) => a - b)[calls.length >> 1]}",
    )
    .await;
    eprintln!("console timing: {timing}");
    screenshots(&client, &shots, "overview").await;

    // Usage: the table, and a CSV the page builds from it.
    visit(&client, "usage").await;
    until(
        &client,
        "return document.querySelectorAll('#usage-table tbody tr').length > 0",
    )
    .await;
    assert_eq!(
        text(&client, "#usage-table tbody tr:last-child td").await,
        today
    );
    screenshots(&client, &shots, "usage").await;
    // The CSV download: the file the page hands the browser, read as it is made.
    js(
        &client,
        "window.__csv = null; const made = URL.createObjectURL; \
         URL.createObjectURL = (blob) => { blob.text().then(t => window.__csv = t); return made(blob); }; \
         return true",
    )
    .await;
    click(&client, "#usage-csv").await;
    until(&client, "return typeof window.__csv == 'string'").await;
    let csv = js(&client, "return window.__csv").await;
    let csv = csv.as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "day,cost,requests,input_tokens,output_tokens");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{today},{spent},1,"))),
        "{csv}"
    );
    assert!(lines.last().unwrap().starts_with("total,"), "{csv}");

    // Where the key may be: only this tab's sessionStorage.
    assert!(
        client.get_all_cookies().await.unwrap().is_empty(),
        "no cookie"
    );
    assert_eq!(js(&client, "return localStorage.length").await, json!(0));
    assert!(
        !client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&console_key)
    );
    assert_eq!(
        js(
            &client,
            "return sessionStorage.getItem('keymeter.console.key')"
        )
        .await,
        json!(console_key)
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains(&console_key) && !logged.contains(&made),
        "a secret in the log"
    );

    // The key is revoked elsewhere: the next page the console loads signs it out, and forgets the key.
    let (status, _) = call_as(&http, &gw.url, &admin, Method::GET, "/api/v1/key").await;
    assert_eq!(status, 200);
    let id = js(&client, "return document.querySelector('#who').textContent").await;
    assert!(id.as_str().unwrap().contains("console"));
    let (_, me) = call(&http, &gw.url, &console_key, "/api/v1/key").await;
    let key_id = me["key"]["id"].as_str().unwrap().to_owned();
    let (status, _) = call_as(
        &http,
        &gw.url,
        &admin,
        Method::DELETE,
        &format!("/api/v1/api-keys/{key_id}"),
    )
    .await;
    assert_eq!(status, 200);
    click(&client, "#nav a[href='#keys']").await;
    until(&client, "return !document.getElementById('signin').hidden").await;
    let notice = text(&client, "#notice").await;
    assert!(notice.contains("revoked"), "{notice}");
    assert_eq!(
        js(&client, "return sessionStorage.length").await,
        json!(0),
        "the key is forgotten"
    );
    // The key it created went with it.
    let (status, _) = call_as(&http, &gw.url, &made, Method::GET, "/api/v1/key").await;
    assert_eq!(status, 401);

    // An admin key sees and manages every key (its organisation's, for an organisation's admin).
    type_into(&client, "#signin-key", &format!("{admin}\u{e007}")).await;
    until(
        &client,
        "return !document.getElementById('overview').hidden",
    )
    .await;
    visit(&client, "keys").await;
    until(
        &client,
        "return document.getElementById('keys-scope').textContent.startsWith('An admin key') \
         && document.querySelectorAll('#key-table tbody tr').length == 4",
    )
    .await;
    let owners = js(
        &client,
        "return [...document.querySelectorAll('#key-table tbody tr')].map(r => r.cells[3].textContent).sort()",
    )
    .await;
    assert_eq!(owners, json!(["alice", "alice", "alice", "ops"]));
    click(&client, "#signout").await;
    until(
        &client,
        "return !document.getElementById('signin').hidden && sessionStorage.length == 0",
    )
    .await;

    // No script errors and no CSP violation in the whole run (the refusals the page meant to show were answers
    // with an error status, which the browser logs as network entries: those are not script errors).
    let entries = console_log(&client, &driver).await;
    let errors: Vec<&Value> = entries
        .iter()
        .filter(|e| e["level"] == "SEVERE" && !is_http_status(e))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // And the CSP is in force: an inline script the page did not ship does not run.
    let ran = js(
        &client,
        "const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; \
         document.body.append(s); return window.__inline === 1",
    )
    .await;
    assert_eq!(ran, json!(false), "an inline script ran despite the CSP");
    let violations = console_log(&client, &driver).await;
    assert!(
        violations.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("Content Security Policy")),
        "the blocked script is reported: {violations:#?}"
    );
    client.close().await.unwrap();
}

/// A browser log entry for one of the refusals the test provoked on purpose: the wrong key at sign-in and the
/// revoked key (401), the placeholder provider key (422).
fn is_http_status(entry: &Value) -> bool {
    let message = entry["message"].as_str().unwrap_or("");
    entry["source"] == "network"
        && (message.contains("status of 401 (Unauthorized)")
            || message.contains("/v2/users/me/api-key - Failed to load resource: the server responded with a status of 422"))
}

async fn call(http: &reqwest::Client, url: &str, key: &str, path: &str) -> (u16, Value) {
    call_as(http, url, key, Method::GET, path).await
}

async fn call_as(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    method: Method,
    path: &str,
) -> (u16, Value) {
    let answer = http
        .request(method, format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}
