//! Report rollups for SQLite: SQLite cannot sum decimals exactly, and reading every event would make a report
//! cost (in time and memory) what the event table holds. So each event's transaction also adds it to
//!
//! - the **timeline**: totals per 15-minute UTC bucket, for calendar reports (day, week, month in any zone: every
//!   zone's offset today is a multiple of 15 minutes, and a bucket that straddles a local boundary anyway is
//!   counted from its events);
//! - the **rollups**: totals per UTC day and per UTC month and per (owner, org, key, model), for the field
//!   groupings and the field filters.
//!
//! A report reads the rollup rows that lie wholly inside its range and counts only the ragged edges (less than a
//! bucket, a day or a month) from the events themselves; memory grows with the number of groups, not of events.
//! Amounts are exact decimal strings summed by keymeter.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use futures_util::TryStreamExt;
use sqlx::sqlite::Sqlite;
use sqlx::{QueryBuilder, Row};

use super::{SqliteStore, Tx, corrupt, db, from_micros, micros};
use crate::error::Result;
use crate::ledger::report::{ReportBuilder, Totals};
use crate::ledger::{EventFilter, GroupBy, Report, UsageEvent};
use crate::pricing::Usage;
use crate::store::sql::Columns;

/// The timeline's bucket, in microseconds.
const BUCKET: i64 = 15 * 60 * 1_000_000;
/// A UTC day, in microseconds (Unix time has no leap seconds).
const DAY: i64 = 86_400 * 1_000_000;
/// Rows per multi-row statement: at most 11 parameters each, far below SQLite's 32,766.
const CHUNK: usize = 500;

/// A rollup level: totals per UTC day or per UTC month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Day,
    Month,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Day => "day",
            Level::Month => "month",
        }
    }

    /// The `[start, end)` of this level's period holding `at` (micros).
    fn span(self, at: i64) -> (i64, i64) {
        match self {
            Level::Day => {
                let start = at.div_euclid(DAY) * DAY;
                (start, start + DAY)
            }
            Level::Month => {
                let start = month_floor(at);
                (start, next_month(start))
            }
        }
    }
}

fn bucket_of(at: i64) -> i64 {
    at.div_euclid(BUCKET) * BUCKET
}

fn month_floor(at: i64) -> i64 {
    match DateTime::from_timestamp_micros(at) {
        Some(t) => Utc
            .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
            .single()
            .map_or(at, micros),
        None => at,
    }
}

/// The start of the month after the month starting at `start`.
fn next_month(start: i64) -> i64 {
    let Some(t) = DateTime::from_timestamp_micros(start) else {
        return i64::MAX;
    };
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map_or(i64::MAX, micros)
}

fn ceil_to(at: i64, floor: impl Fn(i64) -> i64, next: impl Fn(i64) -> i64) -> i64 {
    if at == i64::MIN {
        return at;
    }
    let f = floor(at);
    if f == at { at } else { next(f) }
}

fn floor_to(at: i64, floor: impl Fn(i64) -> i64) -> i64 {
    if at == i64::MAX { at } else { floor(at) }
}

/// How a field report covers `[a, b)` (micros; `i64::MIN`/`MAX` for an open end): whole UTC months from the
/// month rollups, whole days beside them from the day rollups, and the rest from the events. The pieces
/// partition the range.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cover {
    months: Option<(i64, i64)>,
    days: Vec<(i64, i64)>,
    events: Vec<(i64, i64)>,
}

fn cover(a: i64, b: i64) -> Cover {
    let mut plan = Cover::default();
    if a >= b {
        return plan;
    }
    let day_floor = |t: i64| t.div_euclid(DAY) * DAY;
    let ma = ceil_to(a, month_floor, next_month);
    let mb = floor_to(b, month_floor);
    let sides = if ma < mb {
        plan.months = Some((ma, mb));
        vec![(a, ma), (mb, b)]
    } else {
        vec![(a, b)]
    };
    for (x, y) in sides.into_iter().filter(|(x, y)| x < y) {
        let da = ceil_to(x, day_floor, |d| d + DAY);
        let db = floor_to(y, day_floor);
        if da < db {
            plan.days.push((da, db));
            if x < da {
                plan.events.push((x, da));
            }
            if db < y {
                plan.events.push((db, y));
            }
        } else {
            plan.events.push((x, y));
        }
    }
    plan
}

