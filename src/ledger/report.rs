//! Spend reports: events grouped by key, owner, org, model, day, ISO week or month, with exact sums.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ledger::event::UsageEvent;

/// What to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// The inbound key (`(none)` for events without one).
    Key,
    /// The owner.
    Owner,
    /// The organisation (`(none)` for events without one).
    Org,
    /// The model.
    Model,
    /// The calendar day in the report's time zone, `YYYY-MM-DD`.
    Day,
    /// The ISO week in the report's time zone, `YYYY-Www` (the ISO week-numbering year).
    Week,
    /// The calendar month in the report's time zone, `YYYY-MM`.
    Month,
}

impl FromStr for GroupBy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "key" => Ok(GroupBy::Key),
            "owner" => Ok(GroupBy::Owner),
            "org" => Ok(GroupBy::Org),
            "model" => Ok(GroupBy::Model),
            "day" => Ok(GroupBy::Day),
            "week" => Ok(GroupBy::Week),
            "month" => Ok(GroupBy::Month),
            _ => Err(Error::invalid(
                "group",
                "expected owner, key, org, model, day, week or month",
            )),
        }
    }
}

/// One group of a report. Input tokens are every prompt-side class; output tokens include reasoning and audio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportGroup {
    /// The group's key.
    pub key: String,
    /// Exact total cost.
    pub cost: Decimal,
    /// Number of events.
    pub events: u64,
    /// Prompt-side tokens.
    pub input_tokens: u64,
    /// Output-side tokens.
    pub output_tokens: u64,
}

/// A report: groups sorted by key, and the exact total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The groups.
    pub groups: Vec<ReportGroup>,
    /// The sum of every group's cost.
    pub total: Decimal,
}

/// Groups `events` by `by`, calendar groups in `tz`. Pure.
pub fn aggregate<'a>(
    events: impl IntoIterator<Item = &'a UsageEvent>,
    by: GroupBy,
    tz: Tz,
) -> Report {
    let mut groups: BTreeMap<String, ReportGroup> = BTreeMap::new();
    let mut total = Decimal::ZERO;
    for e in events {
        let key = match by {
            GroupBy::Key => e.key_id.clone().unwrap_or_else(|| "(none)".into()),
            GroupBy::Owner => e.owner.clone(),
            GroupBy::Org => e.org.clone().unwrap_or_else(|| "(none)".into()),
            GroupBy::Model => e.model.clone(),
            GroupBy::Day => e.at.with_timezone(&tz).format("%Y-%m-%d").to_string(),
            GroupBy::Week => e.at.with_timezone(&tz).format("%G-W%V").to_string(),
            GroupBy::Month => e.at.with_timezone(&tz).format("%Y-%m").to_string(),
        };
        let g = groups.entry(key.clone()).or_insert_with(|| ReportGroup {
            key,
            cost: Decimal::ZERO,
            events: 0,
            input_tokens: 0,
            output_tokens: 0,
        });
        g.cost += e.cost;
        g.events += 1;
        g.input_tokens = g.input_tokens.saturating_add(e.usage.prompt_tokens());
        g.output_tokens = g.output_tokens.saturating_add(e.usage.output_tokens());
        total += e.cost;
    }
    let groups = groups
        .into_values()
        .map(|mut g| {
            g.cost = g.cost.normalize();
            g
        })
        .collect();
    Report {
        groups,
        total: total.normalize(),
    }
}
