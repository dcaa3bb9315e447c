//! Key administration (`admin` scope): create, list, revoke, revoke an organisation's keys, rotate, statistics.
//! An admin key of an organisation sees and changes only that organisation's keys; another's are "not found".

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use chrono::Utc;
use keymeter::keys::record::parse_networks;
use keymeter::keys::{KeyFilter, KeyRecord, KeyStore, NewKey, RateLimit, Scope};
use keymeter::limits::{LimitScope, Limits, Quota};
use keymeter::stats::KeyStats;
use keymeter_axum::{ApiError, VerifiedKey};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Params, State, body_bytes, manages, parse_json};

/// `POST /api/v1/api-keys`, the seeds' field names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    organization_id: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    allowed_ips: Vec<String>,
    expires_in: Option<String>,
    rate_limit: Option<OneOrMany>,
    /// `[provider/]pattern` rules with `*` wildcards; empty (the default) allows any model.
    #[serde(default)]
    allowed_models: Vec<keymeter::keys::ModelRule>,
    /// The most requests the key may have in flight at once.
    max_parallel: Option<u32>,
    /// A JSON object of at most 4 KiB, kept with the key.
    metadata: Option<Value>,
    /// Tags every event of the key carries.
    #[serde(default)]
    tags: Vec<String>,
}

/// `"100/min"` or `["100/min", "5000/day"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A key never grants what the key making or changing it lacks (`*` only from `*`).
pub(crate) fn within(creator: &KeyRecord, scopes: &[Scope]) -> Result<(), ApiError> {
    match scopes
        .iter()
        .find(|s| !creator.scopes.iter().any(|held| held.grants(s)))
    {
        Some(beyond) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            format!(
                "this key lacks the scope {beyond}: a key never grants scopes its creator lacks"
            ),
        )),
        None => Ok(()),
    }
}

/// The scopes named in a request.
pub(crate) fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, ApiError> {
    Ok(names
        .iter()
        .map(|s| Scope::new(s))
        .collect::<keymeter::Result<Vec<_>>>()?)
}

/// `expires_in` (`30d`) as an instant from now.
pub(crate) fn expiry(life: &str) -> Result<chrono::DateTime<Utc>, ApiError> {
    let life = keymeter::validate::duration("expires_in", life, false)?;
    Utc::now()
        .checked_add_signed(life)
        .ok_or_else(|| ApiError::unprocessable("expires_in is too far in the future"))
}

/// A create answer: the record's fields and the secret, flat (shown this once).
pub(crate) fn issued_json(issued: &keymeter::keys::IssuedKey) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(&issued.record)
        .map_err(|e| ApiError::from(keymeter::Error::Internal(e.to_string())))?;
    value["secret"] = Value::String(issued.token.expose_secret().to_owned());
    Ok(value)
}

/// The key if `admin` may manage it; unknown and not permitted are the same 404.
async fn managed(
    app: &super::App,
    admin: &KeyRecord,
    id: &str,
) -> Result<Arc<KeyRecord>, ApiError> {
    match app.keys.get(id).await? {
        Some(record) if manages(admin, &record) => Ok(record),
        _ => Err(key_not_found(id)),
    }
}

/// 404 `NOT_FOUND_ID` for a key id the caller may not see (or that does not exist: the same answer).
pub(crate) fn key_not_found(id: &str) -> ApiError {
    keymeter::Error::NotFound {
        what: "key",
        id: id.to_owned(),
    }
    .into()
}

pub async fn create(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateKey = parse_json(&body_bytes(&app, body, app.settings.max_api_body).await?)?;
    // An organisation's admin creates keys in its organisation only.
    let org = org_of(&admin, req.organization_id)?;
    let scopes = parse_scopes(&req.permissions)?;
    within(&admin, &scopes)?;
    let mut new = NewKey::new(req.name, req.owner.unwrap_or_else(|| admin.owner.clone()))
        .scopes(scopes)
        .allowed_ips(parse_networks(req.allowed_ips.iter().map(String::as_str))?)
        .allowed_models(req.allowed_models);
    if let Some(metadata) = req.metadata {
        new = new.metadata(metadata);
    }
    new = new.tags(req.tags);
    if let Some(org) = org {
        new = new.org(org);
    }
    if let Some(life) = req.expires_in {
        new = new.expires_at(expiry(&life)?);
    }
    let issued = issue_limited(&app, new, req.rate_limit, req.max_parallel).await?;
    Ok((StatusCode::CREATED, Json(issued_json(&issued)?)))
}