/// The stored form of an absent org or key id (names are never empty).
fn or_empty(v: Option<&str>) -> &str {
    v.unwrap_or("")
}

fn of_empty(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

type RollupKey = (Level, i64, i64, String, String, String, String);

/// Adds newly recorded events to the timeline and the rollups (inside the recording transaction).
pub(super) async fn add(tx: &mut Tx, events: &[&UsageEvent]) -> Result<()> {
    apply(tx, events, Sign::Add).await
}

/// Takes events out of the timeline and the rollups (an `estimated` event about to be replaced in place).
pub(super) async fn remove(tx: &mut Tx, events: &[&UsageEvent]) -> Result<()> {
    apply(tx, events, Sign::Remove).await
}

/// Whether events go into the rollups or out of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Add,
    Remove,
}

impl Sign {
    /// The stored totals `row` after applying `delta`.
    fn merge(self, delta: &Totals, row: &Totals) -> Totals {
        let mut merged = *row;
        match self {
            Sign::Add => merged.add(delta),
            Sign::Remove => merged.sub(delta),
        }
        merged
    }
}

async fn apply(tx: &mut Tx, events: &[&UsageEvent], sign: Sign) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut timeline: BTreeMap<i64, Totals> = BTreeMap::new();
    let mut rollups: BTreeMap<RollupKey, Totals> = BTreeMap::new();
    for e in events {
        let t = Totals::of(e);
        let at = micros(e.at);
        timeline.entry(bucket_of(at)).or_default().add(&t);
        for level in [Level::Day, Level::Month] {
            let (start, end) = level.span(at);
            let key = (
                level,
                start,
                end,
                e.owner.clone(),
                or_empty(e.org.as_deref()).to_owned(),
                or_empty(e.key_id.as_deref()).to_owned(),
                e.model.clone(),
            );
            rollups.entry(key).or_default().add(&t);
        }
    }
    merge_timeline(tx, timeline, sign).await?;
    merge_rollups(tx, rollups, sign).await
}

