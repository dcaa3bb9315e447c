//! What the gateway tests and the load bench share: a stand-in upstream (OpenAI's and Anthropic's endpoints with
//! fixed usage, streamed and not) and a gateway served on a loopback port.
#![allow(dead_code)]

pub mod binary;

pub use keymeter_gateway as app;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use keymeter::Config;
use keymeter::credentials::{CredentialScope, Provider, set_key};
use keymeter::keys::{NewKey, Scope};
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// The usage the stand-in reports for every OpenAI call.
pub const OPENAI_USAGE: &str = r#"{"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200}}"#;
/// The usage it reports for every Anthropic call.
pub const ANTHROPIC_USAGE: &str =
    r#"{"input_tokens": 900, "output_tokens": 250, "cache_read_input_tokens": 100}"#;
/// The system keys the tests store.
pub const SYSTEM_OPENAI_KEY: &str = "sk-proj-system0000000000000000000000000000";
pub const USER_OPENAI_KEY: &str = "sk-proj-useralice11111111111111111111111111";

/// What the stand-in saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// The provider key that reached it (`Authorization: Bearer …` or `x-api-key`).
    pub key: String,
    pub body: Value,
}

/// A stand-in for OpenAI and Anthropic on a loopback port. The request's `"user"` field steers it: `fail` answers
/// 500, `slow` streams 40 chunks 25 ms apart (a whole answer waits 400 ms before its headers), `long` waits 5 s
/// before a whole answer, `nousage` reports no usage.
#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn calls(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub async fn upstream() -> Upstream {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let openai_seen = seen.clone();
    let anthropic_seen = seen.clone();
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = openai_seen.clone();
                async move { answer(&seen, "/v1/chat/completions", &headers, &body, false).await }
            }),
        )
        .route(
            "/v1/messages",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = anthropic_seen.clone();
                async move { answer(&seen, "/v1/messages", &headers, &body, true).await }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Upstream { url, seen }
}

async fn answer(
    seen: &Mutex<Vec<Seen>>,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    anthropic: bool,
) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = if anthropic {
        headers.get("x-api-key")
    } else {
        headers.get("authorization")
    }
    .and_then(|v| v.to_str().ok())
    .unwrap_or("")
    .trim_start_matches("Bearer ")
    .to_owned();
    seen.lock().unwrap().push(Seen {
        path: path.into(),
        key,
        body: body.clone(),
    });
    let mode = body["user"].as_str().unwrap_or("");
    if mode == "fail" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "upstream broke", "type": "server_error"}})),
        )
            .into_response();
    }
    let usage = mode != "nousage";
    if mode == "slow" && body["stream"] != true {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    if mode == "long" && body["stream"] != true {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if body["stream"] == true {
        let chunks = if anthropic {
            anthropic_events(usage)
        } else {
            let asked = body["stream_options"]["include_usage"] == true;
            openai_chunks(usage && asked)
        };
        let (count, pause) = if mode == "slow" {
            (40, Duration::from_millis(25))
        } else {
            (3, Duration::ZERO)
        };
        return sse(chunks, count, pause);
    }
    let answer = if anthropic {
        let mut a = json!({"id": "msg_1", "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": "hello"}]});
        if usage {
            a["usage"] = serde_json::from_str(ANTHROPIC_USAGE).unwrap();
        }
        a
    } else {
        // As OpenAI answers a request it served at its default tier, whatever tier the request asked for.
        let mut a = json!({"id": "chatcmpl-1", "object": "chat.completion", "service_tier": "default",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]});
        if usage {
            a["usage"] = serde_json::from_str(OPENAI_USAGE).unwrap();
        }
        a
    };
    axum::Json(answer).into_response()
}

/// (first events, one text event, last events) of a stream.
type Script = (Vec<String>, String, Vec<String>);

fn openai_chunks(usage: bool) -> Script {
    let text = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi "}}],"usage":null}"#;
    let mut last = vec![
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#.to_owned(),
    ];
    if usage {
        last.push(format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],"usage":{}}}"#,
            OPENAI_USAGE.replace('\n', "")
        ));
    }
    last.push("[DONE]".into());
    (Vec::new(), text.into(), last)
}

fn anthropic_events(usage: bool) -> Script {
    let start = if usage {
        r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":900,"cache_read_input_tokens":100,"output_tokens":1}}}"#
    } else {
        r#"{"type":"message_start","message":{"id":"msg_1"}}"#
    };
    let text =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi "}}"#;
    let delta = if usage {
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":250}}"#
    } else {
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#
    };
    (
        vec![start.into()],
        text.into(),
        vec![delta.into(), r#"{"type":"message_stop"}"#.into()],
    )
}

fn sse((first, text, last): Script, count: usize, pause: Duration) -> Response {
    let events: Vec<String> = first
        .into_iter()
        .chain(std::iter::repeat_n(text, count))
        .chain(last)
        .map(|e| format!("data: {e}\n\n"))
        .collect();
    let stream = futures_util::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(next)), it))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A gateway on a loopback port, its app, a client and an admin key.
