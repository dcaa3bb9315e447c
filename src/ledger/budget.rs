//! Budgets and reservations.
//!
//! A request reserves its worst-case cost first ([`Ledger::reserve`](crate::ledger::Ledger::reserve)), settles the
//! actual cost after ([`Ledger::settle`](crate::ledger::Ledger::settle)), or releases the reservation; an
//! abandoned reservation expires at its deadline. A reservation is admitted only if, for every budget it touches,
//! `spent + reserved + amount ≤ limit`, checked and taken in one atomic step, so concurrent requests never
//! overshoot.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ledger::event::UsageEvent;
use crate::ledger::period::BudgetPeriod;

/// Whose spend a budget limits, or whose requests a rate limit counts ([`crate::limits::LimitScope`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetScope {
    /// One inbound API key.
    Key(String),
    /// One owner (user).
    Owner(String),
    /// One organisation.
    Org(String),
}

impl BudgetScope {
    /// `key`, `owner` or `org`.
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetScope::Key(_) => "key",
            BudgetScope::Owner(_) => "owner",
            BudgetScope::Org(_) => "org",
        }
    }

    /// The key id, owner or org.
    pub fn id(&self) -> &str {
        match self {
            BudgetScope::Key(s) | BudgetScope::Owner(s) | BudgetScope::Org(s) => s,
        }
    }

    /// Checks the scope's id (1–256 characters, no control characters), as every backend does before using it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`].
    pub fn validate(&self) -> Result<()> {
        crate::validate::name(self.kind(), self.id())
    }

    /// Rebuilds a scope from its kind and id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown kind or an invalid id.
    pub fn from_parts(kind: &str, id: &str) -> Result<Self> {
        crate::validate::name("budget scope", id)?;
        match kind {
            "key" => Ok(BudgetScope::Key(id.to_owned())),
            "owner" => Ok(BudgetScope::Owner(id.to_owned())),
            "org" => Ok(BudgetScope::Org(id.to_owned())),
            _ => Err(Error::invalid("budget scope", "expected key, owner or org")),
        }
    }

    /// Whether `event` counts against this scope.
    pub fn covers(&self, event: &UsageEvent) -> bool {
        match self {
            BudgetScope::Key(k) => event.key_id.as_deref() == Some(k),
            BudgetScope::Owner(o) => event.owner == *o,
            BudgetScope::Org(o) => event.org.as_deref() == Some(o),
        }
    }

    /// The scopes an event counts against: its key, owner and org.
    pub fn of_event(event: &UsageEvent) -> Vec<BudgetScope> {
        BudgetScope::of(event.key_id.as_deref(), &event.owner, event.org.as_deref())
    }

    /// The scopes of a key, an owner and an org (those present), in that order.
    pub fn of(key_id: Option<&str>, owner: &str, org: Option<&str>) -> Vec<BudgetScope> {
        let mut out = Vec::with_capacity(3);
        if let Some(k) = key_id {
            out.push(BudgetScope::Key(k.to_owned()));
        }
        out.push(BudgetScope::Owner(owner.to_owned()));
        if let Some(o) = org {
            out.push(BudgetScope::Org(o.to_owned()));
        }
        out
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

impl Serialize for BudgetScope {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A spend limit for one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Whose spend.
    pub scope: BudgetScope,
    /// The hard limit.
    pub limit: Decimal,
    /// An alert threshold below the limit, if any.
    pub soft_limit: Option<Decimal>,
    /// The period the limit applies to.
    pub period: BudgetPeriod,
    /// The time zone of the period's calendar.
    pub tz: Tz,
    /// The percentages of the limit whose crossing is alerted (`budget.threshold`), ascending; `None`: the
    /// defaults ([`crate::alerts::DEFAULT_THRESHOLDS`], 50, 80 and 100).
    pub thresholds: Option<Vec<u8>>,
}

impl Budget {
    /// A budget of `limit` per `period` in UTC.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`Budget::validate`].
    pub fn new(scope: BudgetScope, limit: Decimal, period: BudgetPeriod) -> Result<Self> {
        let budget = Budget {
            scope,
            limit,
            soft_limit: None,
            period,
            tz: Tz::UTC,
            thresholds: None,
        };
        budget.validate()?;
        Ok(budget)
    }

    /// Checks what every backend requires of a budget: a valid scope, a limit that is not negative, and a soft
    /// limit between 0 and the limit.
    ///
    /// # Errors
    /// [`Error::InvalidInput`].
    pub fn validate(&self) -> Result<()> {
        self.scope.validate()?;
        crate::validate::amount("budget limit", self.limit)?;
        if self
            .soft_limit
            .is_some_and(|s| s.is_sign_negative() || s > self.limit)
        {
            return Err(Error::invalid(
                "soft limit",
                "must be between 0 and the limit",
            ));
        }
        if let Some(t) = &self.thresholds {
            check_thresholds(t)?;
        }
        Ok(())
    }

    /// Sets the alert thresholds: percentages of the limit, 1–100, at most 10 (empty: none).
    ///
    /// ```
    /// # use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope};
    /// let b = Budget::new(BudgetScope::Owner("a".into()), 10.into(), BudgetPeriod::Monthly)?.thresholds(vec![90, 25])?;
    /// assert_eq!(b.alert_thresholds(), [25, 90]);
    /// assert!(Budget::new(BudgetScope::Owner("a".into()), 10.into(), BudgetPeriod::Monthly)?.thresholds(vec![0]).is_err());
    /// # Ok::<(), keymeter::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a percentage outside 1–100 or more than 10 of them.
    pub fn thresholds(mut self, mut percents: Vec<u8>) -> Result<Self> {
        percents.sort_unstable();
        percents.dedup();
        check_thresholds(&percents)?;
        self.thresholds = Some(percents);
        Ok(self)
    }

    /// The thresholds alerted: its own, else the defaults.
    pub fn alert_thresholds(&self) -> &[u8] {
        self.thresholds
            .as_deref()
            .unwrap_or(&crate::alerts::DEFAULT_THRESHOLDS)
    }

    /// Sets the soft limit.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when negative or above the limit.
    pub fn soft_limit(mut self, soft: Decimal) -> Result<Self> {
        if soft.is_sign_negative() || soft > self.limit {
            return Err(Error::invalid(
                "soft limit",
                "must be between 0 and the limit",
            ));
        }
        self.soft_limit = Some(soft);
        Ok(self)
    }

    /// Sets the time zone.
    #[must_use]
    pub fn tz(mut self, tz: Tz) -> Self {
        self.tz = tz;
        self
    }

    /// The start of the period containing `at`.
    pub fn period_start(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        self.period.bounds(at, self.tz).0
    }
}

fn check_thresholds(percents: &[u8]) -> Result<()> {
    if percents.len() > 10 || percents.iter().any(|p| !(1..=100).contains(p)) {
        return Err(Error::invalid(
            "alert thresholds",
            "must be at most 10 percentages of the limit, each 1–100",
        ));
    }
    Ok(())
}

/// Parses thresholds written `50,80,100` (the CLI's and the stores' form).
///
/// # Errors
/// [`Error::InvalidInput`] for anything but up to 10 comma-separated percentages 1–100.
pub fn parse_thresholds(text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = text
        .split(',')
        .map(|p| {
            p.trim().trim_end_matches('%').parse::<u8>().map_err(|_| {
                Error::invalid("alert thresholds", "must be percentages such as 50,80,100")
            })
        })
        .collect::<Result<Vec<u8>>>()?;
    out.sort_unstable();
    out.dedup();
    check_thresholds(&out)?;
    Ok(out)
}

/// Where a budget stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    /// The budget's scope.
    pub scope: BudgetScope,
    /// The period.
    pub period: BudgetPeriod,
    /// The limit.
    pub limit: Decimal,
    /// Settled spend in the current period.
    pub spent: Decimal,
    /// Live reservations in the current period.
    pub reserved: Decimal,
    /// `limit − spent − reserved`, never below zero.
    pub remaining: Decimal,
    /// The soft limit, if any.
    pub soft_limit: Option<Decimal>,
    /// Whether `spent + reserved` has reached the soft limit.
    pub soft_exceeded: bool,
    /// The current period's start.
    pub period_start: DateTime<Utc>,
}