/// Issues `new` with its rate limits (`"100/min"` or a list) and concurrency limit: the key is handed out only
/// once its limits hold.
pub(crate) async fn issue_limited(
    app: &super::App,
    mut new: NewKey,
    rate_limit: Option<OneOrMany>,
    max_parallel: Option<u32>,
) -> Result<keymeter::keys::IssuedKey, ApiError> {
    let limits: Vec<String> = match rate_limit {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    };
    let quotas = limits
        .iter()
        .map(|l| l.parse::<Quota>())
        .collect::<keymeter::Result<Vec<_>>>()?;
    let limits_set = Limits {
        requests: quotas,
        max_parallel,
        ..Limits::default()
    };
    limits_set.validate()?;
    if let Some(first) = limits.first() {
        new = new.rate_limit(first.parse::<RateLimit>()?);
    }
    let issued = app.issuer.issue(new).await?;
    if limits_set.requests.len() > 1 || limits_set.max_parallel.is_some() {
        // The key is not handed out before its limits hold.
        let scope = LimitScope::Key(issued.record.id.clone());
        if let Err(e) = app.store.set_limits(&scope, &limits_set).await {
            app.verifier.revoke(&issued.record.id).await?;
            return Err(e.into());
        }
    }
    Ok(issued)
}

#[derive(Debug, Deserialize)]
pub struct OrgQuery {
    organization: Option<String>,
}

fn org_of(admin: &KeyRecord, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match (&admin.org, asked) {
        (Some(own), Some(asked)) if *own != asked => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            "this admin key manages its own organisation's keys only",
        )),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, asked) => Ok(asked),
    }
}

pub async fn list(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Params(q): Params<OrgQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = KeyFilter {
        org: org_of(&admin, q.organization)?,
        ..KeyFilter::default()
    };
    let keys = app.keys.list(&filter).await?;
    Ok(Json(json!({ "keys": keys })))
}

pub async fn revoke(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    managed(&app, &admin, &id).await?;
    app.verifier.revoke(&id).await?;
    let record = managed(&app, &admin, &id).await?;
    Ok(Json(json!(record)))
}

pub async fn revoke_all(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Params(q): Params<OrgQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(org) = org_of(&admin, q.organization)? else {
        return Err(ApiError::unprocessable(
            "name the organisation: ?organization=ORG",
        ));
    };
    let revoked = app.verifier.revoke_org(&org).await?;
    Ok(Json(json!({ "revoked": revoked })))
}

/// `PATCH /api/v1/api-keys/{id}`: the fields to change, the others left as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    name: Option<String>,
    permissions: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    allowed_models: Option<Vec<keymeter::keys::ModelRule>>,
    metadata: Option<Value>,
    /// From now (`30d`); or `expires_at`.
    expires_in: Option<String>,
    /// RFC 3339, or `null` for no expiry.
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
    disabled: Option<bool>,
    tags: Option<Vec<String>>,
}

/// A field that may be `null` on purpose: absent is `None`, `null` is `Some(None)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

