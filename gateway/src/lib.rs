//! # keymeter-gateway
//!
//! The reference service built on [keymeter] and [keymeter-axum](keymeter_axum): OpenAI-, Anthropic- and
//! Gemini-compatible metering proxies that pay with the owner's own provider key (else the system's), key
//! administration, personal provider keys, usage ingest, reports and budgets, on the embedded SQLite store by
//! default or on PostgreSQL for several instances.
//!
//! The binary `keymeter-gateway` reads its flags and [`Config::from_env`]; tests and benches build the same
//! service in process:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keymeter_gateway::{Gateway, Settings, server};
//!
//! let config = keymeter::Config::from_env()?;
//! let gateway = Gateway::build(&config, Settings::default()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server::serve(listener, gateway, server::Limits::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! What survives which fault, and how the HTTP server bounds slow clients, is in `README.md`.
//!
//! [keymeter]: https://docs.rs/keymeter
#![forbid(unsafe_code)]

mod admin;
pub mod console;
mod leaks;
pub mod logs;
mod me;
pub mod metrics;
mod own_keys;
mod proxies;
mod scoped;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, patch, post, put};
use keymeter::Config;
use keymeter::credentials::{CredentialResolver, Vault};
use keymeter::keys::{KeyIssuer, KeyRecord, KeyStore, Scope, ScopeRequirement, Verifier};
use keymeter::ledger::Meter;
use keymeter::limits::RateLimiter;
use keymeter::stats::StatsRecorder;
use keymeter::store::Store;
use keymeter_axum::{ApiError, ClientIp, KeyAuth};
use serde::de::DeserializeOwned;
use tokio_util::task::TaskTracker;

pub use proxies::{COST_HEADER, REQUEST_ID_HEADER, SOURCE_HEADER};

/// On every answer: the milliseconds the gateway itself spent on the request (from its arrival at the router to
/// the answer's headers, less the time spent waiting on the provider), three decimals.
pub const OVERHEAD_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-keymeter-overhead-ms");

/// Stamps [`OVERHEAD_HEADER`] on every answer (key checks included: it wraps every route) and counts the answer
/// in the metrics.
async fn overhead(
    axum::extract::State(app): State,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let mut response = next.run(request).await;
    let waited = response
        .extensions()
        .get::<proxies::UpstreamWait>()
        .map(|w| w.0);
    let upstream = waited.unwrap_or(Duration::ZERO);
    let own = started.elapsed().saturating_sub(upstream);
    app.metrics.answered(
        &method,
        route.as_ref().map(axum::extract::MatchedPath::as_str),
        response.status().as_u16(),
        own,
        waited,
    );
    let millis = format!("{:.3}", own.as_secs_f64() * 1000.0);
    if let Ok(value) = axum::http::HeaderValue::from_str(&millis) {
        response.headers_mut().insert(OVERHEAD_HEADER, value);
    }
    response
}

/// How often the gateway delivers due alerts.
const DELIVERY_INTERVAL: Duration = Duration::from_secs(1);

/// What the flags and defaults decide beyond [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// OpenAI's base URL (the proxy posts to `{base}/v1/chat/completions`).
    pub openai_base_url: String,
    /// Anthropic's base URL (`{base}/v1/messages`).
    pub anthropic_base_url: String,
    /// Gemini's base URL (`{base}/v1beta/models/{model}:generateContent`).
    pub gemini_base_url: String,
    /// The output cap reserved (and sent upstream) when a request names none.
    pub default_max_tokens: u64,
    /// The largest proxied request body.
    pub max_proxy_body: usize,
    /// The largest body of every other endpoint.
    pub max_api_body: usize,
    /// Connecting to a provider (TCP and TLS). A connect that fails or times out releases the reservation:
    /// nothing was sent.
    pub connect_timeout: Duration,
    /// From sending the request to the provider's answer headers. A timeout here bills the reservation: the
    /// request was sent, and what it cost is unknown.
    pub first_byte_timeout: Duration,
    /// A whole upstream exchange, streams included; cut there, it is billed what the provider reported, else
    /// the reservation.
    pub upstream_timeout: Duration,
    /// How long a request body may take to arrive (408 past it).
    pub body_read_timeout: Duration,
    /// Where the client address comes from.
    pub client_ip: ClientIp,
    /// Whether `GET /metrics` is served beside the API (`false` when `--metrics-listen` gives it a listener of
    /// its own: [`Gateway::metrics_router`]).
    pub metrics_on_main: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            openai_base_url: "https://api.openai.com".into(),
            anthropic_base_url: "https://api.anthropic.com".into(),
            gemini_base_url: "https://generativelanguage.googleapis.com".into(),
            default_max_tokens: 4096,
            max_proxy_body: 8 << 20,
            max_api_body: 64 << 10,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            upstream_timeout: Duration::from_secs(600),
            body_read_timeout: Duration::from_secs(30),
            client_ip: ClientIp::Connection,
            metrics_on_main: true,
        }
    }
}

