//! Alerts and their delivery (DESIGN §16): what happened ([`Alert`]), where it waits ([`Outbox`], written in the
//! same transaction as its cause), who hears of it ([`Endpoint`], signed like Stripe's webhooks) and how it gets
//! there (`Deliverer`, at least once with exponential backoff; feature `http-client`).
//!
//! An alert's id is derived from what it is about wherever that makes it once-only: a budget threshold's from
//! the budget, the period and the percentage, so however many settles cross it (on however many instances), the
//! outbox keeps one. Receivers deduplicate by the same id.
//!
//! ```
//! use keymeter::alerts::{Alert, AlertKind};
//! use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope};
//! use keymeter::{DateTime, Decimal};
//!
//! let budget = Budget::new(BudgetScope::Owner("alice".into()), Decimal::from(10), BudgetPeriod::Monthly)?;
//! let start: DateTime<keymeter::Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
//! let at = "2026-12-03T10:00:00Z".parse().unwrap();
//! // From $4 to $8.50 crosses 50 % and 80 % of $10.
//! let alerts = Alert::budget_crossings(&budget, start, Decimal::from(4), "8.5".parse().unwrap(), at);
//! let kinds: Vec<_> = alerts.iter().map(|a| (a.kind, a.data["threshold"].clone())).collect();
//! assert_eq!(kinds, [(AlertKind::BudgetThreshold, 50.into()), (AlertKind::BudgetThreshold, 80.into())]);
//! // The same crossing computed again (another instance, a retry) has the same ids.
//! assert_eq!(alerts, Alert::budget_crossings(&budget, start, Decimal::from(4), "8.5".parse().unwrap(), at));
//! # Ok::<(), keymeter::Error>(())
//! ```

#[cfg(feature = "http-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-client")))]
mod delivery;
mod endpoint;
mod outbox;
mod settings;
pub mod signature;
mod spool;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[cfg(feature = "http-client")]
pub use delivery::{Deliverer, DeliveryPolicy, Pass};
pub use endpoint::{Endpoint, EndpointSecret, NewEndpoint, check_url};
pub use outbox::{Delivery, DeliveryState, Outbox};
pub use settings::AlertSettings;
pub use spool::{Spool, Spooled};

use crate::error::{Error, Result};
use crate::ledger::Budget;

/// The thresholds a budget alerts at unless it names its own: percentages of its limit.
pub const DEFAULT_THRESHOLDS: [u8; 3] = [50, 80, 100];

/// What an alert is about; its wire name (`budget.threshold`, …) is the webhook body's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AlertKind {
    /// A budget's spend crossed one of its thresholds (a percentage of the limit), once per period.
    BudgetThreshold,
    /// A budget's spend crossed its soft limit, once per period.
    BudgetSoftLimit,
    /// A budget's spend reached its limit, once per period.
    BudgetExhausted,
    /// A key's statistics turned unusual (a day's verifications far above its average), once per key and day.
    KeyUnusual,
    /// A key was revoked because it leaked (a secret-scanning report or `keymeter keys leaked`).
    KeyLeaked,
    /// A dependency (the store, the limiter) stopped answering.
    DependencyDown,
    /// A dependency answers again.
    DependencyUp,
    /// A test delivery asked for by `keymeter webhooks test`.
    WebhookTest,
}

impl AlertKind {
    /// Every kind, in wire-name order.
    pub const ALL: [AlertKind; 8] = [
        AlertKind::BudgetExhausted,
        AlertKind::BudgetSoftLimit,
        AlertKind::BudgetThreshold,
        AlertKind::DependencyDown,
        AlertKind::DependencyUp,
        AlertKind::KeyLeaked,
        AlertKind::KeyUnusual,
        AlertKind::WebhookTest,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BudgetThreshold => "budget.threshold",
            AlertKind::BudgetSoftLimit => "budget.soft_limit",
            AlertKind::BudgetExhausted => "budget.exhausted",
            AlertKind::KeyUnusual => "key.unusual",
            AlertKind::KeyLeaked => "key.leaked",
            AlertKind::DependencyDown => "dependency.down",
            AlertKind::DependencyUp => "dependency.up",
            AlertKind::WebhookTest => "webhook.test",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlertKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "event type",
                    format!(
                        "{:?} is not one of {}",
                        s.chars().take(40).collect::<String>(),
                        AlertKind::ALL.map(AlertKind::as_str).join(", ")
                    ),
                )
            })
    }
}