pub async fn update(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: UpdateKey = parse_json(&body_bytes(&app, body, app.settings.max_api_body).await?)?;
    managed(&app, &admin, &id).await?;
    let scopes = match req.permissions {
        Some(names) => {
            let scopes = parse_scopes(&names)?;
            within(&admin, &scopes)?;
            Some(scopes)
        }
        None => None,
    };
    let expires_at = match (req.expires_in, req.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give expires_in or expires_at, not both",
            ));
        }
        (Some(life), None) => Some(Some(expiry(&life)?)),
        (None, Some(Some(at))) => Some(Some(keymeter::validate::instant(
            "expires_at",
            &at,
            chrono_tz::UTC,
        )?)),
        (None, Some(None)) => Some(None),
        (None, None) => None,
    };
    let patch = keymeter::keys::KeyPatch {
        name: req.name,
        scopes,
        allowed_ips: req
            .allowed_ips
            .map(|nets| parse_networks(nets.iter().map(String::as_str)))
            .transpose()?,
        allowed_models: req.allowed_models,
        metadata: req.metadata,
        expires_at,
        disabled: req.disabled,
        tags: req.tags,
    };
    if patch.is_empty() {
        return Err(ApiError::unprocessable("name at least one field to change"));
    }
    let changed = app.verifier.update(&id, &patch).await?;
    Ok(Json(json!(changed)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    grace_period: Option<String>,
}

/// A rotation's grace period from its body (`{"grace_period"?: "24h"}`; an empty body is none).
pub(crate) async fn rotate_grace(
    app: &super::App,
    body: Body,
) -> Result<chrono::Duration, ApiError> {
    let bytes = body_bytes(app, body, app.settings.max_api_body).await?;
    let req: Rotate = if bytes.iter().all(u8::is_ascii_whitespace) {
        Rotate { grace_period: None }
    } else {
        parse_json(&bytes)?
    };
    Ok(match req.grace_period {
        Some(g) => keymeter::validate::duration("grace_period", &g, true)?,
        None => chrono::Duration::zero(),
    })
}

/// Rotates `id` and answers `{"id", "secret", "grace_until"}`.
pub(crate) async fn rotated_json(
    app: &super::App,
    id: &str,
    grace: chrono::Duration,
) -> Result<Json<Value>, ApiError> {
    let rotated = app.verifier.rotate(&app.issuer, id, grace).await?;
    Ok(Json(json!({
        "id": rotated.id,
        "secret": rotated.token.expose_secret(),
        "grace_until": rotated.grace_until,
    })))
}

pub async fn rotate(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let grace = rotate_grace(&app, body).await?;
    managed(&app, &admin, &id).await?;
    rotated_json(&app, &id, grace).await
}

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    days: Option<u32>,
}

pub async fn stats(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(id): Path<String>,
    Params(q): Params<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let days = q.days.unwrap_or(30).clamp(1, 366);
    let record = managed(&app, &admin, &id).await?;
    // Counts still in memory are written first, so the answer includes this instance's latest verifications.
    app.stats.flush().await?;
    let today = Utc::now().date_naive();
    let since = today - chrono::Days::new(u64::from(days - 1));
    let stored = app.store.key_stats(&id, since).await?;
    // The store's `last_used_at`, which the flush above just moved: the cached record may predate it.
    let last_used = KeyStore::get(app.store.as_ref(), &id)
        .await?
        .and_then(|r| r.last_used_at)
        .or(record.last_used_at);
    Ok(Json(json!(KeyStats::summary(
        &id, &stored, today, days, last_used
    ))))
}

/// `POST /api/v1/usage/{request_id}/adjust`: the exact usage of an `estimated` event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Adjust {
    usage: Box<serde_json::value::RawValue>,
    usage_format: String,
}

/// Replaces an `estimated` event (billed at its reservation) with exact usage, as `keymeter usage adjust` does.
/// An organisation's admin adjusts its organisation's events only; another's are "not found". An exact event is
/// 409 `NOT_ESTIMATED` and stays as it is.
pub async fn adjust(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(request_id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: Adjust = parse_json(&body_bytes(&app, body, app.settings.max_api_body).await?)?;
    let format: keymeter::pricing::UsageFormat = req.usage_format.parse()?;
    let stored = match app.meter.ledger().event(&request_id).await? {
        Some(e) if admin.org.is_none() || e.org == admin.org => e,
        _ => {
            return Err(keymeter::Error::NotFound {
                what: "usage event of request",
                id: request_id,
            }
            .into());
        }
    };
    let exact = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "NOT_ESTIMATED",
            "this event holds exact usage already: only an estimated event is replaced",
        )
    };
    if !stored.estimated {
        return Err(exact());
    }
    let adjusted = match app
        .meter
        .adjust(&request_id, (format, req.usage.get()))
        .await
    {
        Ok(adjusted) => adjusted,
        // Replaced by another writer since it was read.
        Err(keymeter::Error::InvalidInput {
            what: "adjustment", ..
        }) => return Err(exact()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        request_id = %request_id,
        event_id = %adjusted.event_id,
        previous_cost = %stored.cost,
        cost = %adjusted.cost.total,
        by = %admin.id,
        "an estimated event was adjusted by hand"
    );
    Ok(Json(json!({
        "request_id": request_id,
        "event_id": adjusted.event_id,
        "cost": adjusted.cost.total.to_string(),
        "previous_cost": stored.cost.to_string(),
        "replaced": true,
    })))
}
