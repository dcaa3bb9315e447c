//! The reference gateway's application: its state and router (DESIGN §12). `main.rs` reads the flags and serves
//! it; the tests and the load bench build it the same way, in process.

mod admin;
mod me;
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, patch, post};
use keymeter::Config;
use keymeter::credentials::{CredentialResolver, Vault};
use keymeter::keys::{KeyIssuer, KeyRecord, KeyStore, Scope, ScopeRequirement, Verifier};
use keymeter::ledger::Meter;
use keymeter::stats::StatsRecorder;
use keymeter::store::Store;
use keymeter_axum::{ApiError, ClientIp, KeyAuth};
use serde::de::DeserializeOwned;

/// What the flags and defaults decide beyond [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// OpenAI's base URL (the proxy posts to `{base}/v1/chat/completions`).
    pub openai_base_url: String,
    /// Anthropic's base URL (`{base}/v1/messages`).
    pub anthropic_base_url: String,
    /// The output cap reserved (and sent upstream) when a request names none.
    pub default_max_tokens: u64,
    /// The largest proxied request body.
    pub max_proxy_body: usize,
    /// The largest body of every other endpoint.
    pub max_api_body: usize,
    /// A whole upstream exchange, streams included.
    pub upstream_timeout: Duration,
    /// Where the client address comes from.
    pub client_ip: ClientIp,
    /// How often key statistics are written.
    pub stats_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            openai_base_url: "https://api.openai.com".into(),
            anthropic_base_url: "https://api.anthropic.com".into(),
            default_max_tokens: 4096,
            max_proxy_body: 8 << 20,
            max_api_body: 64 << 10,
            upstream_timeout: Duration::from_secs(600),
            client_ip: ClientIp::Connection,
            stats_interval: Duration::from_secs(10),
        }
    }
}

/// Everything a handler needs, built once from the configuration.
#[derive(Debug)]
pub struct App {
    pub store: Arc<dyn Store>,
    /// The store's keys behind the in-process cache the verifier reads.
    pub keys: Arc<dyn KeyStore>,
    pub verifier: Arc<Verifier>,
    pub issuer: KeyIssuer,
    pub resolver: CredentialResolver,
    pub vault: Arc<Vault>,
    pub meter: Meter,
    pub stats: Arc<StatsRecorder>,
    pub http: reqwest::Client,
    pub settings: Settings,
}

/// The state every handler gets.
pub type State = axum::extract::State<Arc<App>>;

/// A built gateway: the router to serve, and the app to close when done.
pub struct Gateway {
    pub router: Router,
    pub app: Arc<App>,
}

impl Gateway {
    /// Connects the configured store and builds the verifier (cached keys, rate limits, statistics), issuer,
    /// resolver and meter.
    ///
    /// # Errors
    /// Configuration and store failures.
    pub async fn build(config: &Config, settings: Settings) -> keymeter::Result<Gateway> {
        let store = config.connect().await?;
        let keys = config.key_cache(store.clone()).await?;
        let limiter = config.limiter(store.clone()).await?;
        let stats = Arc::new(StatsRecorder::new(store.clone()));
        stats.spawn_flusher(settings.stats_interval);
        let verifier = Arc::new(
            config
                .verifier(keys.clone())?
                .with_limits(store.clone(), limiter)
                .with_stats(stats.clone()),
        );
        let app = Arc::new(App {
            issuer: config.issuer(keys.clone())?,
            keys,
            resolver: config.resolver(store.clone())?,
            vault: config.vault()?,
            meter: config.meter(store.clone())?,
            http: keymeter::http::client(settings.upstream_timeout)?,
            verifier,
            stats,
            store,
            settings,
        });
        Ok(Gateway {
            router: router(app.clone()),
            app,
        })
    }
}

impl App {
    /// Writes the statistics still counted in memory and closes the store.
    pub async fn close(&self) {
        if let Err(e) = self.stats.close().await {
            tracing::warn!(error = %e, "could not write key statistics at shutdown");
        }
        self.store.close().await;
    }
}

fn scopes(list: &[&str]) -> ScopeRequirement {
    ScopeRequirement::all(list.iter().copied()).expect("the gateway's scope names are valid")
}

/// The endpoint table of DESIGN §12.
pub fn router(app: Arc<App>) -> Router {
    let auth = KeyAuth::new(app.verifier.clone()).with_client_ip(app.settings.client_ip.clone());
    let chat = auth.require(scopes(&["llm:chat"]));
    let any = auth.require(ScopeRequirement::None);
    let admin = auth.require(scopes(&["admin"]));
    Router::new()
        .route(
            "/v1/chat/completions",
            post(proxy::openai).layer(chat.clone()),
        )
        .route("/v1/messages", post(proxy::anthropic).layer(chat))
        .route(
            "/v2/users/me/api-key-status",
            get(me::key_status).layer(any.clone()),
        )
        .route(
            "/v2/users/me/api-key",
            patch(me::set_keys).delete(me::delete_keys).layer(any),
        )
        .route(
            "/api/v1/api-keys",
            post(admin::create).get(admin::list).layer(admin.clone()),
        )
        .route(
            "/api/v1/api-keys/{id}",
            delete(admin::revoke).layer(admin.clone()),
        )
        .route(
            "/api/v1/api-keys/revoke-all",
            post(admin::revoke_all).layer(admin.clone()),
        )
        .route(
            "/api/v1/api-keys/{id}/rotate",
            post(admin::rotate).layer(admin.clone()),
        )
        .route(
            "/api/v1/api-keys/{id}/stats",
            get(admin::stats).layer(admin),
        )
        .route(
            "/api/v1/usage",
            // Each method its own scope: a method router's layer wraps every method added before it.
            post(me::ingest)
                .layer(auth.require(scopes(&["write"])))
                .merge(get(me::report).layer(auth.require(scopes(&["reports"])))),
        )
        .route(
            "/api/v1/budget",
            get(me::budget).layer(auth.require(scopes(&["billing"]))),
        )
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(app)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such endpoint",
    )
}

/// A JSON body: 400 when it is not JSON (or too large), 422 when it is JSON of the wrong shape or with a bad
/// value. Nothing has been changed when either is returned.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::unprocessable(format!("bad request body: {e}")),
            _ => ApiError::bad_request(format!("the body is not JSON: {e}")),
        }
    })
}

/// The body, read up to `limit` bytes: more is a 413 with the error body, and nothing was read into memory past
/// the limit.
pub async fn body_bytes(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the body is larger than {limit} bytes, or was cut short"),
        )
    })
}

/// Whether `key` holds `admin`.
pub fn is_admin(key: &KeyRecord) -> bool {
    let admin = Scope::new("admin").expect("valid scope");
    key.scopes.iter().any(|s| s.grants(&admin))
}

/// Whether admin `key` may manage `target`: an admin key of an organisation manages that organisation's keys
/// only; one without an organisation manages every key.
pub fn manages(key: &KeyRecord, target: &KeyRecord) -> bool {
    key.org.is_none() || key.org == target.org
}

/// A request id chosen by a client, kept apart per owner so one owner's ids never collide with another's: the
/// owner's length, the owner, the id.
pub fn owner_request_id(owner: &str, id: &str) -> String {
    format!("{}:{owner}:{id}", owner.len())
}