impl Serialize for AlertKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AlertKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One alert: the webhook body `{"id", "type", "created_at", "data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique; receivers deduplicate by it (`alr_` and 32 hex digits).
    pub id: String,
    /// What it is about.
    #[serde(rename = "type")]
    pub kind: AlertKind,
    /// When its cause happened.
    pub created_at: DateTime<Utc>,
    /// The details, by kind (amounts as decimal strings).
    pub data: Value,
}

/// A budget's alert marks as amounts (its thresholds' shares of the limit, the soft limit, the limit), ascending:
/// computed once per budget, so a spend update learns with a comparison or two whether it crossed any.
///
/// ```
/// # use keymeter::alerts::Marks;
/// # use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope};
/// let budget = Budget::new(BudgetScope::Owner("a".into()), 10.into(), BudgetPeriod::Monthly)?;
/// let marks = Marks::of(&budget); // 5, 8, 10
/// assert!(marks.crossed(4.into(), 5.into()));
/// assert!(!marks.crossed(5.into(), 7.into()));
/// # Ok::<(), keymeter::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks(Vec<Decimal>);

impl Marks {
    /// The marks of `budget`.
    pub fn of(budget: &Budget) -> Self {
        let mut marks: Vec<Decimal> = budget
            .alert_thresholds()
            .iter()
            .filter_map(|&p| {
                budget
                    .limit
                    .checked_mul(Decimal::from(p))
                    .map(|m| m / Decimal::ONE_HUNDRED)
            })
            .chain(budget.soft_limit)
            .chain(std::iter::once(budget.limit))
            .collect();
        marks.sort_unstable();
        marks.dedup();
        Marks(marks)
    }

    /// Whether spend moving from `before` to `after` passes a mark: the first mark above `before` is at most
    /// `after`.
    pub fn crossed(&self, before: Decimal, after: Decimal) -> bool {
        after > before
            && self
                .0
                .iter()
                .find(|&&m| m > before)
                .is_some_and(|&m| m <= after)
    }
}

/// An alert id derived from `parts`: the same parts, the same id.
fn derived_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("alr_{hex}")
}

impl Alert {
    /// An alert of `kind` with an id derived from `identity` (the same identity, the same id: the outbox and the
    /// receivers keep one).
    pub fn once(
        kind: AlertKind,
        identity: &[&str],
        created_at: DateTime<Utc>,
        data: Value,
    ) -> Self {
        let mut parts = vec![kind.as_str()];
        parts.extend_from_slice(identity);
        Alert {
            id: derived_id(&parts),
            kind,
            created_at,
            data,
        }
    }

    /// What moving `budget`'s spend in the period starting `period_start` from `before` to `after` crosses: a
    /// `budget.threshold` for each of its thresholds passed, `budget.soft_limit`, `budget.exhausted` — each with
    /// an id of the budget, period and mark, so it is alerted once per period however often it is computed.
    /// Nothing when spend falls or stays.
    pub fn budget_crossings(
        budget: &Budget,
        period_start: DateTime<Utc>,
        before: Decimal,
        after: Decimal,
        at: DateTime<Utc>,
    ) -> Vec<Alert> {
        let crossed = |mark: Decimal| before < mark && mark <= after;
        let mark_of = |percent: u8| {
            budget
                .limit
                .checked_mul(Decimal::from(percent))
                .map(|m| m / Decimal::ONE_HUNDRED)
        };
        let any = Marks::of(budget).crossed(before, after);
        let mut out = Vec::new();
        if !any {
            return out;
        }
        let scope = budget.scope.to_string();
        let start = period_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let data = |extra: Value| {
            let mut data = json!({
                "scope": scope,
                "limit": budget.limit.normalize().to_string(),
                "spent": after.normalize().to_string(),
                "period": budget.period,
                "period_start": start,
            });
            if let (Some(map), Value::Object(more)) = (data.as_object_mut(), extra) {
                map.extend(more);
            }
            data
        };
        for &percent in budget.alert_thresholds() {
            if mark_of(percent).is_some_and(crossed) {
                out.push(Alert::once(
                    AlertKind::BudgetThreshold,
                    &[&scope, &start, &percent.to_string()],
                    at,
                    data(json!({ "threshold": percent })),
                ));
            }
        }
        if let Some(soft) = budget.soft_limit
            && crossed(soft)
        {
            out.push(Alert::once(
                AlertKind::BudgetSoftLimit,
                &[&scope, &start],
                at,
                data(json!({ "soft_limit": soft.normalize().to_string() })),
            ));
        }
        if crossed(budget.limit) {
            out.push(Alert::once(
                AlertKind::BudgetExhausted,
                &[&scope, &start],
                at,
                data(json!({})),
            ));
        }
        out
    }

