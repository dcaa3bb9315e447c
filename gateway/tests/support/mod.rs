//! What the gateway tests and the load bench share: a stand-in upstream (OpenAI's and Anthropic's endpoints with
//! fixed usage, streamed and not) and a gateway served on a loopback port.
#![allow(dead_code)]

pub mod binary;
pub mod postgres;

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
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, EventFilter, UsageEvent};
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{ServiceTier, UsageFormat};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// The usage the stand-in reports for every OpenAI call.
pub const OPENAI_USAGE: &str = r#"{"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200}}"#;
/// The usage it reports for every Anthropic call.
pub const ANTHROPIC_USAGE: &str =
    r#"{"input_tokens": 900, "output_tokens": 250, "cache_read_input_tokens": 100}"#;
/// The usage it reports for every OpenAI Responses call (reasoning within the output).
pub const RESPONSES_USAGE: &str = r#"{"input_tokens": 1000, "output_tokens": 400, "total_tokens": 1400,
    "input_tokens_details": {"cached_tokens": 100}, "output_tokens_details": {"reasoning_tokens": 150}}"#;
/// The usage it reports for every OpenAI embeddings call.
pub const EMBEDDINGS_USAGE: &str = r#"{"prompt_tokens": 8000, "total_tokens": 8000}"#;
/// The usage it reports for every Gemini call (thinking apart from the candidates, implicit cache within the
/// prompt).
pub const GEMINI_USAGE: &str = r#"{"promptTokenCount": 700, "candidatesTokenCount": 200, "thoughtsTokenCount": 50,
    "cachedContentTokenCount": 100, "totalTokenCount": 950}"#;
/// The system keys the tests store.
pub const SYSTEM_OPENAI_KEY: &str = "sk-proj-system0000000000000000000000000000";
pub const USER_OPENAI_KEY: &str = "sk-proj-useralice11111111111111111111111111";
pub const SYSTEM_GOOGLE_KEY: &str = "AIzaSyStandInSystemKey00000000000000000";
pub const USER_GOOGLE_KEY: &str = "AIzaSyStandInAliceKey111111111111111111";

/// What the stand-in saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// The provider key that reached it (`Authorization: Bearer …`, `x-api-key` or `x-goog-api-key`).
    pub key: String,
    pub body: Value,
}

/// A stand-in for OpenAI (chat, Responses, embeddings), Anthropic and Gemini on a loopback port. The request's
/// `"user"` field steers it: `fail` answers 500, `slow` streams 40 chunks 25 ms apart (a whole answer waits
/// 400 ms before its headers), `long` waits 5 s before a whole answer, `nousage` reports no usage.
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

/// The provider APIs the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Messages,
    Responses,
    Embeddings,
    Gemini,
}

pub async fn upstream() -> Upstream {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let route = |api: Api| {
        let seen = seen.clone();
        post(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move { answer(&seen, api, &uri, &headers, &body).await }
            },
        )
    };
    let router = Router::new()
        .route("/v1/chat/completions", route(Api::Chat))
        .route("/v1/messages", route(Api::Messages))
        .route("/v1/responses", route(Api::Responses))
        .route("/v1/embeddings", route(Api::Embeddings))
        .route("/v1beta/models/{target}", route(Api::Gemini))
        .route("/v1/models/{target}", route(Api::Gemini));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Upstream { url, seen }
}

async fn answer(
    seen: &Mutex<Vec<Seen>>,
    api: Api,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = match api {
        Api::Messages => headers.get("x-api-key"),
        Api::Gemini => headers.get("x-goog-api-key"),
        _ => headers.get("authorization"),
    }
    .and_then(|v| v.to_str().ok())
    .unwrap_or("")
    .trim_start_matches("Bearer ")
    .to_owned();
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
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
    let streaming = match api {
        Api::Gemini => uri.path().ends_with(":streamGenerateContent"),
        _ => body["stream"] == true,
    };
    if mode == "slow" && !streaming {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    if mode == "long" && !streaming {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if streaming {
        let chunks = match api {
            Api::Messages => anthropic_events(usage),
            Api::Responses => responses_events(usage),
            Api::Gemini => gemini_chunks(usage),
            _ => {
                let asked = body["stream_options"]["include_usage"] == true;
                openai_chunks(usage && asked)
            }
        };
        let (count, pause) = if mode == "slow" {
            (40, Duration::from_millis(25))
        } else {
            (3, Duration::ZERO)
        };
        return sse(chunks, count, pause);
    }
    let (mut answer, field, reported) = match api {
        Api::Messages => (
            json!({"id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": "hello"}]}),
            "usage",
            ANTHROPIC_USAGE,
        ),
        // As OpenAI answers a request it served at its default tier, whatever tier the request asked for.
        Api::Chat => (
            json!({"id": "chatcmpl-1", "object": "chat.completion", "service_tier": "default",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]}),
            "usage",
            OPENAI_USAGE,
        ),
        Api::Responses => (
            json!({"id": "resp_1", "object": "response", "status": "completed", "model": body["model"],
                "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "hello", "annotations": []}]}]}),
            "usage",
            RESPONSES_USAGE,
        ),
        Api::Embeddings => (
            json!({"object": "list", "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}]}),
            "usage",
            EMBEDDINGS_USAGE,
        ),
        Api::Gemini => (
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hello"}]},
                "finishReason": "STOP", "index": 0}], "modelVersion": "gemini-2.5-flash"}),
            "usageMetadata",
            GEMINI_USAGE,
        ),
    };
    if usage {
        answer[field] = serde_json::from_str(reported).unwrap();
    }
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

