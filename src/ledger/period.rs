//! Calendar periods in a time zone: where a day, ISO week or month starts, DST included.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetPeriod {
    /// A calendar day.
    Daily,
    /// An ISO week (Monday to Sunday).
    Weekly,
    /// A calendar month.
    Monthly,
    /// All time.
    Total,
}

impl BudgetPeriod {
    /// `daily`, `weekly`, `monthly` or `total`.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Total => "total",
        }
    }

    /// The period containing `at`, in `tz`: `[start, end)`, both UTC; `Total` is `[epoch, far future)`.
    pub fn bounds(self, at: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        let local = at.with_timezone(&tz).date_naive();
        let (first, next) = match self {
            BudgetPeriod::Total => return (DateTime::UNIX_EPOCH, DateTime::<Utc>::MAX_UTC),
            BudgetPeriod::Daily => (local, local.checked_add_days(Days::new(1))),
            BudgetPeriod::Weekly => {
                let monday = local
                    - chrono::Duration::days(i64::from(local.weekday().num_days_from_monday()));
                (monday, monday.checked_add_days(Days::new(7)))
            }
            BudgetPeriod::Monthly => {
                let first = local.with_day(1).unwrap_or(local);
                (first, first.checked_add_months(Months::new(1)))
            }
        };
        let end = next.map_or(DateTime::<Utc>::MAX_UTC, |d| local_midnight(d, tz));
        (local_midnight(first, tz), end)
    }
}

/// The first instant of `day` in `tz`. Where midnight does not exist (a DST gap at 00:00), the day starts at the
/// first local time that does.
pub fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t: NaiveDateTime = day.and_time(chrono::NaiveTime::MIN);
    for _ in 0..48 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(dt) => return dt.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => t += chrono::Duration::minutes(30),
        }
    }
    Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN))
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for BudgetPeriod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "daily" | "day" => Ok(BudgetPeriod::Daily),
            "weekly" | "week" => Ok(BudgetPeriod::Weekly),
            "monthly" | "month" => Ok(BudgetPeriod::Monthly),
            "total" => Ok(BudgetPeriod::Total),
            _ => Err(Error::invalid(
                "budget period",
                "expected daily, weekly, monthly or total",
            )),
        }
    }
}

impl Serialize for BudgetPeriod {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