/// Everything a handler needs, built once from the configuration.
#[derive(Debug)]
pub struct App {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The store's keys behind the in-process cache the verifier reads.
    pub keys: Arc<dyn KeyStore>,
    /// The rate limiter the verifier charges (for readiness).
    pub limiter: Arc<dyn RateLimiter>,
    /// Verifies inbound keys.
    pub verifier: Arc<Verifier>,
    /// Issues keys.
    pub issuer: Arc<KeyIssuer>,
    /// The sealed provider keys behind the in-process cache the resolver reads: the gateway writes through it.
    pub credentials: Arc<dyn keymeter::credentials::CredentialStore>,
    /// Resolves the provider key that pays.
    pub resolver: Arc<CredentialResolver>,
    /// Seals and opens provider keys.
    pub vault: Arc<Vault>,
    /// Reserves and settles.
    pub meter: Meter,
    /// Counts verifications.
    pub stats: Arc<StatsRecorder>,
    /// What `/metrics` serves.
    pub metrics: metrics::Metrics,
    /// The client for the providers.
    pub http: reqwest::Client,
    /// The settings.
    pub settings: Settings,
    /// The exchanges in flight: each runs in a task of its own, which shutdown waits for.
    pub exchanges: TaskTracker,
    /// Judges leaked tokens and revokes their keys.
    pub intake: keymeter::leaks::LeakIntake,
    /// GitHub's secret scanning keys (`KEYMETER_GITHUB_KEYS`), loaded at first use.
    pub github_keys: keymeter::leaks::github::KeyCache,
    /// Delivers alerts to webhooks (and watches the store and limiter), every second until closed.
    pub deliverer: Arc<keymeter::alerts::Deliverer>,
    delivering: tokio::task::JoinHandle<()>,
}
/// The state every handler gets.
pub type State = axum::extract::State<Arc<App>>;

/// A built gateway: the router to serve, and the app to close when done.
pub struct Gateway {
    pub router: Router,
    pub app: Arc<App>,
}

impl Gateway {
    /// `GET /metrics` alone, for a listener of its own (`--metrics-listen`), where only the scraper reaches it.
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route("/metrics", get(serve_metrics))
            .with_state(self.app.clone())
    }

    /// Opens keymeter as [`Config::open`] does (the store, cached keys, rate limits, statistics, issuer, resolver,
    /// and the meter with the configured journal: [`Config::journal_dir`], `None` to settle straight to the
    /// store) and builds the routes on it.
    ///
    /// # Errors
    /// Configuration and store failures.
    pub async fn build(config: &Config, settings: Settings) -> keymeter::Result<Gateway> {
        let km = config.open().await?;
        let deliverer = Arc::new(config.deliverer(&km)?);
        let delivering = deliverer.clone().spawn(DELIVERY_INTERVAL);
        let github_keys =
            keymeter::leaks::github::KeyCache::new(config.alerts.github_keys.parse()?);
        let intake = keymeter::leaks::LeakIntake::new(km.verifier.clone(), km.store.clone());
        let http = keymeter::http::builder()?
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|e| keymeter::Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let metrics = metrics::Metrics::new(
            km.verifier.totals().clone(),
            km.lookups.clone(),
            km.meter.clone(),
        );
        let app = Arc::new(App {
            metrics,
            issuer: km.issuer,
            keys: km.keys,
            resolver: km.resolver,
            credentials: km.credentials,
            vault: km.vault,
            meter: km.meter,
            http,
            verifier: km.verifier,
            stats: km.stats,
            store: km.store,
            limiter: km.limiter,
            settings,
            exchanges: TaskTracker::new(),
            intake,
            github_keys,
            deliverer,
            delivering,
        });
        Ok(Gateway {
            router: router(app.clone()),
            app,
        })
    }
}