fn totals(row: &sqlx::sqlite::SqliteRow) -> Result<Totals> {
    let count = |c: &str| -> Result<u64> {
        let n: i64 = row.try_get(c).map_err(db)?;
        u64::try_from(n).map_err(|_| corrupt("rollup count"))
    };
    Ok(Totals {
        cost: row.decimal("cost")?,
        events: count("events")?,
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
    })
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn merge_timeline(tx: &mut Tx, deltas: BTreeMap<i64, Totals>, sign: Sign) -> Result<()> {
    let deltas: Vec<(i64, Totals)> = deltas.into_iter().collect();
    for chunk in deltas.chunks(CHUNK) {
        let given: BTreeMap<i64, &Totals> = chunk.iter().map(|(k, t)| (*k, t)).collect();
        // A delta with no row yet merges with zero totals.
        let mut merged: BTreeMap<i64, Totals> = chunk
            .iter()
            .map(|(k, d)| (*k, sign.merge(d, &Totals::default())))
            .collect();
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT * FROM keymeter_usage_timeline WHERE start_at IN (",
        );
        let mut list = qb.separated(", ");
        for (start, _) in chunk {
            list.push_bind(*start);
        }
        qb.push(")");
        for row in qb.build().fetch_all(&mut **tx).await.map_err(db)? {
            let start: i64 = row.try_get("start_at").map_err(db)?;
            if let (Some(d), Some(t)) = (given.get(&start), merged.get_mut(&start)) {
                *t = sign.merge(d, &totals(&row)?);
            }
        }
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keymeter_usage_timeline (start_at, cost, events, input_tokens, output_tokens) ",
        );
        qb.push_values(&merged, |mut row, (start, t)| {
            row.push_bind(*start)
                .push_bind(t.cost.normalize().to_string())
                .push_bind(count(t.events))
                .push_bind(count(t.input_tokens))
                .push_bind(count(t.output_tokens));
        });
        qb.push(
            " ON CONFLICT (start_at) DO UPDATE SET cost = excluded.cost, events = excluded.events, \
             input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens",
        );
        qb.build().execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

async fn merge_rollups(tx: &mut Tx, deltas: BTreeMap<RollupKey, Totals>, sign: Sign) -> Result<()> {
    let deltas: Vec<(RollupKey, Totals)> = deltas.into_iter().collect();
    for chunk in deltas.chunks(CHUNK) {
        let given: BTreeMap<&RollupKey, &Totals> = chunk.iter().map(|(k, t)| (k, t)).collect();
        // A delta with no row yet merges with zero totals.
        let mut merged: BTreeMap<RollupKey, Totals> = chunk
            .iter()
            .map(|(k, d)| (k.clone(), sign.merge(d, &Totals::default())))
            .collect();
        // A join on the listed keys (a row-value `IN` would make SQLite scan the whole table).
        let mut qb = QueryBuilder::<Sqlite>::new(
            "WITH wanted (level, start_at, owner, org, key_id, model) AS (",
        );
        qb.push_values(
            chunk,
            |mut row, ((level, start, _, owner, org, key, model), _)| {
                row.push_bind(level.as_str())
                    .push_bind(*start)
                    .push_bind(owner)
                    .push_bind(org)
                    .push_bind(key)
                    .push_bind(model);
            },
        );
        qb.push(
            ") SELECT r.* FROM wanted JOIN keymeter_usage_rollups r \
             USING (level, start_at, owner, org, key_id, model)",
        );
        for row in qb.build().fetch_all(&mut **tx).await.map_err(db)? {
            let level = match row.text("level")?.as_str() {
                "day" => Level::Day,
                "month" => Level::Month,
                _ => return Err(corrupt("rollup level")),
            };
            let key = (
                level,
                row.try_get("start_at").map_err(db)?,
                row.try_get("end_at").map_err(db)?,
                row.text("owner")?,
                row.text("org")?,
                row.text("key_id")?,
                row.text("model")?,
            );
            if let (Some(d), Some(t)) = (given.get(&key), merged.get_mut(&key)) {
                *t = sign.merge(d, &totals(&row)?);
            }
        }
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keymeter_usage_rollups (level, start_at, end_at, owner, org, key_id, model, cost, events, \
             input_tokens, output_tokens) ",
        );
        qb.push_values(
            &merged,
            |mut row, ((level, start, end, owner, org, key, model), t)| {
                row.push_bind(level.as_str())
                    .push_bind(*start)
                    .push_bind(*end)
                    .push_bind(owner)
                    .push_bind(org)
                    .push_bind(key)
                    .push_bind(model)
                    .push_bind(t.cost.normalize().to_string())
                    .push_bind(count(t.events))
                    .push_bind(count(t.input_tokens))
                    .push_bind(count(t.output_tokens));
            },
        );
        qb.push(
            " ON CONFLICT (level, start_at, owner, org, key_id, model) DO UPDATE SET cost = excluded.cost, \
             events = excluded.events, input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens",
        );
        qb.build().execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// Events per rebuild step: bounds the memory of a rebuild over any number of events.
const REBUILD_STEP: i64 = 10_000;

/// Recomputes every timeline and rollup row whose span meets `[a, b)` from the events stored now: after a
/// migration on a database that already holds events, and after events are pruned.
pub(super) async fn rebuild(tx: &mut Tx, a: i64, b: i64) -> Result<()> {
    // Widen to whole buckets, days and months, so each row is recomputed from all of its events.
    let a = if a == i64::MIN {
        a
    } else {
        month_floor(a).min(bucket_of(a)).min(Level::Day.span(a).0)
    };
    let b = if b == i64::MAX {
        b
    } else {
        let last = b - 1;
        next_month(month_floor(last))
            .max(bucket_of(last) + BUCKET)
            .max(Level::Day.span(last).1)
    };
    sqlx::query("DELETE FROM keymeter_usage_timeline WHERE start_at >= ?1 AND start_at < ?2")
        .bind(a)
        .bind(b)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    sqlx::query("DELETE FROM keymeter_usage_rollups WHERE start_at >= ?1 AND start_at < ?2")
        .bind(a)
        .bind(b)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let mut after: Option<(i64, String)> = None;
    loop {
        let (at, id) = after.clone().unwrap_or((a, String::new()));
        let rows = sqlx::query(
            "SELECT * FROM keymeter_usage_events WHERE at >= ?1 AND at < ?2 AND (at > ?1 OR event_id > ?3) \
             ORDER BY at, event_id LIMIT ?4",
        )
        .bind(at)
        .bind(b)
        .bind(&id)
        .bind(REBUILD_STEP)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
        let events = rows
            .iter()
            .map(crate::store::sql::usage_event)
            .collect::<Result<Vec<_>>>()?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        after = Some((micros(last.at), last.event_id.clone()));
        add(tx, &events.iter().collect::<Vec<_>>()).await?;
    }
}

/// A report from the rollups plus the events at its ragged edges.
pub(super) async fn report(
    store: &SqliteStore,
    f: &EventFilter,
    by: GroupBy,
    tz: Tz,
) -> Result<Report> {
    let a = f.since.map_or(i64::MIN, micros);
    let b = f.until.map_or(i64::MAX, micros);
    let mut out = ReportBuilder::default();
    let field_filter =
        f.owner.is_some() || f.org.is_some() || f.key_id.is_some() || f.model.is_some();
    // One read transaction: the rollups and the events they leave out are one snapshot.
    let mut tx = store.pool().begin().await.map_err(db)?;
    if !by.is_calendar() {
        let plan = cover(a, b);
        if let Some((ma, mb)) = plan.months {
            rollup_rows(&mut tx, f, by, Level::Month, ma, mb, &mut out).await?;
        }
        for (da, db) in plan.days {
            rollup_rows(&mut tx, f, by, Level::Day, da, db, &mut out).await?;
        }
        for (x, y) in plan.events {
            event_rows(&mut tx, f, by, tz, x, y, &mut out).await?;
        }
    } else if field_filter {
        // A field filter with a calendar grouping: the filter's own events (an index serves each filter).
        event_rows(&mut tx, f, by, tz, a, b, &mut out).await?;
    } else {
        let qa = ceil_to(a, bucket_of, |q| q + BUCKET);
        let qb = floor_to(b, bucket_of);
        if qa < qb {
            let mut straddling = Vec::new();
            {
                let mut rows = sqlx::query(
                    "SELECT * FROM keymeter_usage_timeline WHERE start_at >= ?1 AND start_at <= ?2 - ?3 \
                     ORDER BY start_at",
                )
                .bind(qa)
                .bind(qb)
                .bind(BUCKET)
                .fetch(&mut *tx);
                while let Some(row) = rows.try_next().await.map_err(db)? {
                    let start: i64 = row.try_get("start_at").map_err(db)?;
                    let from = from_micros(Some(start))?.ok_or_else(|| corrupt("bucket"))?;
                    let to = from_micros(Some(start + BUCKET))?.ok_or_else(|| corrupt("bucket"))?;
                    match by.span_key(from, to, tz) {
                        Some(key) => out.add(&key, &totals(&row)?),
                        None => straddling.push(start),
                    }
                }
            }
            for start in straddling {
                event_rows(&mut tx, f, by, tz, start, start + BUCKET, &mut out).await?;
            }
            if a < qa {
                event_rows(&mut tx, f, by, tz, a, qa, &mut out).await?;
            }
            if qb < b {
                event_rows(&mut tx, f, by, tz, qb, b, &mut out).await?;
            }
        } else {
            event_rows(&mut tx, f, by, tz, a, b, &mut out).await?;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(out.finish())
}

const FIELD_FILTER: &str = "(?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR org = ?2) AND (?3 IS NULL OR key_id = ?3) \
     AND (?4 IS NULL OR model = ?4)";

#[allow(clippy::too_many_arguments)]
async fn rollup_rows(
    tx: &mut Tx,
    f: &EventFilter,
    by: GroupBy,
    level: Level,
    a: i64,
    b: i64,
    out: &mut ReportBuilder,
) -> Result<()> {
    let sql = format!(
        "SELECT * FROM keymeter_usage_rollups WHERE level = ?5 AND start_at >= ?6 AND end_at <= ?7 AND {FIELD_FILTER}"
    );
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&f.owner)
        .bind(&f.org)
        .bind(&f.key_id)
        .bind(&f.model)
        .bind(level.as_str())
        .bind(a)
        .bind(b)
        .fetch(&mut **tx);
    while let Some(row) = rows.try_next().await.map_err(db)? {
        let owner = row.text("owner")?;
        let org = row.text("org")?;
        let key_id = row.text("key_id")?;
        let model = row.text("model")?;
        // Field groupings only: the time plays no part in the key.
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let key = by.key_of(
            at,
            Tz::UTC,
            of_empty(&key_id),
            &owner,
            of_empty(&org),
            &model,
        );
        out.add(&key, &totals(&row)?);
    }
    Ok(())
}

/// Adds the events of `[a, b)` passing `f`'s field filters, one at a time (streamed, not collected).
#[allow(clippy::too_many_arguments)]
async fn event_rows(
    tx: &mut Tx,
    f: &EventFilter,
    by: GroupBy,
    tz: Tz,
    a: i64,
    b: i64,
    out: &mut ReportBuilder,
) -> Result<()> {
    let sql = format!(
        "SELECT at, key_id, owner, org, model, usage, cost FROM keymeter_usage_events \
         WHERE at >= ?5 AND at < ?6 AND {FIELD_FILTER}"
    );
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&f.owner)
        .bind(&f.org)
        .bind(&f.key_id)
        .bind(&f.model)
        .bind(a)
        .bind(b)
        .fetch(&mut **tx);
    while let Some(row) = rows.try_next().await.map_err(db)? {
        let usage: Usage =
            serde_json::from_str(&row.text("usage")?).map_err(|_| corrupt("usage"))?;
        let at = row.time("at")?;
        let key_id = row.opt_text("key_id")?;
        let org = row.opt_text("org")?;
        let key = by.key_of(
            at,
            tz,
            key_id.as_deref(),
            &row.text("owner")?,
            org.as_deref(),
            &row.text("model")?,
        );
        out.add(&key, &Totals::one(row.decimal("cost")?, &usage));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i64 {
        micros(s.parse::<DateTime<Utc>>().expect("time"))
    }

    /// The pieces partition `[a, b)`: sorted, they follow one another from `a` to `b`.
    fn partitions(a: i64, b: i64) {
        let plan = cover(a, b);
        let mut pieces: Vec<(i64, i64)> = plan.months.into_iter().collect();
        pieces.extend(&plan.days);
        pieces.extend(&plan.events);
        pieces.sort_unstable();
        let mut at = a;
        for (x, y) in pieces {
            assert_eq!(x, at, "{plan:?}");
            assert!(x < y, "{plan:?}");
            at = y;
        }
        assert_eq!(at, b.max(a), "{plan:?}");
    }

    #[test]
    fn a_range_is_months_then_days_then_events() {
        let plan = cover(t("2026-01-30T10:00:00Z"), t("2026-04-02T06:30:00Z"));
        assert_eq!(
            plan.months,
            Some((t("2026-02-01T00:00:00Z"), t("2026-04-01T00:00:00Z")))
        );
        assert_eq!(
            plan.days,
            [
                (t("2026-01-31T00:00:00Z"), t("2026-02-01T00:00:00Z")),
                (t("2026-04-01T00:00:00Z"), t("2026-04-02T00:00:00Z")),
            ]
        );
        assert_eq!(
            plan.events,
            [
                (t("2026-01-30T10:00:00Z"), t("2026-01-31T00:00:00Z")),
                (t("2026-04-02T00:00:00Z"), t("2026-04-02T06:30:00Z")),
            ]
        );
        // Open ends are whole months; a range inside one day is all events.
        assert_eq!(
            cover(i64::MIN, i64::MAX),
            Cover {
                months: Some((i64::MIN, i64::MAX)),
                ..Cover::default()
            }
        );
        let inside = (t("2026-03-10T01:00:00Z"), t("2026-03-10T02:00:00Z"));
        assert_eq!(cover(inside.0, inside.1).events, [inside]);
    }

    #[tokio::test]
    async fn a_database_with_events_gets_its_rollups_when_migrated() {
        use crate::ledger::{Ledger, aggregate};
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let store = SqliteStore::connect(&url).await.expect("store");
        let start: DateTime<Utc> = "2026-01-30T22:10:00Z".parse().expect("time");
        let events: Vec<UsageEvent> = (0..40)
            .map(|i| {
                UsageEvent::new(
                    Some(&format!("r{i}")),
                    start + chrono::Duration::minutes(97 * i as i64),
                    ["alice", "bob"][i % 2],
                    "openai",
                    "gpt-4o",
                    Usage::default(),
                    rust_decimal::Decimal::new(125, 4),
                    &crate::random::SeededRandom::new(i as u64),
                )
                .expect("event")
            })
            .collect();
        store.record_batch(&events).await.expect("record");
        // As a database written before the rollups existed.
        sqlx::raw_sql(
            "DROP TABLE keymeter_usage_timeline; DROP TABLE keymeter_usage_rollups; \
             DROP TABLE keymeter_pruned_requests; DROP INDEX keymeter_usage_events_estimated; \
             ALTER TABLE keymeter_usage_events DROP COLUMN estimated; \
             ALTER TABLE keymeter_usage_events DROP COLUMN estimated_first; \
             ALTER TABLE keymeter_usage_events DROP COLUMN tags; \
             ALTER TABLE keymeter_usage_events DROP COLUMN end_user; \
             DROP INDEX keymeter_reservations_request; \
             ALTER TABLE keymeter_reservations DROP COLUMN request_id; \
             DROP INDEX keymeter_reservations_instance; \
             ALTER TABLE keymeter_reservations DROP COLUMN instance_id; \
             ALTER TABLE keymeter_reservations DROP COLUMN estimate; \
             DROP TRIGGER keymeter_api_keys_created; \
             DROP TRIGGER keymeter_api_keys_changed; \
             CREATE TRIGGER keymeter_api_keys_changed AFTER UPDATE OF name, owner, org, env, scopes, hash, \
               lookup_kind, lookup_value, expires_at, disabled, revoked_at, allowed_ips, rate_limit, metadata, \
               previous_hash, previous_valid_until ON keymeter_api_keys \
             BEGIN INSERT INTO keymeter_key_changes (key_id) VALUES (NEW.id); END; \
             ALTER TABLE keymeter_api_keys DROP COLUMN allowed_models; \
             ALTER TABLE keymeter_api_keys DROP COLUMN tags; \
             DROP INDEX keymeter_api_keys_created_by; ALTER TABLE keymeter_api_keys DROP COLUMN created_by; \
             ALTER TABLE keymeter_limits DROP COLUMN models; \
             ALTER TABLE keymeter_limits DROP COLUMN max_parallel; DROP TABLE keymeter_slots; \
             ALTER TABLE keymeter_budgets DROP COLUMN thresholds; DROP TABLE keymeter_deliveries; \
             DROP TABLE keymeter_webhooks; DROP TABLE keymeter_alerts; \
             DROP TRIGGER keymeter_credentials_inserted; DROP TRIGGER keymeter_credentials_updated; \
             DROP TRIGGER keymeter_credentials_deleted; DROP TABLE keymeter_credential_version; \
             DELETE FROM keymeter_migrations WHERE version >= 8",
        )
        .execute(store.pool())
        .await
        .expect("downgrade");
        super::super::migrate(store.pool()).await.expect("migrate");
        for by in [GroupBy::Owner, GroupBy::Day] {
            let report = store
                .report(&EventFilter::default(), by, chrono_tz::Europe::Berlin)
                .await
                .expect("report");
            assert_eq!(report, aggregate(&events, by, chrono_tz::Europe::Berlin));
        }
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keymeter_usage_rollups")
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert!(rows > 0);
    }

    #[test]
    fn every_range_is_partitioned() {
        let points = [
            i64::MIN,
            t("2025-12-31T23:59:59.999999Z"),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:00:00.000001Z"),
            t("2026-01-15T12:00:00Z"),
            t("2026-02-01T00:00:00Z"),
            t("2026-02-28T23:00:00Z"),
            t("2026-03-01T00:00:00Z"),
            t("2027-07-04T07:04:00Z"),
            i64::MAX,
        ];
        for &a in &points {
            for &b in &points {
                partitions(a, b);
            }
        }
    }
}
