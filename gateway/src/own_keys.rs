//! The caller's own API keys (`keys:write`, DESIGN §12): list its owner's keys, create keys for its owner with a
//! subset of its own scopes (never `admin` or `keys:write`), rotate and revoke them. A created key records its
//! creator, and revoking the creator revokes it. What the console's "API keys" page does, a script can do.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use keymeter::keys::record::parse_networks;
use keymeter::keys::{KeyFilter, KeyRecord, KeyStore, ModelRule, NewKey, Scope};
use keymeter_axum::{ApiError, VerifiedKey};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::{
    OneOrMany, expiry, issue_limited, issued_json, key_not_found, parse_scopes, within,
};
use super::{State, body_bytes, parse_json};

/// `POST /api/v1/me/keys`: the admin endpoint's fields less those that pick another owner or organisation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOwnKey {
    name: String,
    /// At least one, each granted by the calling key.
    permissions: Vec<String>,
    expires_in: Option<String>,
    /// Within the calling key's networks when it has any (its own when none are given).
    #[serde(default)]
    allowed_ips: Vec<String>,
    /// Among the calling key's rules when it has any (its own when none are given).
    #[serde(default)]
    allowed_models: Vec<ModelRule>,
    rate_limit: Option<OneOrMany>,
    max_parallel: Option<u32>,
    metadata: Option<Value>,
    #[serde(default)]
    tags: Vec<String>,
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE", message)
}

/// The scopes a self-made key may never hold: they would let it make or manage keys.
fn reserved() -> [Scope; 2] {
    [
        Scope::new("admin").expect("valid scope"),
        Scope::new("keys:write").expect("valid scope"),
    ]
}

/// `scopes` within the caller's and clear of the reserved ones.
fn check_scopes(caller: &KeyRecord, scopes: &[Scope]) -> Result<(), ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::unprocessable(
            "name at least one permission for the new key",
        ));
    }
    within(caller, scopes)?;
    for scope in scopes {
        if let Some(held) = reserved().iter().find(|r| scope.grants(r)) {
            return Err(refused(format!(
                "a key made here cannot grant {held} (the scope {scope} would): ask an admin"
            )));
        }
    }
    Ok(())
}

/// A key of the caller's owner that the caller may rotate or revoke: one whose every scope the caller holds, so
/// nothing here reaches a more powerful key. Another owner's key, or an unknown id, is "not found".
async fn own(app: &super::App, caller: &KeyRecord, id: &str) -> Result<Arc<KeyRecord>, ApiError> {
    let record = match app.keys.get(id).await? {
        Some(record) if record.owner == caller.owner => record,
        _ => return Err(key_not_found(id)),
    };
    within(caller, &record.scopes).map_err(|_| {
        refused("that key holds scopes this key lacks: only an admin may change it")
    })?;
    Ok(record)
}

pub async fn list(
    axum::extract::State(app): State,
    VerifiedKey(caller): VerifiedKey,
) -> Result<Json<Value>, ApiError> {
    let keys = app
        .keys
        .list(&KeyFilter::new().owner(caller.owner.clone()))
        .await?;
    Ok(Json(json!({ "keys": keys })))
}

pub async fn create(
    axum::extract::State(app): State,
    VerifiedKey(caller): VerifiedKey,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateOwnKey = parse_json(&body_bytes(&app, body, app.settings.max_api_body).await?)?;
    let scopes = parse_scopes(&req.permissions)?;
    check_scopes(&caller, &scopes)?;
    // Networks and models never widen the caller's.
    let nets = parse_networks(req.allowed_ips.iter().map(String::as_str))?;
    let nets = if caller.allowed_ips.is_empty() {
        nets
    } else if nets.is_empty() {
        caller.allowed_ips.clone()
    } else if let Some(wide) = nets
        .iter()
        .find(|n| !caller.allowed_ips.iter().any(|c| c.contains(*n)))
    {
        return Err(refused(format!(
            "{wide} is outside the networks this key may be used from"
        )));
    } else {
        nets
    };
    let models = if caller.allowed_models.is_empty() {
        req.allowed_models
    } else if req.allowed_models.is_empty() {
        caller.allowed_models.clone()
    } else if let Some(wide) = req
        .allowed_models
        .iter()
        .find(|m| !caller.allowed_models.contains(m))
    {
        return Err(refused(format!(
            "{wide} is not among this key's allowed models"
        )));
    } else {
        req.allowed_models
    };
    let mut new = NewKey::new(req.name, caller.owner.clone())
        .scopes(scopes)
        .allowed_ips(nets)
        .allowed_models(models)
        .tags(req.tags)
        .created_by(caller.id.clone());
    if let Some(org) = &caller.org {
        new = new.org(org.clone());
    }
    if let Some(metadata) = req.metadata {
        new = new.metadata(metadata);
    }
    // Never outliving its creator.
    let asked = req.expires_in.as_deref().map(expiry).transpose()?;
    let expires_at = match (asked, caller.expires_at) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    if let Some(at) = expires_at {
        new = new.expires_at(at);
    }
    let issued = issue_limited(&app, new, req.rate_limit, req.max_parallel).await?;
    tracing::info!(key_id = %issued.record.id, created_by = %caller.id, owner = %caller.owner,
        "a key created a key for its owner");
    Ok((StatusCode::CREATED, Json(issued_json(&issued)?)))
}

pub async fn revoke(
    axum::extract::State(app): State,
    VerifiedKey(caller): VerifiedKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    own(&app, &caller, &id).await?;
    app.verifier.revoke(&id).await?;
    let record = KeyStore::get(app.keys.as_ref(), &id)
        .await?
        .ok_or_else(|| key_not_found(&id))?;
    Ok(Json(json!(record)))
}

pub async fn rotate(
    axum::extract::State(app): State,
    VerifiedKey(caller): VerifiedKey,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let grace = super::admin::rotate_grace(&app, body).await?;
    own(&app, &caller, &id).await?;
    super::admin::rotated_json(&app, &id, grace).await
}
