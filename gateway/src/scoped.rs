//! The admin endpoints of what is set per scope (`owner:ID`, `org:ID`, `key:ID`): budgets and limits, with the
//! bodies of the CLI's `budget set` and `limits set`, so whatever the CLI sets an HTTP client can set too.
//!
//! The admin key without an organisation manages every scope; an organisation's admin its organisation, the
//! owners bound to it and their keys (403 `INSUFFICIENT_SCOPE` otherwise).

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use chrono::Utc;
use keymeter::keys::{KeyFilter, KeyRecord, ModelRule};
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, parse_amount};
use keymeter::limits::{Limits, Quota};
use keymeter_axum::{ApiError, VerifiedKey};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{App, State, body_bytes, parse_json};

/// The scope in the path, if `admin` may manage it.
async fn permitted(app: &App, admin: &KeyRecord, path: &str) -> Result<BudgetScope, ApiError> {
    let (kind, id) = path
        .split_once(':')
        .ok_or_else(|| ApiError::unprocessable("the scope is owner:ID, org:ID or key:ID"))?;
    let scope = BudgetScope::from_parts(kind, id)?;
    let Some(own) = &admin.org else {
        return Ok(scope);
    };
    let org = match &scope {
        BudgetScope::Org(org) => Some(org.clone()),
        // An owner's organisation is its keys' (bound by its first); an owner without keys is no one's yet.
        BudgetScope::Owner(owner) => app
            .keys
            .list(&KeyFilter::new().owner(owner.clone()).limit(1))
            .await?
            .pop()
            .and_then(|k| k.org),
        BudgetScope::Key(id) => app.keys.get(id).await?.and_then(|k| k.org.clone()),
    };
    if org.as_ref() != Some(own) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            "this admin key manages its own organisation, its owners and their keys only",
        ));
    }
    Ok(scope)
}

/// The scope in the path, if `admin` may manage it, and the PUT's body.
async fn scope_and_body<T: serde::de::DeserializeOwned>(
    app: &App,
    admin: &KeyRecord,
    path: &str,
    body: Body,
) -> Result<(BudgetScope, T), ApiError> {
    let scope = permitted(app, admin, path).await?;
    let body = parse_json(&body_bytes(app, body, app.settings.max_api_body).await?)?;
    Ok((scope, body))
}

/// `PUT /api/v1/budgets/{scope}`: as `keymeter budget set`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBudget {
    /// A decimal string, such as `"25.00"`.
    limit: String,
    /// `daily`, `weekly`, `monthly` or `total`.
    period: String,
    soft: Option<String>,
    /// An IANA zone (default UTC): where periods start.
    tz: Option<String>,
    /// Percentages of the limit alerted once per period (default `[50, 80, 100]`; `[]` for none).
    thresholds: Option<Vec<u8>>,
}

pub async fn put_budget(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(scope): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (scope, req): (_, SetBudget) = scope_and_body(&app, &admin, &scope, body).await?;
    let mut budget = Budget::new(
        scope,
        parse_amount(&req.limit)?,
        req.period.parse::<BudgetPeriod>()?,
    )?;
    if let Some(tz) = req.tz {
        let tz = tz
            .parse::<keymeter::Tz>()
            .map_err(|_| ApiError::unprocessable(format!("tz {tz:?} is not an IANA time zone")))?;
        budget = budget.tz(tz);
    }
    if let Some(soft) = req.soft {
        budget = budget.soft_limit(parse_amount(&soft)?)?;
    }
    if let Some(thresholds) = req.thresholds {
        budget = budget.thresholds(thresholds)?;
    }
    app.store.set_budget(&budget).await?;
    Ok(Json(json!({
        "scope": budget.scope, "limit": budget.limit.to_string(),
        "soft": budget.soft_limit.map(|s| s.to_string()), "period": budget.period, "tz": budget.tz.name(),
        "thresholds": budget.alert_thresholds(),
    })))
}

/// `GET /api/v1/budgets/{scope}`: where the budget stands now (404 `NOT_FOUND_ID` without one).
pub async fn get_budget(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(scope): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = permitted(&app, &admin, &scope).await?;
    match app.store.budget_status(&scope, Utc::now()).await? {
        Some(status) => Ok(Json(json!(status))),
        None => Err(keymeter::Error::NotFound {
            what: "budget",
            id: scope.to_string(),
        }
        .into()),
    }
}

/// `DELETE /api/v1/budgets/{scope}`: the budget and its spend counters go (a budget set again later counts its
/// spend from the events stored); 404 when there is none.
pub async fn delete_budget(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(scope): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = permitted(&app, &admin, &scope).await?;
    if app.store.delete_budget(&scope).await? {
        Ok(Json(json!({"scope": scope.to_string(), "deleted": true})))
    } else {
        Err(keymeter::Error::NotFound {
            what: "budget",
            id: scope.to_string(),
        }
        .into())
    }
}

/// `PUT /api/v1/limits/{scope}`: as `keymeter limits set` (replaces them; empty lists clear them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLimits {
    #[serde(default)]
    requests: Vec<Quota>,
    #[serde(default)]
    tokens: Vec<Quota>,
    #[serde(default)]
    models: Vec<ModelRule>,
    #[serde(default)]
    max_parallel: Option<u32>,
}

fn limits_json(scope: &BudgetScope, limits: &Limits) -> Value {
    json!({"scope": scope.to_string(), "requests": limits.requests, "tokens": limits.tokens,
        "models": limits.models, "max_parallel": limits.max_parallel})
}

pub async fn put_limits(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(scope): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (scope, req): (_, SetLimits) = scope_and_body(&app, &admin, &scope, body).await?;
    let limits = Limits {
        requests: req.requests,
        tokens: req.tokens,
        models: req.models,
        max_parallel: req.max_parallel,
    };
    app.store.set_limits(&scope, &limits).await?;
    Ok(Json(limits_json(&scope, &limits)))
}

/// `GET /api/v1/limits/{scope}`: the scope's limits (empty lists when none are set).
pub async fn get_limits(
    axum::extract::State(app): State,
    VerifiedKey(admin): VerifiedKey,
    Path(scope): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = permitted(&app, &admin, &scope).await?;
    let limits = app
        .store
        .limits(std::slice::from_ref(&scope))
        .await?
        .pop()
        .unwrap_or_default();
    Ok(Json(limits_json(&scope, &limits)))
}
