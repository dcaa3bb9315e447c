//! A small metered service of one's own: a key guard, the caller's own OpenAI key before the operator's, the
//! worst case held while OpenAI answers, the reported usage settled, and the caller's spend by day.
//!
//! ```sh
//! OPENAI_API_KEY=sk-proj-… cargo run -p keymeter-axum --example service
//! # then, with the key it prints:
//! curl -H "Authorization: Bearer km_live_…" -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \
//!   http://127.0.0.1:3000/v1/chat/completions
//! curl -H "Authorization: Bearer km_live_…" http://127.0.0.1:3000/usage
//! ```
//!
//! `OPENAI_BASE_URL` points it elsewhere (a test points it at a stand-in); `PORT` picks the port (0: any).

use std::net::SocketAddr;

use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use keymeter::credentials::{CredentialScope, Provider};
use keymeter::keys::{NewKey, Scope};
use keymeter::ledger::{EventFilter, GroupBy, MeteredRequest, Report};
use keymeter::pricing::{Usage, UsageFormat};
use keymeter::{Config, ExposeSecret, Keymeter, Tz, serde_json::Value};
use keymeter_axum::{ApiError, KeyAuth, VerifiedKey};

#[derive(Clone)]
struct App {
    km: Keymeter,
    http: reqwest::Client,
    upstream: String,
}

async fn chat(
    State(app): State<App>,
    VerifiedKey(key): VerifiedKey,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let (km, model) = (&app.km, body["model"].as_str().unwrap_or_default());
    let credential = km.resolver.resolve(&key.owner, &Provider::openai()).await?; // the caller's own first
    let request = MeteredRequest::new(&key, model).credential_source(credential.source);
    let worst = Usage::tokens(4_000, body["max_tokens"].as_u64().unwrap_or(1_000));
    let hold = km.meter.reserve(request, &worst).await?; // a `?` from here gives the room back
    km.meter.forwarded(&hold)?; // from here a dropped hold is billed at the reservation instead
    let answer = forward(&app, credential.key.expose_secret(), &body)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "UPSTREAM", e.to_string()))?;
    let metered = km
        .meter
        .settle(hold, (UsageFormat::OpenAi, answer.clone()))
        .await?;
    let mut answer: Value = keymeter::serde_json::from_slice(&answer).unwrap_or_default();
    answer["cost"] = metered.cost.total.to_string().into();
    Ok(Json(answer))
}

async fn forward(app: &App, key: &str, body: &Value) -> reqwest::Result<keymeter::Bytes> {
    let request = app.http.post(&app.upstream).bearer_auth(key);
    let request = request
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    request.send().await?.error_for_status()?.bytes().await
}

async fn usage(
    State(app): State<App>,
    VerifiedKey(key): VerifiedKey,
) -> Result<Json<Report>, ApiError> {
    let mine = EventFilter::new().owner(&key.owner);
    let report = app.km.store.report(&mine, GroupBy::Day, Tz::UTC).await?;
    Ok(Json(report))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::from_env()?;
    config.init_development_secrets()?;
    let km = config.open().await?;
    if let Ok(system_key) = std::env::var("OPENAI_API_KEY") {
        km.set_key(&CredentialScope::System, &Provider::openai(), &system_key)
            .await?;
    }
    let new = NewKey::new("demo", "alice").scopes(Scope::parse_list("llm:chat,usage:read")?);
    println!("key: {}", km.issuer.issue(new).await?.token.expose_secret());

    let auth = KeyAuth::new(km.verifier.clone());
    let base = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com".into());
    let app = App {
        km: km.clone(),
        http: keymeter::http::client(std::time::Duration::from_secs(120))?,
        upstream: format!("{base}/v1/chat/completions"),
    };
    let (chat_scope, usage_scope) = (
        auth.require_all(["llm:chat"])?,
        auth.require_all(["usage:read"])?,
    );
    let router = axum::Router::new()
        .route("/v1/chat/completions", post(chat).layer(chat_scope))
        .route("/usage", get(usage).layer(usage_scope))
        .with_state(app);
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on {}", listener.local_addr()?);
    // The connection's address is what IP rules check: serve with connect info.
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    km.close().await;
    Ok(())
}
