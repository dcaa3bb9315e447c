//! Alerts end to end (DESIGN §16): a webhook receiver on loopback that checks every signature and timestamp and
//! counts deliveries; retries after 500s; no delivery through a redirect; at least once across a `kill -9` of
//! the sender; GitHub's secret scanning intake with a key pair made here.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use chrono::Utc;
use keymeter::alerts::{Alert, AlertKind, DeliveryState, Endpoint, signature};
use keymeter::random::OsRandom;
use keymeter::{ExposeSecret, SecretString};
use p256::ecdsa::{DerSignature, SigningKey, signature::Signer};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use reqwest::Method;
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    id: String,
    kind: String,
    body: Value,
    signed: bool,
}

#[derive(Default)]
struct Received {
    secrets: Mutex<Vec<SecretString>>,
    hits: Mutex<Vec<Hit>>,
    /// 500s still to answer on `/ok` before the first 200.
    fail: AtomicUsize,
}

/// A webhook receiver on a loopback port: `/ok` verifies and answers (500 while `fail` lasts), `/redirect` sends
/// the sender to `/catch`, which only counts.
struct Receiver {
    url: String,
    state: Arc<Received>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Received::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = state.clone();
        let target = format!("{url}/catch");
        let handle = move |path: &'static str| {
            let state = shared.clone();
            let target = target.clone();
            move |headers: HeaderMap, body: Bytes| async move {
                let header = headers
                    .get(signature::HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let now = Utc::now();
                let signed = state.secrets.lock().unwrap().iter().any(|s| {
                    signature::verify(&header, &body, s, now, signature::TOLERANCE).is_ok()
                });
                let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                state.hits.lock().unwrap().push(Hit {
                    path: path.to_owned(),
                    id: parsed["id"].as_str().unwrap_or("").to_owned(),
                    kind: parsed["type"].as_str().unwrap_or("").to_owned(),
                    body: parsed,
                    signed,
                });
                match path {
                    "/redirect" => (
                        StatusCode::TEMPORARY_REDIRECT,
                        [("location", target.as_str())],
                    )
                        .into_response(),
                    "/ok"
                        if state
                            .fail
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok() =>
                    {
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                    _ => StatusCode::OK.into_response(),
                }
            }
        };
        let router = axum::Router::new()
            .route("/ok", axum::routing::post(handle("/ok")))
            .route("/redirect", axum::routing::post(handle("/redirect")))
            .route("/catch", axum::routing::any(handle("/catch")));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, state }
    }

    fn trust(&self, secret: &SecretString) {
        self.state.secrets.lock().unwrap().push(secret.clone());
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until `done` holds of the hits so far.
    async fn wait(&self, within: Duration, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let started = Instant::now();
        loop {
            let hits = self.hits();
            if done(&hits) || started.elapsed() > within {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Development (loopback `http://` endpoints), fast retries.
fn alert_vars() -> [(&'static str, &'static str); 4] {
    [
        ("KEYMETER_ENV", "development"),
        ("KEYMETER_WEBHOOK_RETRY", "100ms"),
        ("KEYMETER_WEBHOOK_TIMEOUT", "2s"),
        ("KEYMETER_WEBHOOK_ATTEMPTS", "4"),
    ]
}

async fn sqlite_gateway_with(
    up: &support::Upstream,
    extra: &[(&str, &str)],
) -> (support::Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    let mut vars: Vec<(&str, &str)> = alert_vars().to_vec();
    vars.extend_from_slice(extra);
    let gw = support::serve_with(
        &support::config_with(&url, &vars),
        support::settings(up),
        keymeter_gateway::server::Limits::default(),
        "ops",
    )
    .await;
    (gw, dir)
}

/// Adds an endpoint for `url` receiving `events` and returns its secret.
async fn endpoint(
    gw: &support::Gateway,
    url: &str,
    events: Vec<AlertKind>,
) -> (String, SecretString) {
    let new = Endpoint::create(url, events, &gw.app.vault, &OsRandom, Utc::now(), true).unwrap();
    gw.app.store.add_endpoint(&new.endpoint).await.unwrap();
    (new.endpoint.id.clone(), new.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_threshold_reaches_the_webhook_signed_after_500s_and_never_through_a_redirect() {
    let up = support::upstream().await;
    let (gw, _dir) = sqlite_gateway_with(&up, &[]).await;
    let receiver = Receiver::start().await;
    let (ok_id, secret) = endpoint(&gw, &format!("{}/ok", receiver.url), vec![]).await;
    receiver.trust(&secret);
    let (redirect_id, redirect_secret) = endpoint(
        &gw,
        &format!("{}/redirect", receiver.url),
        vec![AlertKind::BudgetThreshold],
    )
    .await;
    receiver.trust(&redirect_secret);
    receiver.state.fail.store(2, Ordering::SeqCst);
    // A budget of $1 for alice with thresholds 25 % and 90 %; usage ingested over HTTP crosses 25 % only.
    let scope = keymeter::ledger::BudgetScope::Owner("alice".into());
    let budget = keymeter::ledger::Budget::new(
        scope,
        rust_decimal::Decimal::ONE,
        keymeter::ledger::BudgetPeriod::Monthly,
    )
    .unwrap()
    .thresholds(vec![25, 90])
    .unwrap();
    gw.app.store.set_budget(&budget).await.unwrap();
    let (_, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["write"]}))
        .await;
    let usage = json!({"prompt_tokens": 120_000, "completion_tokens": 0, "total_tokens": 120_000});
    for (i, _) in [0, 1].iter().enumerate() {
        let (s, _, body) = gw
            .call(
                Method::POST,
                "/api/v1/usage",
                Some(&alice),
                Some(json!({"request_id": format!("r{i}"), "model": "gpt-4o", "usage": usage, "usage_format": "openai"})),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    // $0.30 then $0.60 of $1: 25 % crossed once, 90 % not.
    let hits = receiver
        .wait(Duration::from_secs(20), |h| {
            h.iter().filter(|h| h.path == "/ok").count() >= 3
                && h.iter().filter(|h| h.path == "/redirect").count() >= 4
        })
        .await;
    let ok: Vec<&Hit> = hits.iter().filter(|h| h.path == "/ok").collect();
    assert_eq!(ok.len(), 3, "two 500s, then delivered once: {ok:?}");
    assert!(
        ok.iter().all(|h| h.signed),
        "every attempt signed with the endpoint's secret"
    );
    assert!(
        ok.iter()
            .all(|h| h.id == ok[0].id && h.kind == "budget.threshold")
    );
    let data = &ok[0].body["data"];
    assert_eq!(data["scope"], "owner:alice");
    assert_eq!(data["threshold"], 25);
    assert_eq!(data["limit"], "1");
    assert!(ok[0].body["created_at"].is_string());
    // The redirecting endpoint: tried up to the attempt cap, never followed.
    assert!(
        hits.iter().all(|h| h.path != "/catch"),
        "a redirect was followed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deliveries = gw.app.store.deliveries(50).await.unwrap();
    let of = |endpoint: &str| {
        deliveries
            .iter()
            .find(|d| d.endpoint_id == endpoint)
            .cloned()
            .unwrap()
    };
    let delivered = of(&ok_id);
    assert_eq!(
        (delivered.state, delivered.attempts, delivered.last_status),
        (DeliveryState::Delivered, 3, Some(200))
    );
    let refused = of(&redirect_id);
    assert_eq!(
        (refused.state, refused.attempts, refused.last_status),
        (DeliveryState::Failed, 4, Some(307))
    );
    assert_eq!(
        deliveries.len(),
        2,
        "one alert, one delivery per endpoint: {deliveries:?}"
    );
    assert_eq!(
        receiver.hits().iter().filter(|h| h.path == "/ok").count(),
        3,
        "nothing delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_webhook_at_least_once_across_a_kill_of_the_sender() {
    let receiver = Receiver::start().await;
    receiver.state.fail.store(usize::MAX, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/gateway.db", dir.path().display());
    let mut vars = support::config_vars(&store_url);
    for (k, v) in alert_vars() {
        vars.insert(k.into(), v.into());
    }
    vars.insert("KEYMETER_WEBHOOK_ATTEMPTS".into(), "100".into());
    // The endpoint and 40 alerts, written by another process's hand (the library, as `keymeter` does).
    let config = keymeter::Config::from_source(&vars).unwrap();
    let store = config.connect().await.unwrap();
    let new = Endpoint::create(
        &format!("{}/ok", receiver.url),
        vec![],
        &config.vault().unwrap(),
        &OsRandom,
        Utc::now(),
        true,
    )
    .unwrap();
    store.add_endpoint(&new.endpoint).await.unwrap();
    receiver.trust(&new.secret);
    let alerts: Vec<Alert> = (0..40)
        .map(|i| {
            Alert::key_unusual(
                &format!("key{i}"),
                "alice",
                "2026-12-03",
                "test",
                Utc::now(),
            )
        })
        .collect();
    assert_eq!(store.push(&alerts).await.unwrap(), 40);
    store.close().await;

    let log = dir.path().join("gateway.log");
    let journal = dir.path().join("journal");
    let journal = journal.to_str().unwrap();
    let mut first = support::binary::start(&vars, &["--journal", journal], &log).await;
    // The receiver refuses everything while the first sender runs; kill it mid-retry.
    receiver
        .wait(Duration::from_secs(20), |h| h.len() >= 40)
        .await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let refused = receiver.hits().len();
    assert!(refused >= 40, "the first sender tried: {refused}");
    receiver.state.fail.store(0, Ordering::SeqCst);
    let _second = support::binary::start(&vars, &["--journal", journal], &log).await;
    let ids: BTreeSet<String> = alerts.iter().map(|a| a.id.clone()).collect();
    let hits = receiver
        .wait(Duration::from_secs(30), |h| {
            let delivered: BTreeSet<&String> =
                h[refused.min(h.len())..].iter().map(|h| &h.id).collect();
            ids.iter().all(|id| delivered.contains(id))
        })
        .await;
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for h in &hits {
        assert!(h.signed, "an unsigned delivery: {h:?}");
        *per_id.entry(h.id.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert!(
            per_id.get(id.as_str()).copied().unwrap_or(0) >= 2,
            "{id} refused once, then delivered"
        );
    }
    assert!(hits[refused..].iter().all(|h| ids.contains(&h.id)));
    // The store agrees: every delivery delivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = config.connect().await.unwrap();
    let deliveries = store.deliveries(100).await.unwrap();
    assert_eq!(deliveries.len(), 40);
    assert!(
        deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Delivered),
        "{deliveries:?}"
    );
    store.close().await;
}

fn github_keys_file(dir: &std::path::Path, signer: &SigningKey) -> String {
    let pem = signer
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let path = dir.join("github-keys.json");
    std::fs::write(
        &path,
        json!({"public_keys": [{"key_identifier": "gh-test-1", "key": pem, "is_current": true}]})
            .to_string(),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

async fn report(
    gw: &support::Gateway,
    signer: &SigningKey,
    key_id: &str,
    body: &str,
) -> (u16, Value) {
    let signature: DerSignature = signer.sign(body.as_bytes());
    let answer = gw
        .client
        .post(format!("{}/secret-scanning/github", gw.url))
        .header("content-type", "application/json")
        .header("Github-Public-Key-Identifier", key_id)
        .header(
            "Github-Public-Key-Signature",
            base64::engine::general_purpose::STANDARD.encode(signature.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_reports_revoke_leaked_keys_and_alert_once() {
    let up = support::upstream().await;
    let keys_dir = tempfile::tempdir().unwrap();
    let github = SigningKey::from_slice(&[9u8; 32]).unwrap();
    let impostor = SigningKey::from_slice(&[8u8; 32]).unwrap();
    let keys_file = github_keys_file(keys_dir.path(), &github);
    let (gw, _dir) = sqlite_gateway_with(&up, &[("KEYMETER_GITHUB_KEYS", &keys_file)]).await;
    let receiver = Receiver::start().await;
    let (_, secret) = endpoint(
        &gw,
        &format!("{}/ok", receiver.url),
        vec![AlertKind::KeyLeaked],
    )
    .await;
    receiver.trust(&secret);
    let (leaked_id, leaked) = gw
        .key(json!({"name": "leaky", "owner": "alice", "permissions": ["reports"]}))
        .await;
    let (_, safe) = gw
        .key(json!({"name": "safe", "owner": "bob", "permissions": ["reports"]}))
        .await;
    let alive = |key: String| {
        let gw = &gw;
        async move {
            gw.call(Method::GET, "/api/v1/key", Some(&key), None)
                .await
                .0
        }
    };
    assert_eq!(alive(leaked.clone()).await, 200);

    // A report signed by another key, or unsigned, is refused and revokes nothing.
    let body = json!([{"token": safe, "type": "keymeter_api_key", "url": "https://github.com/a/b", "source": "content"}]).to_string();
    let (s, refused) = report(&gw, &impostor, "gh-test-1", &body).await;
    assert_eq!((s, support::code(&refused)), (401, "INVALID_SIGNATURE"));
    let (s, _) = report(&gw, &github, "gh-unknown", &body).await;
    assert_eq!(s, 401);
    let unsigned = gw
        .client
        .post(format!("{}/secret-scanning/github", gw.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        alive(safe.clone()).await,
        200,
        "nothing revoked by an unverified report"
    );

    // GitHub's report: the leaked key, a token of another shape, a keymeter-shaped token of no key.
    let forged = {
        let (head, _) = leaked.rsplit_once('_').unwrap();
        let body = format!("{head}_{}", "A".repeat(32));
        format!(
            "{body}{}",
            String::from_utf8(keymeter::keys::token::checksum(body.as_bytes()).to_vec()).unwrap()
        )
    };
    let body = json!([
        {"token": leaked, "type": "keymeter_api_key", "url": "https://github.com/acme/app/blob/main/.env", "source": "content"},
        {"token": "ghp_notours", "type": "keymeter_api_key", "url": "https://github.com/x", "source": "content"},
        {"token": forged, "type": "keymeter_api_key", "url": "https://github.com/y", "source": "commit"}
    ])
    .to_string();
    let (s, answer) = report(&gw, &github, "gh-test-1", &body).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(
        answer,
        json!([
            {"token_raw": leaked, "token_type": "keymeter_api_key", "label": "true_positive"},
            {"token_raw": "ghp_notours", "token_type": "keymeter_api_key", "label": "false_positive"},
            {"token_raw": forged, "token_type": "keymeter_api_key", "label": "false_positive"}
        ])
    );
    let (s, _, refusal) = gw
        .call(Method::GET, "/api/v1/key", Some(&leaked), None)
        .await;
    assert_eq!(
        (s, support::code(&refusal)),
        (401, "REVOKED"),
        "revoked at once"
    );
    assert_eq!(alive(safe.clone()).await, 200);
    let hits = receiver
        .wait(Duration::from_secs(10), |h| !h.is_empty())
        .await;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(hits[0].signed);
    assert_eq!(hits[0].kind, "key.leaked");
    assert_eq!(hits[0].body["data"]["key_id"], leaked_id.as_str());
    assert_eq!(hits[0].body["data"]["owner"], "alice");
    assert_eq!(
        hits[0].body["data"]["url"],
        "https://github.com/acme/app/blob/main/.env"
    );
    assert!(
        !hits[0].body.to_string().contains(&leaked),
        "the alert never carries the token"
    );

    // Reported again: still a true positive, no second alert.
    let again = json!([{"token": leaked, "type": "keymeter_api_key", "url": "https://github.com/z", "source": "content"}]).to_string();
    let (s, answer) = report(&gw, &github, "gh-test-1", &again).await;
    assert_eq!(
        (s, answer[0]["label"].as_str()),
        (200, Some("true_positive"))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 1, "one alert per key");
    // A body that is not GitHub's list, correctly signed: 400, nothing done.
    let (s, bad) = report(&gw, &github, "gh-test-1", "{\"token\": 1}").await;
    assert_eq!((s, support::code(&bad)), (400, "INVALID_REQUEST"));
    // The secret never reached the gateway's answers beyond GitHub's own echo.
    assert!(!format!("{:?}", gw.app.intake).contains(leaked.as_str()));
    let _ = secret.expose_secret();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_alerted_from_the_spool_and_its_end_through_the_outbox() {
    let Some(pg) = support::postgres::Postgres::start_new() else {
        eprintln!(
            "skipping a_store_outage_is_alerted…: no PostgreSQL server binaries or postgres user (CI installs them)"
        );
        return;
    };
    let up = support::upstream().await;
    let journal = tempfile::tempdir().unwrap();
    let mut config = support::config_with(&pg.url(), &alert_vars());
    config.journal_dir = Some(journal.path().join("journal"));
    let gw = support::serve_with(
        &config,
        support::settings(&up),
        keymeter_gateway::server::Limits::default(),
        "ops",
    )
    .await;
    let receiver = Receiver::start().await;
    let (_, secret) = endpoint(
        &gw,
        &format!("{}/ok", receiver.url),
        vec![AlertKind::DependencyDown, AlertKind::DependencyUp],
    )
    .await;
    receiver.trust(&secret);
    // A pass reads the endpoint (every second), then the database goes away for real.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.stop("fast");
    let down = receiver
        .wait(Duration::from_secs(20), |h| {
            h.iter().any(|h| h.kind == "dependency.down")
        })
        .await;
    let spooled = std::fs::read_dir(journal.path().join("journal/alerts"))
        .map(|d| d.count())
        .unwrap_or(0);
    pg.start();
    let hits = receiver
        .wait(Duration::from_secs(30), |h| {
            h.iter().any(|h| h.kind == "dependency.up")
        })
        .await;
    let down_hit = down
        .iter()
        .find(|h| h.kind == "dependency.down")
        .expect("dependency.down delivered while the store was away");
    assert!(down_hit.signed);
    assert_eq!(down_hit.body["data"]["dependency"], "store");
    assert!(
        down_hit.body["data"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    let up_hit = hits
        .iter()
        .find(|h| h.kind == "dependency.up")
        .expect("dependency.up delivered once the store is back");
    assert!(up_hit.signed);
    assert_eq!(
        hits.iter().filter(|h| h.kind == "dependency.down").count(),
        1,
        "the spooled alert is delivered once: {hits:?}"
    );
    assert_eq!(spooled, 0, "the spool file goes once delivered");
    drop(gw);
}
