//! Per-key statistics: verifications per UTC day by verdict code, and `last_used_at`.
//!
//! A [`StatsRecorder`] counts in memory on the verify path and writes batches to a [`StatsStore`] — at most one
//! write per key and day per flush, never one per verify; a flush that fails keeps its counts for the next one.
//! [`KeyStats::summary`] gives what `keymeter keys stats` prints, with the plain "unusual" rule of §10.

mod recorder;
mod watch;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::keys::VerdictCode;

pub use recorder::StatsRecorder;
pub use watch::UnusualWatch;

/// Verifications of one key on one UTC day, by verdict code ([`VerdictCode::index`]).
pub type Counts = [u64; VerdictCode::ALL.len()];

/// What a flush adds for one key and day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsDelta {
    /// The key.
    pub key_id: String,
    /// The UTC day.
    pub day: NaiveDate,
    /// Verifications by code.
    pub counts: Counts,
    /// The latest valid verification of the key in the batch, if any.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Where the counts are kept. Object safe.
#[async_trait]
pub trait StatsStore: Send + Sync + std::fmt::Debug {
    /// Adds every delta in one atomic step, and moves each key's `last_used_at` forward (never back).
    ///
    /// # Errors
    /// Backend failures; the caller keeps the deltas for the next try.
    async fn add_stats(&self, deltas: &[StatsDelta]) -> Result<()>;

    /// The key's days from `since` (inclusive), oldest first; days without verifications are left out.
    ///
    /// # Errors
    /// Backend failures only.
    async fn key_stats(&self, key_id: &str, since: NaiveDate) -> Result<Vec<(NaiveDate, Counts)>>;
}

/// One day of a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaySummary {
    /// `YYYY-MM-DD`, UTC.
    pub day: NaiveDate,
    /// Verifications that day.
    pub total: u64,
    /// `VALID` ones.
    pub valid: u64,
}

/// What `keys stats` shows: totals by code over a period, each day, and whether today looks unusual.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyStats {
    /// The key.
    pub key_id: String,
    /// Verifications over the period.
    pub total: u64,
    /// Verifications over the period by code (codes never seen are left out).
    pub by_code: BTreeMap<&'static str, u64>,
    /// The key's last valid use, if known.
    pub last_used_at: Option<DateTime<Utc>>,
    /// `total` over the number of days of the period.
    pub average_per_day: f64,
    /// Every day of the period, oldest first, zeros included.
    pub days: Vec<DaySummary>,
    /// Whether today is unusual (see [`KeyStats::summary`]).
    pub unusual: bool,
    /// Why, when it is.
    pub unusual_reason: Option<String>,
}

fn total(c: &Counts) -> u64 {
    c.iter().sum()
}

impl KeyStats {
    /// Summarises `days` (as [`StatsStore::key_stats`] returns them) over the `period` days ending `today`.
    ///
    /// Today is unusual when its total is over 3× the median of the previous 14 days and at least 100, or when
    /// more than half of today's verifications were rejected and at least 20 were.
    pub fn summary(
        key_id: &str,
        stored: &[(NaiveDate, Counts)],
        today: NaiveDate,
        period: u32,
        last_used_at: Option<DateTime<Utc>>,
    ) -> KeyStats {
        let period = period.max(1);
        let counts_of = |day: NaiveDate| {
            stored
                .iter()
                .find(|(d, _)| *d == day)
                .map_or([0; VerdictCode::ALL.len()], |(_, c)| *c)
        };
        let days: Vec<NaiveDate> = (0..period)
            .rev()
            .filter_map(|back| today.checked_sub_days(chrono::Days::new(u64::from(back))))
            .collect();
        let mut by_code = BTreeMap::new();
        let mut sum = 0;
        let mut summaries = Vec::with_capacity(days.len());
        for &day in &days {
            let c = counts_of(day);
            for code in VerdictCode::ALL {
                if c[code.index()] > 0 {
                    *by_code.entry(code.as_str()).or_insert(0) += c[code.index()];
                }
            }
            sum += total(&c);
            summaries.push(DaySummary {
                day,
                total: total(&c),
                valid: c[VerdictCode::Valid.index()],
            });
        }
        let now = counts_of(today);
        let today_total = total(&now);
        let mut previous: Vec<u64> = (1..=14u64)
            .filter_map(|back| today.checked_sub_days(chrono::Days::new(back)))
            .map(|d| total(&counts_of(d)))
            .collect();
        previous.sort_unstable();
        // The median of 14 days: the mean of the 7th and 8th.
        let median2 = previous.get(6).copied().unwrap_or(0) + previous.get(7).copied().unwrap_or(0);
        let rejected = today_total - now[VerdictCode::Valid.index()];
        let unusual_reason = if today_total >= 100
            && u128::from(today_total) * 2 > 3 * u128::from(median2)
        {
            Some(format!(
                "{today_total} verifications today, over 3× the median of the previous 14 days ({})",
                median2 as f64 / 2.0
            ))
        } else if rejected >= 20 && rejected * 2 > today_total {
            Some(format!(
                "{rejected} of today's {today_total} verifications were rejected"
            ))
        } else {
            None
        };
        KeyStats {
            key_id: key_id.to_owned(),
            total: sum,
            by_code,
            last_used_at,
            average_per_day: sum as f64 / f64::from(period),
            days: summaries,
            unusual: unusual_reason.is_some(),
            unusual_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    fn counts(valid: u64, not_found: u64) -> Counts {
        let mut c = [0; VerdictCode::ALL.len()];
        c[VerdictCode::Valid.index()] = valid;
        c[VerdictCode::NotFound.index()] = not_found;
        c
    }

    #[test]
    fn summary_totals_days_and_the_unusual_rule() {
        // Fourteen ordinary days of 40, then 130 today: over 3 × 40 with at least 100.
        let mut stored: Vec<(NaiveDate, Counts)> =
            (1..=14).map(|d| (day(d), counts(40, 0))).collect();
        stored.push((day(15), counts(130, 0)));
        let s = KeyStats::summary("k", &stored, day(15), 30, None);
        assert_eq!(s.total, 14 * 40 + 130);
        assert_eq!(s.days.len(), 30);
        assert_eq!(s.days.last().unwrap().total, 130);
        assert_eq!(s.by_code["VALID"], 690);
        assert!(s.unusual, "{s:?}");
        // 120 is exactly 3×: not over.
        stored.pop();
        stored.push((day(15), counts(120, 0)));
        assert!(!KeyStats::summary("k", &stored, day(15), 30, None).unusual);
        // Rejections: more than half, at least 20.
        stored.pop();
        stored.push((day(15), counts(19, 21)));
        let s = KeyStats::summary("k", &stored, day(15), 7, None);
        assert!(s.unusual);
        assert!(s.unusual_reason.unwrap().contains("21 of today's 40"));
        stored.pop();
        stored.push((day(15), counts(10, 19)));
        assert!(!KeyStats::summary("k", &stored, day(15), 7, None).unusual);
    }
}
