//! What a key may still do (DESIGN §15's self-inspection): its record, each rate limit with what remains and when
//! it resets, its concurrency limits with the requests in flight, the model allowlists that apply, every budget
//! layer, and today's usage. What the gateway's `GET /api/v1/key` answers and `keymeter keys show` prints.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::keys::hash::{KeyHasher, Pepper, PepperRing};
//! use keymeter::keys::{KeyIssuer, NewKey, inspection::inspect};
//! use keymeter::limits::{LimitScope, LimitStore, Limits};
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let peppers = PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?;
//! let issuer = KeyIssuer::new(store.clone(), Arc::new(KeyHasher::new(peppers)));
//! let key = issuer.issue(NewKey::new("ci", "alice")).await?.record;
//! let limits = Limits { requests: vec!["100/min".parse()?], max_parallel: Some(4), ..Limits::default() };
//! store.set_limits(&LimitScope::Owner("alice".into()), &limits).await?;
//! let seen = inspect(&*store, &*store, &*store, &key, chrono::Utc::now()).await?;
//! assert_eq!((seen.rate_limits[0].scope.as_str(), seen.rate_limits[0].remaining), ("owner:alice", 100));
//! assert_eq!((seen.concurrency[0].limit, seen.concurrency[0].in_flight), (4, 0));
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::error::Result;
use crate::keys::models::ModelRule;
use crate::keys::record::KeyRecord;
use crate::ledger::{BudgetStatus, EventFilter, GroupBy, Ledger};
use crate::limits::{
    Charge, LimitKind, LimitScope, LimitStore, Quota, RateLimiter, SlotStore, bucket_name,
};

/// One rate limit that applies to the key, as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitStanding {
    /// The scope it belongs to, `kind:id`.
    pub scope: String,
    /// `requests` or `tokens`.
    pub counts: &'static str,
    /// The quota (`100/min`).
    pub quota: Quota,
    /// Units left now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// One concurrency limit that applies to the key, as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStanding {
    /// The scope it belongs to, `kind:id`.
    pub scope: String,
    /// Requests it allows in flight.
    pub limit: u32,
    /// Requests in flight now.
    pub in_flight: u64,
}

/// One model allowlist that applies to the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelList {
    /// The scope it belongs to, `kind:id`.
    pub scope: String,
    /// Its rules; a model must be permitted by every list.
    pub rules: Vec<ModelRule>,
}

/// The key's usage since midnight UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageToday {
    /// The UTC day.
    pub day: NaiveDate,
    /// What it cost, in the catalog's currency (a string on the wire).
    pub cost: Decimal,
    /// Billed requests.
    pub events: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// Everything a key may learn about itself. The record never carries its hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInspection {
    /// The key's record.
    pub key: KeyRecord,
    /// Each rate limit of the key, its owner and its organisation.
    pub rate_limits: Vec<LimitStanding>,
    /// Each concurrency limit of the key, its owner and its organisation.
    pub concurrency: Vec<SlotStanding>,
    /// Each model allowlist (the key's own first), empty lists left out.
    pub models: Vec<ModelList>,
    /// Each budget over the key, its owner and its organisation.
    pub budgets: Vec<BudgetStatus>,
    /// Today's usage of the key.
    pub usage_today: UsageToday,
}

/// Reads everything [`KeyInspection`] holds for `key` at `now`. A rate limit's standing is read with a check at
/// cost 0, which admits nothing and takes nothing (a bucket in debt shows 0 remaining).
///
/// # Errors
/// The store's, the limiter's and the slot store's failures.
pub async fn inspect(
    store: &(impl LimitStore + Ledger + ?Sized),
    limiter: &dyn RateLimiter,
    slots: &dyn SlotStore,
    key: &KeyRecord,
    now: DateTime<Utc>,
) -> Result<KeyInspection> {
    let scopes = LimitScope::of(Some(&key.id), &key.owner, key.org.as_deref());
    let mut all = store.limits(&scopes).await?;
    if let Some(own) = all.first_mut() {
        *own = std::mem::take(own).with_record_limit(key);
    }
    let mut limits = Vec::new();
    let mut concurrency = Vec::new();
    let mut models = Vec::new();
    if !key.allowed_models.is_empty() {
        models.push(ModelList {
            scope: scopes[0].to_string(),
            rules: key.allowed_models.clone(),
        });
    }
    let at = now.timestamp_micros();
    let in_flight = slots.in_flight(&scopes, now).await?;
    for ((scope, l), live) in scopes.iter().zip(&all).zip(in_flight) {
        for (kind, quotas) in [
            (LimitKind::Requests, &l.requests),
            (LimitKind::Tokens, &l.tokens),
        ] {
            for quota in quotas {
                let peek = Charge {
                    bucket: bucket_name(scope, kind, quota),
                    quota: *quota,
                    cost: 0,
                };
                let decision = limiter.check(std::slice::from_ref(&peek), at).await?;
                let status = decision.tightest;
                limits.push(LimitStanding {
                    scope: scope.to_string(),
                    counts: kind.as_str(),
                    quota: *quota,
                    remaining: status.map_or(quota.count, |s| s.remaining),
                    reset: status.map_or(0, |s| s.reset_secs()),
                });
            }
        }
        if let Some(max) = l.max_parallel {
            concurrency.push(SlotStanding {
                scope: scope.to_string(),
                limit: max,
                in_flight: live,
            });
        }
        if !l.models.is_empty() {
            models.push(ModelList {
                scope: scope.to_string(),
                rules: l.models.clone(),
            });
        }
    }
    let mut budgets = Vec::new();
    for scope in &scopes {
        if let Some(status) = store.budget_status(scope, now).await? {
            budgets.push(status);
        }
    }
    let day = now.date_naive();
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let report = store
        .report(
            &EventFilter::new().key_id(&key.id).since(midnight),
            GroupBy::Day,
            chrono_tz::UTC,
        )
        .await?;
    let usage_today = UsageToday {
        day,
        cost: report.total,
        events: report.groups.iter().map(|g| g.events).sum(),
        input_tokens: report.groups.iter().map(|g| g.input_tokens).sum(),
        output_tokens: report.groups.iter().map(|g| g.output_tokens).sum(),
    };
    Ok(KeyInspection {
        key: key.clone(),
        rate_limits: limits,
        concurrency,
        models,
        budgets,
        usage_today,
    })
}
