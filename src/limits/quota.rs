//! Quotas (`100/min`), the limits of a scope, and the scopes limits belong to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The period of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
}

impl Period {
    /// The period in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            Period::Second => 1_000_000,
            Period::Minute => 60_000_000,
            Period::Hour => 3_600_000_000,
            Period::Day => 86_400_000_000,
        }
    }

    /// How the period is written: `s`, `min`, `h`, `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "min",
            Period::Hour => "h",
            Period::Day => "day",
        }
    }
}

/// `count` units (requests or tokens) per `period`, with a burst of the whole quota: `100/min` admits 100 at
/// once, then one every 0.6 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quota {
    /// Units per period, at least 1.
    pub count: u64,
    /// The period.
    pub period: Period,
}

/// The largest count of a quota: 10¹², so that `count × emission interval` never overflows.
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

impl Quota {
    /// A quota of `count` per `period`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a count of 0 or over [`MAX_QUOTA`].
    pub fn new(count: u64, period: Period) -> Result<Self> {
        if count == 0 || count > MAX_QUOTA {
            return Err(Error::invalid(
                "quota",
                format!("the count must be between 1 and {MAX_QUOTA}"),
            ));
        }
        Ok(Quota { count, period })
    }

    /// The time one unit "costs": the period over the count, in whole microseconds (at least 1).
    pub fn emission_micros(&self) -> i64 {
        (self.period.micros() / self.count as i64).max(1)
    }
}

/// Parses `N/PERIOD`: `s`, `sec`, `second`; `m`, `min`, `minute`; `h`, `hour`; `d`, `day`.
impl FromStr for Quota {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "quota",
                "expected N/PERIOD with N ≥ 1 and PERIOD s, min, h or day (100/min)",
            )
        };
        let (n, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let period = match per.trim() {
            "s" | "sec" | "second" => Period::Second,
            "m" | "min" | "minute" => Period::Minute,
            "h" | "hour" => Period::Hour,
            "d" | "day" => Period::Day,
            _ => return Err(bad()),
        };
        Quota::new(count, period).map_err(|_| bad())
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.as_str())
    }
}

impl Serialize for Quota {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl From<crate::keys::RateLimit> for Quota {
    fn from(limit: crate::keys::RateLimit) -> Self {
        let period = match limit.per {
            crate::keys::RatePer::Second => Period::Second,
            crate::keys::RatePer::Minute => Period::Minute,
            crate::keys::RatePer::Hour => Period::Hour,
            crate::keys::RatePer::Day => Period::Day,
        };
        Quota {
            count: u64::from(limit.requests.max(1)),
            period,
        }
    }
}

/// The limits of one scope: on requests (charged at verify) and on tokens (charged after the response).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Request quotas.
    pub requests: Vec<Quota>,
    /// Token quotas.
    pub tokens: Vec<Quota>,
    /// The models the scope's keys may call ([`crate::keys::models`]); empty allows any.
    pub models: Vec<crate::keys::ModelRule>,
    /// The most requests the scope may have in flight at once ([`crate::limits::slots`]); `None` for no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// The most quotas of one kind a scope may have.
pub const MAX_QUOTAS: usize = 8;

impl Limits {
    /// Whether there is no limit.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.tokens.is_empty()
            && self.models.is_empty()
            && self.max_parallel.is_none()
    }

    /// A key's limits as stored, with its record's own `rate_limit` (set at creation) as the first request quota
    /// unless it is already among them: what the key is held to, and what its record shows.
    pub fn with_record_limit(mut self, record: &crate::keys::KeyRecord) -> Limits {
        if let Some(own) = record.rate_limit.map(Quota::from)
            && !self.requests.contains(&own)
        {
            self.requests.insert(0, own);
        }
        self
    }

    /// Checks what every backend requires: at most [`MAX_QUOTAS`] of each kind, valid model rules, a concurrency
    /// limit between 1 and [`crate::limits::MAX_PARALLEL`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`].
    pub fn validate(&self) -> Result<()> {
        if self.requests.len() > MAX_QUOTAS || self.tokens.len() > MAX_QUOTAS {
            return Err(Error::invalid(
                "limits",
                format!("at most {MAX_QUOTAS} request and {MAX_QUOTAS} token quotas"),
            ));
        }
        if let Some(max) = self.max_parallel {
            crate::limits::slots::check_max(max)?;
        }
        crate::keys::models::check_rules(&self.models)
    }
}

/// Whose limit: a key's own, or one its owner's or org's keys share — the same key / owner / org scopes budgets
/// have ([`BudgetScope`](crate::ledger::BudgetScope)), written `kind:id` (`owner:alice`).
pub type LimitScope = crate::ledger::BudgetScope;