fn responses_events(usage: bool) -> Script {
    let response = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_1","object":"response","status":"{status}","model":"gpt-5-mini","output":[],"usage":{usage}}}"#
        )
    };
    let created = format!(
        r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
        response("in_progress", "null")
    );
    let text = r#"{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"hi ","logprobs":[]}"#;
    let completed = format!(
        r#"{{"type":"response.completed","sequence_number":2,"response":{}}}"#,
        response(
            "completed",
            &if usage {
                RESPONSES_USAGE.replace('\n', "")
            } else {
                "null".into()
            }
        )
    );
    (vec![created], text.into(), vec![completed])
}

fn gemini_chunks(usage: bool) -> Script {
    // Every chunk carries the usage so far; the last one is the total.
    let so_far = if usage {
        r#","usageMetadata":{"promptTokenCount":700,"totalTokenCount":700}"#
    } else {
        ""
    };
    let text = format!(
        r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":"hi "}}]}},"index":0}}]{so_far}}}"#
    );
    let total = if usage {
        format!(r#","usageMetadata":{}"#, GEMINI_USAGE.replace('\n', ""))
    } else {
        String::new()
    };
    let last = format!(
        r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":"."}}]}},"finishReason":"STOP","index":0}}]{total}}}"#
    );
    (Vec::new(), text, vec![last])
}

fn anthropic_events(usage: bool) -> Script {
    // As Anthropic streams: the message without content, each block started and stopped around its deltas.
    let usage_start = if usage {
        r#","usage":{"input_tokens":900,"cache_read_input_tokens":100,"output_tokens":1}"#
    } else {
        ""
    };
    let start = format!(
        r#"{{"type":"message_start","message":{{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null{usage_start}}}}}"#
    );
    let block =
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    let text =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi "}}"#;
    let delta = if usage {
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":250}}"#
    } else {
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#
    };
    (
        vec![start, block.into()],
        text.into(),
        vec![
            r#"{"type":"content_block_stop","index":0}"#.into(),
            delta.into(),
            r#"{"type":"message_stop"}"#.into(),
        ],
    )
}

fn sse((first, text, last): Script, count: usize, pause: Duration) -> Response {
    let events: Vec<String> = first
        .into_iter()
        .chain(std::iter::repeat_n(text, count))
        .chain(last)
        .map(|e| {
            // Anthropic and the Responses API name each event, as their SDKs expect; chat and Gemini do not.
            match serde_json::from_str::<Value>(&e)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
            {
                Some(kind) => format!("event: {kind}\ndata: {e}\n\n"),
                None => format!("data: {e}\n\n"),
            }
        })
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
        gemini_base_url: upstream.url.clone(),
        upstream_timeout: Duration::from_secs(30),
        ..app::Settings::default()
    }
}

/// A gateway on `store`, with the system OpenAI and Google keys stored and an operator-wide admin key for `admin_owner`.
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
    set_key(
        &*app.store,
        &app.vault,
        &CredentialScope::System,
        &Provider::google(),
        SYSTEM_GOOGLE_KEY,
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

    /// Sets a budget of `limit` dollars a `period` on `scope`.
    pub async fn budget(&self, scope: BudgetScope, limit: Decimal, period: BudgetPeriod) {
        let budget = Budget::new(scope, limit, period).unwrap();
        self.app.store.set_budget(&budget).await.unwrap();
    }

    /// Sets a monthly budget of `dollars` on `owner`.
    pub async fn monthly_budget(&self, owner: &str, dollars: i64) {
        self.budget(
            BudgetScope::Owner(owner.into()),
            Decimal::from(dollars),
            BudgetPeriod::Monthly,
        )
        .await;
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

/// What the catalog charges `model` for `usage` (a provider's usage object, or a response holding one) today.
pub fn expected_cost(gw: &Gateway, model: &str, format: UsageFormat, usage: &str) -> Decimal {
    let usage = normalize(format, usage).unwrap();
    gw.app
        .meter
        .catalog()
        .cost(model, &usage, chrono::Utc::now(), ServiceTier::Standard)
        .unwrap()
        .total
}

/// The events of `owner`, oldest first.
pub async fn events_of(gw: &Gateway, owner: &str) -> Vec<UsageEvent> {
    gw.app
        .store
        .events(&EventFilter::new().owner(owner))
        .await
        .unwrap()
}

/// Waits (at most 5 s) until `owner` has `n` events: requests settle after their answer is sent.
pub async fn wait_events(gw: &Gateway, owner: &str, n: usize) -> Vec<UsageEvent> {
    for _ in 0..100 {
        let events = events_of(gw, owner).await;
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{owner} never had {n} events");
}

/// The `code` of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
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
