//! Spend reports: events grouped by key, owner, org, model, day, ISO week, month, tag or end user, with exact sums.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
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
    /// Each tag the request carried (`(none)` for events without one): an event with several tags counts in
    /// each of their groups, and once in the total.
    Tag,
    /// The end user the request was made for (`(none)` for events without one).
    EndUser,
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
            "tag" => Ok(GroupBy::Tag),
            "end_user" | "end-user" => Ok(GroupBy::EndUser),
            _ => Err(Error::invalid(
                "group",
                "expected owner, key, org, model, day, week, month, tag or end-user",
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
    /// Of those, the events billed at their reservation because their usage never arrived (counted in the groups
    /// and the total like any other).
    pub estimated: Estimated,
}

/// The `estimated` events of a report: how many, and what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Estimated {
    /// How many.
    pub events: u64,
    /// Their cost.
    pub cost: Decimal,
}

impl Estimated {
    /// Counts `cost` as one more estimated event.
    pub fn add(&mut self, cost: Decimal) {
        self.events += 1;
        self.cost += cost;
    }
}

/// Exact sums of a group (or of a stored rollup row): cost, events, prompt-side and output-side tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) cost: Decimal,
    pub(crate) events: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
}

impl Totals {
    /// One event's share.
    pub(crate) fn of(e: &UsageEvent) -> Self {
        Totals::one(e.cost, &e.usage)
    }

    /// The share of one event of this cost and usage.
    pub(crate) fn one(cost: Decimal, usage: &crate::pricing::Usage) -> Self {
        Totals {
            cost,
            events: 1,
            input_tokens: usage.prompt_tokens(),
            output_tokens: usage.output_tokens(),
        }
    }

    /// Takes `other` away (an event replaced in place); counts never fall below zero.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn sub(&mut self, other: &Totals) {
        self.cost -= other.cost;
        self.events = self.events.saturating_sub(other.events);
        self.input_tokens = self.input_tokens.saturating_sub(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(other.output_tokens);
    }

    /// Adds `other`.
    pub(crate) fn add(&mut self, other: &Totals) {
        self.cost += other.cost;
        self.events = self.events.saturating_add(other.events);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

impl GroupBy {
    /// Whether the groups are calendar periods (day, week, month) rather than a field of the event.
    pub fn is_calendar(self) -> bool {
        matches!(self, GroupBy::Day | GroupBy::Week | GroupBy::Month)
    }

    /// Whether it groups by what the stores keep outside their rollups (a tag, an end user): such a report is
    /// summed from the events themselves ([`aggregate`]).
    pub fn by_attribution(self) -> bool {
        matches!(self, GroupBy::Tag | GroupBy::EndUser)
    }

    /// The calendar group of the instant `at` in `tz`; `None` for the field groupings.
    pub(crate) fn calendar_key(self, at: DateTime<Utc>, tz: Tz) -> Option<String> {
        let format = match self {
            GroupBy::Day => "%Y-%m-%d",
            GroupBy::Week => "%G-W%V",
            GroupBy::Month => "%Y-%m",
            _ => return None,
        };
        Some(at.with_timezone(&tz).format(format).to_string())
    }

    /// The group of an event with these fields.
    pub(crate) fn key_of(
        self,
        at: DateTime<Utc>,
        tz: Tz,
        key_id: Option<&str>,
        owner: &str,
        org: Option<&str>,
        model: &str,
    ) -> String {
        match self {
            GroupBy::Key => key_id.unwrap_or(NONE).to_owned(),
            GroupBy::Owner => owner.to_owned(),
            GroupBy::Org => org.unwrap_or(NONE).to_owned(),
            GroupBy::Model => model.to_owned(),
            GroupBy::Day | GroupBy::Week | GroupBy::Month => {
                self.calendar_key(at, tz).unwrap_or_default()
            }
            // Not a field of these: [`aggregate`] groups them from the events.
            GroupBy::Tag | GroupBy::EndUser => NONE.to_owned(),
        }
    }

    /// The one calendar group holding every instant of `[start, end)`, if there is one: the zone's offset is the
    /// same at both ends (no transition inside; transitions are months apart) and both ends fall in the same
    /// group. `None` when the span straddles a boundary (a zone whose offset is no multiple of the span, such
    /// as a historical local mean time); the caller then counts that span's events one by one.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn span_key(
        self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        tz: Tz,
    ) -> Option<String> {
        use chrono::Offset;
        let last = end - chrono::Duration::microseconds(1);
        let offset = |t: DateTime<Utc>| t.with_timezone(&tz).offset().fix();
        if offset(start) != offset(last) {
            return None;
        }
        let first = self.calendar_key(start, tz)?;
        (self.calendar_key(last, tz)? == first).then_some(first)
    }
}

/// The group key of events without a key or an organisation.
const NONE: &str = "(none)";

/// Accumulates totals per group; memory grows with the number of groups, not of events.
#[derive(Debug, Default)]
pub(crate) struct ReportBuilder {
    groups: BTreeMap<String, Totals>,
}

impl ReportBuilder {
    /// Adds `totals` to the group `key`.
    pub(crate) fn add(&mut self, key: &str, totals: &Totals) {
        match self.groups.get_mut(key) {
            Some(g) => g.add(totals),
            None => {
                self.groups.insert(key.to_owned(), *totals);
            }
        }
    }

    /// The report: groups in byte order of their keys, exact sums.
    pub(crate) fn finish(self) -> Report {
        let mut total = Decimal::ZERO;
        let groups = self
            .groups
            .into_iter()
            .map(|(key, t)| {
                total += t.cost;
                ReportGroup {
                    key,
                    cost: t.cost.normalize(),
                    events: t.events,
                    input_tokens: t.input_tokens,
                    output_tokens: t.output_tokens,
                }
            })
            .collect();
        Report {
            groups,
            total: total.normalize(),
            estimated: Estimated::default(),
        }
    }
}

/// Groups `events` by `by`, calendar groups in `tz`. Pure.
pub fn aggregate<'a>(
    events: impl IntoIterator<Item = &'a UsageEvent>,
    by: GroupBy,
    tz: Tz,
) -> Report {
    let mut report = ReportBuilder::default();
    let mut estimated = Estimated::default();
    let mut total = Decimal::ZERO;
    for e in events {
        if e.estimated {
            estimated.add(e.cost);
        }
        total += e.cost;
        match by {
            GroupBy::Tag if !e.tags.is_empty() => {
                for tag in &e.tags {
                    report.add(tag, &Totals::of(e));
                }
                continue;
            }
            GroupBy::Tag => {
                report.add(NONE, &Totals::of(e));
                continue;
            }
            GroupBy::EndUser => {
                report.add(e.end_user.as_deref().unwrap_or(NONE), &Totals::of(e));
                continue;
            }
            _ => {}
        }
        let key = by.key_of(
            e.at,
            tz,
            e.key_id.as_deref(),
            &e.owner,
            e.org.as_deref(),
            &e.model,
        );
        report.add(&key, &Totals::of(e));
    }
    let mut report = report.finish();
    // By tag, groups overlap: the total counts each event once.
    report.total = total.normalize();
    estimated.cost = estimated.cost.normalize();
    report.estimated = estimated;
    report
}