    /// `key.leaked`: the key `key_id` of `owner` was revoked because its secret was found at `url` (once per key).
    pub fn key_leaked(
        key_id: &str,
        owner: &str,
        org: Option<&str>,
        url: Option<&str>,
        source: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        Alert::once(
            AlertKind::KeyLeaked,
            &[key_id],
            at,
            json!({ "key_id": key_id, "owner": owner, "org": org, "url": url, "source": source }),
        )
    }

    /// `key.unusual`: the key's statistics of `day` (`YYYY-MM-DD`) turned unusual for `reason` (once per key and
    /// day).
    pub fn key_unusual(
        key_id: &str,
        owner: &str,
        day: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Alert::once(
            AlertKind::KeyUnusual,
            &[key_id, day],
            at,
            json!({ "key_id": key_id, "owner": owner, "day": day, "reason": reason }),
        )
    }

    /// `dependency.down` or `dependency.up` for `dependency` (`store`, `limiter`) at `at`, from `instance`.
    pub fn dependency(
        dependency: &str,
        up: bool,
        instance: &str,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        let kind = if up {
            AlertKind::DependencyUp
        } else {
            AlertKind::DependencyDown
        };
        let micros = at.timestamp_micros().to_string();
        Alert::once(
            kind,
            &[dependency, instance, &micros],
            at,
            json!({ "dependency": dependency, "instance": instance, "error": error }),
        )
    }

    /// `webhook.test` for the endpoint `endpoint_id`, unique per call (`nonce`).
    pub fn webhook_test(endpoint_id: &str, nonce: &str, at: DateTime<Utc>) -> Self {
        Alert::once(
            AlertKind::WebhookTest,
            &[endpoint_id, nonce],
            at,
            json!({ "endpoint_id": endpoint_id, "message": "a test delivery from keymeter" }),
        )
    }

    /// The webhook body: this alert as JSON.
    pub fn body(&self) -> String {
        // An alert is plain data; serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{BudgetPeriod, BudgetScope};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn crossings_name_each_mark_once() {
        let budget = Budget::new(
            BudgetScope::Org("acme".into()),
            d("10"),
            BudgetPeriod::Daily,
        )
        .unwrap()
        .soft_limit(d("7"))
        .unwrap();
        let start = at("2026-12-03T00:00:00Z");
        let now = at("2026-12-03T12:00:00Z");
        let kinds = |b: &str, a: &str| {
            Alert::budget_crossings(&budget, start, d(b), d(a), now)
                .into_iter()
                .map(|a| (a.kind, a.data.get("threshold").cloned()))
                .collect::<Vec<_>>()
        };
        assert!(kinds("0", "4.99").is_empty());
        assert_eq!(
            kinds("4.99", "5"),
            [(AlertKind::BudgetThreshold, Some(json!(50)))]
        );
        assert!(kinds("5", "6.9").is_empty(), "50 % was crossed before");
        assert_eq!(kinds("6.9", "7"), [(AlertKind::BudgetSoftLimit, None)]);
        assert_eq!(
            kinds("7.5", "12"),
            [
                (AlertKind::BudgetThreshold, Some(json!(80))),
                (AlertKind::BudgetThreshold, Some(json!(100))),
                (AlertKind::BudgetExhausted, None)
            ]
        );
        assert!(kinds("9", "8").is_empty(), "spend falling alerts nothing");
        let a = &Alert::budget_crossings(&budget, start, d("0"), d("5"), now)[0];
        assert_eq!(a.data["scope"], "org:acme");
        assert_eq!(a.data["limit"], "10");
        assert_eq!(a.data["spent"], "5");
        assert_eq!(a.data["period_start"], "2026-12-03T00:00:00Z");
        // Another period: another id.
        let next =
            Alert::budget_crossings(&budget, at("2026-12-04T00:00:00Z"), d("0"), d("5"), now);
        assert_ne!(next[0].id, a.id);
        assert!(a.id.starts_with("alr_") && a.id.len() == 36);
    }

    #[test]
    fn kinds_round_trip_their_wire_names() {
        for kind in AlertKind::ALL {
            assert_eq!(kind.as_str().parse::<AlertKind>().unwrap(), kind);
        }
        assert!("budget.nope".parse::<AlertKind>().is_err());
        let alert = Alert::webhook_test("whk_1", "n", at("2026-12-03T00:00:00Z"));
        let body: Value = serde_json::from_str(&alert.body()).unwrap();
        assert_eq!(body["type"], "webhook.test");
        assert_eq!(body["id"], alert.id.as_str());
        assert_eq!(serde_json::from_value::<Alert>(body).unwrap(), alert);
    }
}