pub struct Gateway {
    pub url: String,
    pub app: Arc<app::App>,
    pub client: reqwest::Client,
    pub admin: String,
    _dir: Option<tempfile::TempDir>,
}

/// The configuration every test gateway shares (so two instances on one database share secrets too).
pub fn config(store: &str) -> Config {
    config_with(store, &[])
}

/// The variables of [`config`], for a process of the real binary.
pub fn config_vars(store: &str) -> HashMap<String, String> {
    HashMap::from([
        ("KEYMETER_ENV".to_owned(), "production".to_owned()),
        ("KEYMETER_STORE".to_owned(), store.to_owned()),
        (
            "KEYMETER_PEPPER".to_owned(),
            "p1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_owned(),
        ),
        (
            "KEYMETER_MASTER_KEYS".to_owned(),
            "k1:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=".to_owned(),
        ),
    ])
}

/// [`config`] with `extra` variables on top (a limiter URL, say).
pub fn config_with(store: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars = config_vars(store);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut config = Config::from_source(&vars).expect("test configuration");
    // In process, settles reach the store before the answer, so a test reads them at once; the tests of the
    // binary run it with its journal.
    config.journal_dir = None;
    config
}

/// A gateway on a fresh SQLite database in a temporary directory.
pub async fn sqlite_gateway(upstream: &Upstream) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    let mut gw = serve(&url, upstream, "ops").await;
    gw._dir = Some(dir);
    gw
}

/// The settings of a test gateway in front of `upstream`.
pub fn settings(upstream: &Upstream) -> app::Settings {
    app::Settings {
        openai_base_url: upstream.url.clone(),
        anthropic_base_url: upstream.url.clone(),
        upstream_timeout: Duration::from_secs(30),
        ..app::Settings::default()
    }
}

/// A gateway on `store`, with the system OpenAI key stored and an operator-wide admin key for `admin_owner`.
pub async fn serve(store: &str, upstream: &Upstream, admin_owner: &str) -> Gateway {
    serve_with(
        &config(store),
        settings(upstream),
        app::server::Limits::default(),
        admin_owner,
    )
    .await
}

/// A gateway built from `config`, `settings` and `limits`, as [`serve`] describes.
pub async fn serve_with(
    config: &Config,
    settings: app::Settings,
    limits: app::server::Limits,
    admin_owner: &str,
) -> Gateway {
    let built = app::Gateway::build(config, settings)
        .await
        .expect("gateway builds");
    let app = built.app.clone();
    set_key(
        &*app.store,
        &app.vault,
        &CredentialScope::System,
        &Provider::openai(),
        SYSTEM_OPENAI_KEY,
    )
    .await
    .unwrap();
    let admin = app
        .issuer
        .issue(NewKey::new("admin", admin_owner).scopes(Scope::parse_list("*").unwrap()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(app::server::serve(
        listener,
        built,
        limits,
        std::future::pending(),
    ));
    Gateway {
        url,
        app,
        client: keymeter::http::client(Duration::from_secs(30)).unwrap(),
        admin: admin.token.expose_secret().to_owned(),
        _dir: None,
    }
}

impl Gateway {
    /// Sends `method path` with `key` as a bearer token and `body` as JSON (when given); returns the status,
    /// headers and JSON body (`Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = send(request).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap_or_default();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `POST path` with `key` as a bearer token, to add headers or a body to.
    pub fn post(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
    }

    /// `POST path` with `body` as JSON; the whole response (streams are read by the caller).
    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        send(self.post(path, key).json(body)).await
    }

    /// `POST path` with `body` as it is (JSON or not).
    pub async fn post_raw(&self, path: &str, key: &str, body: &str) -> reqwest::Response {
        send(
            self.post(path, key)
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// A key made through the admin endpoint: (id, secret).
    pub async fn key(&self, body: Value) -> (String, String) {
        let (status, _, created) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/api-keys",
                Some(&self.admin),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        )
    }
}

/// Sends `request` to a gateway that must answer.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("the gateway answers")
}

/// A database at `store_url` with the system OpenAI key, a monthly budget of `budget` dollars for alice, and a
/// key of hers that may chat (returned).
pub async fn prepare_alice(store_url: &str, budget: u32) -> String {
    let config = config(store_url);
    let store = config.connect().await.unwrap();
    set_key(
        &*store,
        &config.vault().unwrap(),
        &CredentialScope::System,
        &Provider::openai(),
        SYSTEM_OPENAI_KEY,
    )
    .await
    .unwrap();
    store
        .set_budget(
            &Budget::new(
                BudgetScope::Owner("alice".into()),
                Decimal::from(budget),
                BudgetPeriod::Monthly,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let issued = config
        .issuer(store.clone())
        .unwrap()
        .issue(NewKey::new("chat", "alice").scopes(Scope::parse_list("llm:chat").unwrap()))
        .await
        .unwrap();
    store.close().await;
    issued.token.expose_secret().to_owned()
}