impl App {
    /// Waits up to `grace` for the exchanges in flight to settle (none starts meanwhile: the server stopped
    /// accepting), then writes the statistics still counted in memory and closes the store.
    pub async fn shutdown(&self, grace: Duration) {
        self.exchanges.close();
        let open = self.exchanges.len();
        if open > 0 {
            tracing::info!(open, "waiting for the exchanges in flight");
        }
        if tokio::time::timeout(grace, self.exchanges.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.exchanges.len(),
                "shutdown grace over with exchanges in flight: the next start bills them from the journal"
            );
        }
        if let Some(journal) = self.meter.journal()
            && !journal.flush(grace).await
        {
            tracing::warn!(
                backlog = journal.backlog(),
                "the store did not take the whole journal before shutdown: the next start replays it"
            );
        }
        // The room leased and no longer in use goes back to the store now, not when the leases lapse.
        if let Some(leases) = self.meter.leases()
            && tokio::time::timeout(grace, leases.close()).await.is_err()
        {
            tracing::warn!(
                "budget leases not given back within the grace: they lapse with the claim TTL"
            );
        }
        self.close().await;
    }

    /// Writes the statistics still counted in memory and closes the store, each within a few seconds (a store
    /// that does not answer must not keep the process from exiting).
    pub async fn close(&self) {
        self.delivering.abort();
        let bound = Duration::from_secs(5);
        match tokio::time::timeout(bound, self.limiter.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not write rate-limit states at shutdown")
            }
            Err(_) => tracing::warn!("rate-limit states not written within 5 s at shutdown"),
        }
        match tokio::time::timeout(bound, self.stats.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not write key statistics at shutdown"),
            Err(_) => tracing::warn!("key statistics not written within 5 s at shutdown"),
        }
        if tokio::time::timeout(bound, self.store.close())
            .await
            .is_err()
        {
            tracing::warn!("the store did not close within 5 s");
        }
    }
}

fn scopes(list: &[&str]) -> ScopeRequirement {
    ScopeRequirement::all(list.iter().copied()).expect("the gateway's scope names are valid")
}

/// The endpoint table (README: "The axum adapter and the reference gateway").
pub fn router(app: Arc<App>) -> Router {
    let auth = KeyAuth::new(app.verifier.clone()).with_client_ip(app.settings.client_ip.clone());
    // The proxies read the body before the rate limits are charged (DESIGN §15's order): their layer defers them.
    let chat = auth.require(scopes(&["llm:chat"])).deferring_limits();
    let any = auth.require(ScopeRequirement::None);
    let admin = auth.require(scopes(&["admin"]));
    let own = auth.require(scopes(&["keys:write"]));
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(proxies::chat).layer(chat.clone()),
        )
        .route(
            "/v1/responses",
            post(proxies::responses).layer(chat.clone()),
        )
        .route(
            "/v1/embeddings",
            post(proxies::embeddings).layer(chat.clone()),
        )
        .route(
            "/v1/models",
            get(proxies::models).layer(auth.require(scopes(&["llm:chat"]))),
        )
        .route("/v1/messages", post(proxies::messages).layer(chat.clone()))
        // Gemini's `{model}:{action}` is one path segment: the handler splits it. Google's SDKs call `v1beta` or,
        // newer ones, `v1`.
        .route(
            "/v1beta/models/{target}",
            post(proxies::generate).layer(chat.clone()),
        )
        .route("/v1/models/{target}", post(proxies::generate).layer(chat))
        .route(
            "/v2/users/me/api-key-status",
            get(me::key_status).layer(any.clone()),
        )
        .route("/api/v1/key", get(me::key).layer(any))
        .route(
            "/api/v1/me/keys",
            get(own_keys::list)
                .post(own_keys::create)
                .layer(own.clone()),
        )
        .route(
            "/api/v1/me/keys/{id}",
            delete(own_keys::revoke).layer(own.clone()),
        )
        .route(
            "/api/v1/me/keys/{id}/rotate",
            post(own_keys::rotate).layer(own),
        )
        .route(
            "/v2/users/me/api-key",
            // Changing or deleting the owner's provider keys needs `write`; reading their status needs none.
            patch(me::set_keys)
                .delete(me::delete_keys)
                .layer(auth.require(scopes(&["write"]))),
        )
        .route(
            "/api/v1/api-keys",
            post(admin::create).get(admin::list).layer(admin.clone()),
        )
        .route(
            "/api/v1/api-keys/{id}",
            delete(admin::revoke)
                .patch(admin::update)
                .layer(admin.clone()),
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
            get(admin::stats).layer(admin.clone()),
        )
        .route(
            "/api/v1/budgets/{scope}",
            put(scoped::put_budget)
                .get(scoped::get_budget)
                .delete(scoped::delete_budget)
                .layer(admin.clone()),
        )
        .route(
            "/api/v1/limits/{scope}",
            put(scoped::put_limits)
                .get(scoped::get_limits)
                .layer(admin.clone()),
        )
        .route(
            "/api/v1/usage/{request_id}/adjust",
            post(admin::adjust).layer(admin),
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
        .route("/secret-scanning/github", post(leaks::github))
        .route("/console", get(console::page))
        .route("/console/", get(console::page))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route("/console/icon.svg", get(console::icon))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let router = if app.settings.metrics_on_main {
        router.route("/metrics", get(serve_metrics))
    } else {
        router
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), overhead))
        .with_state(app)
}

