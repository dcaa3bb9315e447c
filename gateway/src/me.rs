//! The caller's own things: personal provider keys, usage (ingest and report) and budget. Always the verified
//! key's owner; another owner's report only with `admin` (and `owner=`).

use axum::Json;
use axum::body::Body;
use chrono::{DateTime, Utc};
use keymeter::credentials::{CredentialScope, Provider};
use keymeter::ledger::{BudgetScope, EventFilter, GroupBy, MeteredRequest};
use keymeter::pricing::UsageFormat;
use keymeter_axum::{ApiError, VerifiedKey};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Params, State, body_bytes, is_admin, owner_request_id, parse_json};

/// The personal-key fields of the seeds' API, one per built-in provider.
fn fields() -> [(&'static str, Provider); 3] {
    [
        ("anthropic", Provider::anthropic()),
        ("openai", Provider::openai()),
        ("google", Provider::google()),
    ]
}

async fn status_json(app: &super::App, owner: &str) -> Result<Value, ApiError> {
    let status = app.resolver.status(owner).await?;
    let mut out = serde_json::Map::new();
    for (name, provider) in fields() {
        let has = status.get(&provider).is_some_and(|s| s.user);
        out.insert(format!("has_{name}_key"), Value::Bool(has));
    }
    Ok(Value::Object(out))
}

pub async fn key_status(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(status_json(&app, &key.owner).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonalKeys {
    anthropic_api_key: Option<secrecy::SecretString>,
    openai_api_key: Option<secrecy::SecretString>,
    google_api_key: Option<secrecy::SecretString>,
}

pub async fn set_keys(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    use secrecy::ExposeSecret;
    let req: PersonalKeys = parse_json(&body_bytes(&app, body, app.settings.max_api_body).await?)?;
    let given = [
        (Provider::anthropic(), req.anthropic_api_key),
        (Provider::openai(), req.openai_api_key),
        (Provider::google(), req.google_api_key),
    ];
    let scope = CredentialScope::user(&key.owner)?;
    // Every key is checked and sealed before any is stored: a bad one stores none.
    let mut sealed = Vec::new();
    for (provider, secret) in &given {
        if let Some(secret) = secret {
            provider.check_key(secret.expose_secret())?;
            sealed.push((
                provider,
                app.vault.seal(&scope, provider, secret.expose_secret())?,
            ));
        }
    }
    if sealed.is_empty() {
        return Err(ApiError::unprocessable(
            "give at least one of anthropic_api_key, openai_api_key, google_api_key",
        ));
    }
    for (provider, sealed) in &sealed {
        app.credentials.put(&scope, provider, sealed).await?;
    }
    Ok(Json(status_json(&app, &key.owner).await?))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    /// One provider's key (`anthropic`, `openai`, `google`) instead of all of them.
    provider: Option<String>,
}

pub async fn delete_keys(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
    Params(q): Params<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope = CredentialScope::user(&key.owner)?;
    let deleted = match q.provider {
        None => app.credentials.delete_all(&scope).await?,
        Some(name) => {
            let Some((_, provider)) = fields().into_iter().find(|(n, _)| *n == name) else {
                return Err(ApiError::unprocessable(
                    "provider: one of anthropic, openai, google",
                ));
            };
            u64::from(app.credentials.delete(&scope, &provider).await?)
        }
    };
    let mut status = status_json(&app, &key.owner).await?;
    status["deleted"] = json!(deleted);
    Ok(Json(status))
}

/// `POST /api/v1/usage`: what an SDK reports after calling a provider itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ingest {
    request_id: String,
    model: String,
    usage: Box<serde_json::value::RawValue>,
    usage_format: String,
    at: Option<DateTime<Utc>>,
}

pub async fn ingest(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: Ingest = parse_json(&body_bytes(&app, body, app.settings.max_api_body).await?)?;
    let format: UsageFormat = req.usage_format.parse()?;
    let mut request = MeteredRequest::new(&*key, req.model)
        .request_id(owner_request_id(&key.owner, &req.request_id));
    if let Some(at) = req.at {
        if at > Utc::now() + chrono::Duration::minutes(5) {
            return Err(ApiError::unprocessable("at is in the future"));
        }
        request = request.at(at);
    }
    let metered = app.meter.record(request, (format, req.usage.get())).await?;
    Ok(Json(json!({
        "event_id": metered.event_id,
        "cost": metered.cost.total.to_string(),
        "duplicate": metered.duplicate,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    tz: Option<String>,
    owner: Option<String>,
    tag: Option<String>,
    end_user: Option<String>,
}

pub async fn report(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
    Params(q): Params<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    let by: GroupBy = q.by.as_deref().unwrap_or("day").parse()?;
    let tz: chrono_tz::Tz = match q.tz.as_deref() {
        None => chrono_tz::UTC,
        Some(name) => name.parse().map_err(|_| {
            ApiError::unprocessable("tz: use an IANA time zone such as Europe/Berlin")
        })?,
    };
    let (owner, org) = match q.owner {
        Some(other) if other != key.owner => {
            if !is_admin(&key) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "INSUFFICIENT_SCOPE",
                    "another owner's usage needs the admin scope",
                ));
            }
            // An organisation's admin reads within its organisation.
            (other, key.org.clone())
        }
        _ => (key.owner.clone(), None),
    };
    let filter = EventFilter {
        owner: Some(owner),
        org,
        since: q
            .since
            .map(|s| keymeter::validate::instant("since", &s, tz))
            .transpose()?,
        until: q
            .until
            .map(|s| keymeter::validate::instant("until", &s, tz))
            .transpose()?,
        tag: q.tag,
        end_user: q.end_user,
        ..EventFilter::default()
    };
    let report = app.store.report(&filter, by, tz).await?;
    Ok(Json(json!(report)))
}

pub async fn budget(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let mut budgets = Vec::new();
    for scope in BudgetScope::of(Some(&key.id), &key.owner, key.org.as_deref()) {
        if let Some(status) = app.store.budget_status(&scope, now).await? {
            budgets.push(status);
        }
    }
    Ok(Json(json!({ "budgets": budgets })))
}

/// `GET /api/v1/key`: the calling key's record (never its hash), each of its limits with what remains and when it
/// resets, its concurrency limits with the requests in flight, the allowlists and budget layers that apply, and
/// today's usage (DESIGN §15; `keymeter keys show` prints the same).
pub async fn key(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
) -> Result<Json<Value>, ApiError> {
    let slots: std::sync::Arc<dyn keymeter::limits::SlotStore> = match app.verifier.slots() {
        Some(keeper) => keeper.store().clone(),
        None => app.store.clone(),
    };
    let seen =
        keymeter::keys::inspect(&*app.store, &*app.limiter, &*slots, &key, Utc::now()).await?;
    let mut out = json!(seen);
    // Which provider keys would pay for this key's owner: its own, else the system's (the console shows both).
    let status = app.resolver.status(&key.owner).await?;
    out["providers"] = fields()
        .into_iter()
        .map(|(name, provider)| {
            let of = status.get(&provider);
            json!({"provider": name, "personal": of.is_some_and(|s| s.user),
                "system": of.is_some_and(|s| s.system)})
        })
        .collect();
    Ok(Json(out))
}