impl BudgetStatus {
    /// The status of `budget` given its spend and reservations.
    pub fn new(budget: &Budget, spent: Decimal, reserved: Decimal, now: DateTime<Utc>) -> Self {
        let used = spent + reserved;
        BudgetStatus {
            scope: budget.scope.clone(),
            period: budget.period,
            limit: budget.limit,
            spent: spent.normalize(),
            reserved: reserved.normalize(),
            remaining: (budget.limit - used).max(Decimal::ZERO).normalize(),
            soft_limit: budget.soft_limit,
            soft_exceeded: budget.soft_limit.is_some_and(|s| used >= s),
            period_start: budget.period_start(now),
        }
    }
}

/// A held reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// Its id, for settle and release.
    pub id: String,
    /// The amount held.
    pub amount: Decimal,
    /// When it expires by itself.
    pub expires_at: DateTime<Utc>,
    /// The budgets it holds against.
    pub scopes: Vec<BudgetScope>,
}

/// Parses a non-negative decimal amount (`12.50`).
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn parse_amount(text: &str) -> Result<Decimal> {
    Decimal::from_str(text.trim())
        .ok()
        .filter(|d| !d.is_sign_negative())
        .ok_or_else(|| Error::invalid("amount", format!("{text:?} is not a non-negative decimal")))
}