/// `GET /metrics` (Prometheus' text format), after probing the dependencies as `/readyz` does.
async fn serve_metrics(axum::extract::State(app): State) -> axum::response::Response {
    use axum::response::IntoResponse;
    let probed = probe(&app)
        .await
        .into_iter()
        .map(|(name, r)| (name, r.is_ok()))
        .collect();
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics.render(probed),
    )
        .into_response()
}

/// Each dependency's answer to a probe of at most 2 s: the store's and the limiter's.
async fn probe(app: &App) -> [(&'static str, Result<(), String>); 2] {
    let probe = Duration::from_secs(2);
    let state = |r: Result<keymeter::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", probe.as_secs())),
    };
    let (store, limiter) = tokio::join!(
        tokio::time::timeout(probe, app.store.ping()),
        tokio::time::timeout(probe, app.limiter.reachable())
    );
    [("store", state(store)), ("limiter", state(limiter))]
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this endpoint does not take that method (the Allow header lists those it takes)",
    )
}

/// A query string read as `T`: one that does not parse (a duplicate or malformed parameter, a value out of
/// range) is a 400 with the JSON error body, like every other refusal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Params(q))
            .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
    }
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Whether the service can serve: each dependency's state, 200 when all are up, else 503 (for load balancers).
async fn readyz(axum::extract::State(app): State) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut ready = true;
    let mut out = serde_json::Map::new();
    for (name, r) in probe(&app).await {
        let entry = match r {
            Ok(()) => serde_json::json!({"status": "up"}),
            Err(e) => {
                ready = false;
                tracing::warn!(dependency = name, error = %e, "readiness: dependency down");
                serde_json::json!({"status": "down", "error": e})
            }
        };
        out.insert(name.into(), entry);
    }
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    if let Some(journal) = app.meter.journal() {
        out.insert(
            "journal".into(),
            serde_json::json!({"status": "up", "backlog": journal.backlog(), "bytes": journal.bytes()}),
        );
    }
    let body = serde_json::json!({"status": if ready { "ready" } else { "unavailable" }, "dependencies": out});
    (status, axum::Json(body)).into_response()
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

/// The body, read up to `limit` bytes within the settings' body-read timeout: more is a 413 with the error body
/// (nothing was read into memory past the limit), a body that takes longer a 408.
pub async fn body_bytes(
    app: &App,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let timeout = app.settings.body_read_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the body is larger than {limit} bytes, or was cut short"),
        )),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!("the body did not arrive within {} s", timeout.as_secs()),
        )),
    }
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
