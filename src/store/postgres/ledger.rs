//! The PostgreSQL [`Ledger`]. Every write that touches a budget first locks the budget rows it counts against,
//! `FOR UPDATE` in (kind, id) order, so reserves, settles and records on several instances serialise per budget
//! and never deadlock one another; settled + reserved never passes a limit across every instance together.
//! Reports are computed in the database (exact `NUMERIC` sums, calendar groups by `to_char` in the zone).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use futures_util::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::Row;

use super::{PostgresStore, Tx, corrupt, db};
use crate::alerts::Alert;
use crate::credentials::CredentialSource;
use crate::error::{Error, Result};
use crate::ledger::lease::{Lease, LeaseAsk};
use crate::ledger::report::{ReportBuilder, Totals};
use crate::ledger::{
    Budget, BudgetScope, BudgetStatus, Claim, Estimated, EventCursor, EventFilter, GroupBy, Ledger,
    Recorded, Report, Reservation, Standing, UsageEvent, admit,
};
use crate::store::sql::{
    Columns, budget, estimate_text, tags_text, thresholds_text, usage_event, usage_text,
};

/// The budgets of `scopes` that exist, locked `FOR UPDATE` in one fixed order.
pub(super) async fn lock_budgets<'a>(
    tx: &mut Tx,
    scopes: impl IntoIterator<Item = &'a BudgetScope>,
) -> Result<Vec<Budget>> {
    let (kinds, ids): (Vec<&str>, Vec<&str>) =
        scopes.into_iter().map(|s| (s.kind(), s.id())).unzip();
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT * FROM keymeter_budgets WHERE (scope_kind, scope_id) IN \
         (SELECT * FROM UNNEST($1::text[], $2::text[])) ORDER BY scope_kind, scope_id FOR UPDATE",
    )
    .bind(&kinds)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    rows.iter().map(budget).collect()
}

/// Settled spend and live reservations of `scope` in the period starting at `start`.
pub(super) async fn standing_of(
    executor: impl sqlx::PgExecutor<'_>,
    scope: &BudgetScope,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Decimal, Decimal)> {
    let row = sqlx::query(
        "SELECT COALESCE((SELECT spent FROM keymeter_budget_spend \
                          WHERE scope_kind = $1 AND scope_id = $2 AND period_start = $3), 0) AS spent, \
                COALESCE((SELECT SUM(r.amount) FROM keymeter_reservation_budgets b \
                          JOIN keymeter_reservations r ON r.id = b.reservation_id \
                          WHERE b.scope_kind = $1 AND b.scope_id = $2 AND b.period_start = $3 \
                          AND (r.expires_at > $4 OR r.estimate IS NOT NULL)), 0) AS reserved",
    )
    .bind(scope.kind())
    .bind(scope.id())
    .bind(start)
    .bind(now)
    .fetch_one(executor)
    .await
    .map_err(db)?;
    Ok((row.decimal("spent")?, row.decimal("reserved")?))
}

/// Adds `amounts` to the spend of each (budget, period); returns each one's spend after.
async fn add_spend(
    tx: &mut Tx,
    amounts: &BTreeMap<(BudgetScope, DateTime<Utc>), Decimal>,
) -> Result<HashMap<(BudgetScope, DateTime<Utc>), Decimal>> {
    if amounts.is_empty() {
        return Ok(HashMap::new());
    }
    let mut kinds = Vec::with_capacity(amounts.len());
    let mut ids = Vec::with_capacity(amounts.len());
    let mut starts = Vec::with_capacity(amounts.len());
    let mut spent = Vec::with_capacity(amounts.len());
    for ((scope, start), amount) in amounts {
        kinds.push(scope.kind());
        ids.push(scope.id());
        starts.push(*start);
        spent.push(*amount);
    }
    sqlx::query(
        "INSERT INTO keymeter_budget_spend (scope_kind, scope_id, period_start, spent) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::numeric[]) \
         ON CONFLICT (scope_kind, scope_id, period_start) DO UPDATE \
         SET spent = keymeter_budget_spend.spent + excluded.spent \
         RETURNING scope_kind, scope_id, period_start, spent",
    )
    .bind(&kinds)
    .bind(&ids)
    .bind(&starts)
    .bind(&spent)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .iter()
    .map(|row| {
        let scope = BudgetScope::from_parts(&row.text("scope_kind")?, &row.text("scope_id")?)
            .map_err(|_| corrupt("budget scope"))?;
        Ok(((scope, row.time("period_start")?), row.decimal("spent")?))
    })
    .collect()
}

/// Records `events` (each idempotent by request id) and adds the new ones to their budgets' spend, in one
/// statement for the events and one for the spend, whatever the batch size.
async fn record_in(tx: &mut Tx, events: &[UsageEvent]) -> Result<Vec<Recorded>> {
    // The batch's first event of each request id is the one stored; inserting in request-id order keeps two
    // overlapping batches from waiting on each other's rows in opposite orders.
    let mut seen: HashSet<&str> = HashSet::with_capacity(events.len());
    let mut firsts: Vec<&UsageEvent> = events
        .iter()
        .filter(|e| seen.insert(e.request_id.as_str()))
        .collect();
    firsts.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let n = firsts.len();
    let (mut event_ids, mut request_ids, mut ats) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut key_ids, mut owners, mut orgs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut providers, mut models, mut usages) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut inputs, mut outputs, mut costs, mut sources) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut estimated, mut estimated_first) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut tags, mut end_users) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for e in &firsts {
        tags.push(tags_text(&e.tags));
        end_users.push(e.end_user.as_deref());
        event_ids.push(e.event_id.as_str());
        request_ids.push(e.request_id.as_str());
        ats.push(e.at);
        key_ids.push(e.key_id.as_deref());
        owners.push(e.owner.as_str());
        orgs.push(e.org.as_deref());
        providers.push(e.provider.as_str());
        models.push(e.model.as_str());
        usages.push(usage_text(e)?);
        inputs.push(i64::try_from(e.usage.prompt_tokens()).unwrap_or(i64::MAX));
        outputs.push(i64::try_from(e.usage.output_tokens()).unwrap_or(i64::MAX));
        costs.push(e.cost.normalize());
        sources.push(e.credential_source.map(CredentialSource::as_str));
        estimated.push(e.estimated);
        estimated_first.push(e.estimated_first);
    }
    let rows = sqlx::query(
        "INSERT INTO keymeter_usage_events (event_id, request_id, at, key_id, owner, org, provider, model, usage, \
         input_tokens, output_tokens, cost, credential_source, estimated, estimated_first, tags, end_user, bucket) \
         SELECT e.*, floor(extract(epoch FROM e.at) / 900)::bigint FROM UNNEST($1::text[], $2::text[], \
         $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
         $11::bigint[], $12::numeric[], $13::text[], $14::bool[], $15::bool[], $16::text[], $17::text[]) \
         AS e (event_id, request_id, at) \
         WHERE NOT EXISTS (SELECT 1 FROM keymeter_pruned_requests p WHERE p.request_id = e.request_id) \
         ON CONFLICT (request_id) DO NOTHING RETURNING request_id, event_id",
    )
    .bind(&event_ids)
    .bind(&request_ids)
    .bind(&ats)
    .bind(&key_ids)
    .bind(&owners)
    .bind(&orgs)
    .bind(&providers)
    .bind(&models)
    .bind(&usages)
    .bind(&inputs)
    .bind(&outputs)
    .bind(&costs)
    .bind(&sources)
    .bind(&estimated)
    .bind(&estimated_first)
    .bind(&tags)
    .bind(&end_users)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let mut stored: HashMap<String, (String, bool)> = HashMap::with_capacity(events.len());
    for row in rows {
        stored.insert(row.text("request_id")?, (row.text("event_id")?, true));
    }
    // Request ids stored before this batch: their first event's id.
    let missing: Vec<&str> = request_ids
        .iter()
        .copied()
        .filter(|r| !stored.contains_key(*r))
        .collect();
    if !missing.is_empty() {
        let rows = sqlx::query(
            "SELECT request_id, event_id FROM keymeter_usage_events WHERE request_id = ANY($1::text[]) \
             UNION ALL SELECT request_id, event_id FROM keymeter_pruned_requests WHERE request_id = ANY($1::text[])",
        )
        .bind(&missing)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
        for row in rows {
            stored.insert(row.text("request_id")?, (row.text("event_id")?, false));
        }
    }
    let mut counted: HashSet<&str> = HashSet::new();
    let mut fresh: Vec<&UsageEvent> = Vec::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let (event_id, inserted) = stored
            .get(&e.request_id)
            .ok_or_else(|| corrupt("usage event (neither inserted nor found)"))?;
        let new = *inserted && *event_id == e.event_id && counted.insert(e.request_id.as_str());
        if new {
            fresh.push(e);
        }
        out.push(Recorded {
            event_id: event_id.clone(),
            duplicate: !new,
            replaced: false,
        });
    }
    let replaced = replace_estimated(tx, events, &mut out).await?;
    let mut amounts: Vec<(&UsageEvent, Decimal)> = fresh.iter().map(|e| (*e, e.cost)).collect();
    amounts.extend(replaced.iter().map(|(old, delta)| (old, *delta)));
    // One locking pass over every budget touched, in one order, so batches never deadlock one another.
    add_to_budgets(tx, &amounts).await?;
    Ok(out)
}

/// Reserves `amount` as reservation `id` against the budgets of `scopes` (locked in one order), claiming
/// `request_id` first if given. The claim is the reservation row itself under a unique index: a second claim of
/// the id on any instance waits for the first transaction and then finds the row (or, if that one rolled back,
/// takes it); the check for a recorded event comes after the claim, so an event committed by a settle the claim
/// waited for is seen.
async fn reserve_in(
    tx: &mut Tx,
    id: &str,
    claimed: Claim<'_>,
    scopes: &[BudgetScope],
    amount: Decimal,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Reservation> {
    let expires_at = now + ttl;
    let estimate = claimed.estimate.map(estimate_text).transpose()?;
    let row = NewReservation {
        id,
        amount,
        expires_at,
        instance: claimed.instance,
        estimate: estimate.as_deref(),
    };
    if let Some(request) = claimed.request_id {
        claim(tx, &row, request, now).await?;
    }
    let budgets = lock_budgets(tx, scopes.iter().collect::<BTreeSet<_>>()).await?;
    let mut found = Vec::with_capacity(budgets.len());
    for budget in &budgets {
        let start = budget.period_start(now);
        let (spent, reserved) = standing_of(&mut **tx, &budget.scope, start, now).await?;
        found.push((budget, spent, reserved, start));
    }
    admit(
        found.iter().map(|(budget, spent, reserved, _)| Standing {
            budget,
            spent: *spent,
            reserved: *reserved,
        }),
        amount,
        now,
    )?;
    // Expired reservations that were never sent no longer count; clear a few, skipping rows another instance
    // holds. Those with an estimate wait for a sweep, which bills them (in its own transaction, so the budget
    // rows it locks never meet this one's in another order).
    sqlx::query(
        "DELETE FROM keymeter_reservations WHERE id IN (SELECT id FROM keymeter_reservations \
         WHERE expires_at <= $1 AND estimate IS NULL ORDER BY expires_at LIMIT 64 FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    if claimed.request_id.is_none() {
        sqlx::query(
            "INSERT INTO keymeter_reservations (id, amount, expires_at, instance_id, estimate) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(amount)
        .bind(expires_at)
        .bind(row.instance)
        .bind(row.estimate)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    let slots: Vec<(&BudgetScope, DateTime<Utc>)> = found
        .iter()
        .map(|(b, .., start)| (&b.scope, *start))
        .collect();
    insert_budgets(tx, id, &slots).await?;
    // In the caller's order, as the other backends give them.
    let mut held: Vec<BudgetScope> = Vec::with_capacity(budgets.len());
    for s in scopes {
        if budgets.iter().any(|b| b.scope == *s) && !held.contains(s) {
            held.push(s.clone());
        }
    }
    Ok(Reservation {
        id: id.to_owned(),
        amount,
        expires_at,
        scopes: held,
    })
}

/// Writes the budget rows of reservation `id`: each scope and the start of the period it holds room in.
pub(super) async fn insert_budgets(
    tx: &mut Tx,
    id: &str,
    slots: &[(&BudgetScope, DateTime<Utc>)],
) -> Result<()> {
    let kinds: Vec<&str> = slots.iter().map(|(s, _)| s.kind()).collect();
    let ids: Vec<&str> = slots.iter().map(|(s, _)| s.id()).collect();
    let starts: Vec<DateTime<Utc>> = slots.iter().map(|(_, start)| *start).collect();
    sqlx::query(
        "INSERT INTO keymeter_reservation_budgets (reservation_id, scope_kind, scope_id, period_start) \
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::timestamptz[])",
    )
    .bind(id)
    .bind(&kinds)
    .bind(&ids)
    .bind(&starts)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// A reservation row as [`reserve_in`] writes it.
struct NewReservation<'a> {
    id: &'a str,
    amount: Decimal,
    expires_at: DateTime<Utc>,
    instance: Option<&'a str>,
    estimate: Option<&'a str>,
}

/// Inserts reservation `row` claiming `request_id`, or refuses the id: held by a live reservation (or a lapsed
/// one a sweep has yet to bill), or recorded.
async fn claim(
    tx: &mut Tx,
    row: &NewReservation<'_>,
    request_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let taken = |event_id: Option<String>, cost: Option<Decimal>| Error::DuplicateRequest {
        request_id: request_id.to_owned(),
        event_id,
        cost,
    };
    // An expired claim of this id that was never sent frees it.
    sqlx::query(
        "DELETE FROM keymeter_reservations WHERE request_id = $1 AND expires_at <= $2 AND estimate IS NULL",
    )
        .bind(request_id)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let inserted = sqlx::query(
        "INSERT INTO keymeter_reservations (id, amount, expires_at, request_id, instance_id, estimate) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(row.id)
    .bind(row.amount)
    .bind(row.expires_at)
    .bind(request_id)
    .bind(row.instance)
    .bind(row.estimate)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let recorded = sqlx::query(
        "SELECT event_id, cost FROM keymeter_usage_events WHERE request_id = $1 \
         UNION ALL SELECT event_id, NULL FROM keymeter_pruned_requests WHERE request_id = $1 LIMIT 1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    if let Some(row) = recorded {
        return Err(taken(
            Some(row.text("event_id")?),
            row.try_get::<Option<Decimal>, _>("cost").map_err(db)?,
        ));
    }
    if inserted.is_none() {
        return Err(taken(None, None));
    }
    Ok(())
}

/// Replaces stored `estimated` events with the exact events of the batch found duplicates of them: each row
/// takes the exact usage and cost and `out` says `replaced` for it. Returns each replaced event as it was, with
/// the difference its budgets move by.
async fn replace_estimated(
    tx: &mut Tx,
    events: &[UsageEvent],
    out: &mut [Recorded],
) -> Result<Vec<(UsageEvent, Decimal)>> {
    let candidates: Vec<usize> = (0..events.len())
        .filter(|&i| out[i].duplicate && !events[i].estimated)
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<&str> = candidates
        .iter()
        .map(|&i| events[i].request_id.as_str())
        .collect();
    // A pruned event has no row left, so it is never found (and never replaced) here.
    let rows = sqlx::query(
        "SELECT * FROM keymeter_usage_events WHERE estimated AND request_id = ANY($1::text[]) \
         ORDER BY request_id FOR UPDATE",
    )
    .bind(&wanted)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let mut stored: HashMap<String, UsageEvent> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let e = usage_event(row)?;
        stored.insert(e.request_id.clone(), e);
    }
    let mut replaced = Vec::new();
    for i in candidates {
        // The first exact event of a request id replaces; the row is exact from then on.
        let Some(old) = stored.remove(&events[i].request_id) else {
            continue;
        };
        let new = old.replaced_by(&events[i]);
        sqlx::query(
            "UPDATE keymeter_usage_events SET usage = $1, input_tokens = $2, output_tokens = $3, cost = $4, \
             credential_source = $5, estimated = false, estimated_first = true WHERE event_id = $6",
        )
        .bind(usage_text(&new)?)
        .bind(i64::try_from(new.usage.prompt_tokens()).unwrap_or(i64::MAX))
        .bind(i64::try_from(new.usage.output_tokens()).unwrap_or(i64::MAX))
        .bind(new.cost.normalize())
        .bind(new.credential_source.map(CredentialSource::as_str))
        .bind(&new.event_id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        out[i] = Recorded {
            event_id: new.event_id.clone(),
            duplicate: false,
            replaced: true,
        };
        let delta = new.cost - old.cost;
        replaced.push((old, delta));
    }
    Ok(replaced)
}

/// Adds each amount to the spend of every budget its event counts against (in the event's period), holding
/// those budgets' locks.
async fn add_to_budgets(tx: &mut Tx, events: &[(&UsageEvent, Decimal)]) -> Result<()> {
    let scopes: BTreeSet<BudgetScope> = events
        .iter()
        .flat_map(|(e, _)| BudgetScope::of_event(e))
        .collect();
    let budgets: HashMap<BudgetScope, Budget> = lock_budgets(tx, &scopes)
        .await?
        .into_iter()
        .map(|b| (b.scope.clone(), b))
        .collect();
    let mut deltas: BTreeMap<(BudgetScope, DateTime<Utc>), Decimal> = BTreeMap::new();
    // The latest event's time per budget and period: when a crossing happened.
    let mut latest: HashMap<(BudgetScope, DateTime<Utc>), DateTime<Utc>> = HashMap::new();
    for (e, amount) in events {
        for scope in BudgetScope::of_event(e) {
            if let Some(budget) = budgets.get(&scope) {
                let period = (scope, budget.period_start(e.at));
                let at = latest.entry(period.clone()).or_insert(e.at);
                *at = (*at).max(e.at);
                *deltas.entry(period).or_default() += *amount;
            }
        }
    }
    let after = add_spend(tx, &deltas).await?;
    let mut alerts = Vec::new();
    for (period, amount) in &deltas {
        if let (Some(budget), Some(&spent), Some(&at)) = (
            budgets.get(&period.0),
            after.get(period),
            latest.get(period),
        ) {
            alerts.extend(Alert::budget_crossings(
                budget,
                period.1,
                spent - amount,
                spent,
                at,
            ));
        }
    }
    super::outbox::insert_alerts(tx, &alerts).await.map(drop)
}

/// A grouped row's sums.
fn totals(row: &sqlx::postgres::PgRow) -> Result<Totals> {
    let count = |c: &str| {
        row.try_get::<i64, _>(c)
            .map_err(db)
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    Ok(Totals {
        cost: row.decimal("cost")?,
        events: count("events")?,
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
    })
}

/// Seconds per bucket of the `bucket` column.
const BUCKET_SECONDS: i64 = 900;

/// A calendar report: sums per 15-minute bucket in the database, then per local period here. A bucket that
/// straddles a local boundary (a zone whose offset is no multiple of 15 minutes) is counted event by event.
async fn calendar_report(
    store: &PostgresStore,
    f: &EventFilter,
    by: GroupBy,
    tz: Tz,
) -> Result<Report> {
    let sql = format!(
        "SELECT bucket, SUM(cost) AS cost, COUNT(*) AS events, SUM(input_tokens)::bigint AS input_tokens, \
         SUM(output_tokens)::bigint AS output_tokens FROM keymeter_usage_events WHERE {FILTER} GROUP BY bucket"
    );
    let mut out = ReportBuilder::default();
    let mut straddling: Vec<i64> = Vec::new();
    // One snapshot for the buckets and the events of the straddling ones.
    let mut tx = store.pool().begin().await.map_err(db)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    {
        let mut rows = filtered(&sql, f).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await.map_err(db)? {
            let bucket: i64 = row.try_get("bucket").map_err(db)?;
            let start = bucket
                .checked_mul(BUCKET_SECONDS)
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .ok_or_else(|| corrupt("bucket"))?;
            match by.span_key(start, start + Duration::seconds(BUCKET_SECONDS), tz) {
                Some(key) => out.add(&key, &totals(&row)?),
                None => straddling.push(bucket),
            }
        }
    }
    if !straddling.is_empty() {
        let sql = format!(
            "SELECT at, cost, 1::bigint AS events, input_tokens, output_tokens FROM keymeter_usage_events \
             WHERE {FILTER} AND bucket = ANY($7::bigint[])"
        );
        let mut rows = filtered(&sql, f).bind(&straddling).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await.map_err(db)? {
            let key = by
                .calendar_key(row.time("at")?, tz)
                .ok_or_else(|| corrupt("calendar grouping"))?;
            out.add(&key, &totals(&row)?);
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(out.finish())
}

/// The `WHERE` clause of an [`EventFilter`], on parameters `$1`–`$6`.
/// Deletes the rows of `scope` from `table` (one of keymeter's budget tables, keyed by scope kind and id).
async fn delete_scope(tx: &mut Tx, table: &'static str, scope: &BudgetScope) -> Result<u64> {
    let sql = format!("DELETE FROM {table} WHERE scope_kind = $1 AND scope_id = $2");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(scope.kind())
        .bind(scope.id())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}

const FILTER: &str = "($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR org = $2) \
     AND ($3::text IS NULL OR key_id = $3) AND ($4::text IS NULL OR model = $4) \
     AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::timestamptz IS NULL OR at < $6)";

fn filtered<'q>(
    sql: &'q str,
    f: &'q EventFilter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    // Not a named statement: after five runs PostgreSQL would switch a named one to a generic plan, which cannot
    // tell which of these filters are null and estimates one row (a day report of 1M events then sorted them all
    // on disk: 130 → 440 ms). An unnamed statement is planned for its values every time.
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(&f.owner)
        .bind(&f.org)
        .bind(&f.key_id)
        .bind(&f.model)
        .bind(f.since)
        .bind(f.until)
}

#[async_trait]
impl Ledger for PostgresStore {
    async fn record(&self, event: &UsageEvent) -> Result<Recorded> {
        event.validate()?;
        let mut one =
            transaction!(self, tx => { record_in(tx, std::slice::from_ref(event)).await })?;
        one.pop().ok_or_else(|| corrupt("usage event"))
    }

    async fn record_batch(&self, events: &[UsageEvent]) -> Result<Vec<Recorded>> {
        events.iter().try_for_each(UsageEvent::validate)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, tx => { record_in(tx, events).await })
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<UsageEvent>> {
        self.events_after(f, None, usize::MAX).await
    }

    async fn event(&self, request_id: &str) -> Result<Option<UsageEvent>> {
        let row = sqlx::query("SELECT * FROM keymeter_usage_events WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        row.as_ref().map(usage_event).transpose()
    }

    async fn report(&self, f: &EventFilter, by: GroupBy, tz: Tz) -> Result<Report> {
        if by.by_attribution() || f.by_attribution() {
            // Tags and end users are not summed in the database: from the events.
            return Ok(crate::ledger::aggregate(&self.events(f).await?, by, tz));
        }
        let mut report = if by.is_calendar() {
            calendar_report(self, f, by, tz).await?
        } else {
            grouped_report(self, f, by).await?
        };
        let sql = format!(
            "SELECT COUNT(*) AS events, COALESCE(SUM(cost), 0) AS cost FROM keymeter_usage_events \
             WHERE {FILTER} AND estimated"
        );
        let row = filtered(&sql, f).fetch_one(self.pool()).await.map_err(db)?;
        let events: i64 = sqlx::Row::try_get(&row, "events").map_err(db)?;
        report.estimated = Estimated {
            events: u64::try_from(events).unwrap_or(0),
            cost: row.decimal("cost")?.normalize(),
        };
        Ok(report)
    }

    async fn events_after(
        &self,
        f: &EventFilter,
        after: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>> {
        crate::ledger::attributed(self, f, after, limit).await
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        transaction!(self, tx => {
            async {
                // No event is recorded meanwhile: a resend of a request being pruned finds its tombstone.
                sqlx::query("LOCK TABLE keymeter_usage_events IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                sqlx::query(
                    "INSERT INTO keymeter_pruned_requests (request_id, event_id) \
                     SELECT request_id, event_id FROM keymeter_usage_events WHERE at < $1 ON CONFLICT DO NOTHING",
                )
                .bind(before)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                let done = sqlx::query("DELETE FROM keymeter_usage_events WHERE at < $1")
                    .bind(before)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected())
            }
            .await
        })
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> Result<bool> {
        transaction!(self, tx => {
            async {
                let deleted = delete_scope(tx, "keymeter_budgets", scope).await?;
                delete_scope(tx, "keymeter_budget_spend", scope).await?;
                Ok(deleted > 0)
            }
            .await
        })
    }

    async fn set_budget(&self, budget: &Budget) -> Result<()> {
        budget.validate()?;
        // Same periods: the spend stands as counted (pruned events included); only the limits change.
        let kept = sqlx::query(
            "UPDATE keymeter_budgets SET limit_amount = $3, soft_limit = $4, thresholds = $7 \
             WHERE scope_kind = $1 AND scope_id = $2 AND period = $5 AND tz = $6",
        )
        .bind(budget.scope.kind())
        .bind(budget.scope.id())
        .bind(budget.limit)
        .bind(budget.soft_limit)
        .bind(budget.period.as_str())
        .bind(budget.tz.name())
        .bind(thresholds_text(budget))
        .execute(self.pool())
        .await
        .map_err(db)?;
        if kept.rows_affected() > 0 {
            return Ok(());
        }
        let scope = &budget.scope;
        let column = match scope {
            BudgetScope::Key(_) => "key_id",
            BudgetScope::Owner(_) => "owner",
            BudgetScope::Org(_) => "org",
        };
        transaction!(self, tx => {
            async {
                // No event is recorded while the spend is recounted, so the recount is exactly the events stored.
                sqlx::query("LOCK TABLE keymeter_usage_events IN SHARE MODE")
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                sqlx::query(
                    "INSERT INTO keymeter_budgets (scope_kind, scope_id, limit_amount, soft_limit, period, tz, thresholds) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope_kind, scope_id) DO UPDATE SET \
                     limit_amount = excluded.limit_amount, soft_limit = excluded.soft_limit, \
                     period = excluded.period, tz = excluded.tz, thresholds = excluded.thresholds",
                )
                .bind(scope.kind())
                .bind(scope.id())
                .bind(budget.limit)
                .bind(budget.soft_limit)
                .bind(budget.period.as_str())
                .bind(budget.tz.name())
                .bind(thresholds_text(budget))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                delete_scope(tx, "keymeter_budget_spend", scope).await?;
                // Streamed: memory grows with the number of periods, not of events.
                let sql = format!("SELECT at, cost FROM keymeter_usage_events WHERE {column} = $1");
                let mut sums: BTreeMap<(BudgetScope, DateTime<Utc>), Decimal> = BTreeMap::new();
                {
                    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(scope.id()).fetch(&mut **tx);
                    while let Some(row) = rows.try_next().await.map_err(db)? {
                        *sums.entry((scope.clone(), budget.period_start(row.time("at")?))).or_default() +=
                            row.decimal("cost")?;
                    }
                }
                add_spend(tx, &sums).await.map(drop)
            }
            .await
        })
    }

    async fn budget(&self, scope: &BudgetScope) -> Result<Option<Budget>> {
        let row =
            sqlx::query("SELECT * FROM keymeter_budgets WHERE scope_kind = $1 AND scope_id = $2")
                .bind(scope.kind())
                .bind(scope.id())
                .fetch_optional(self.pool())
                .await
                .map_err(db)?;
        row.as_ref().map(budget).transpose()
    }

    async fn budget_status(
        &self,
        scope: &BudgetScope,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetStatus>> {
        let Some(budget) = self.budget(scope).await? else {
            return Ok(None);
        };
        // One statement: one snapshot of spend and reservations.
        let (spent, reserved) =
            standing_of(self.pool(), scope, budget.period_start(now), now).await?;
        Ok(Some(BudgetStatus::new(&budget, spent, reserved, now)))
    }

    async fn reserve_claim(
        &self,
        claim: Claim<'_>,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Reservation> {
        crate::ledger::validate_reservation(scopes, amount, ttl)?;
        crate::ledger::validate_claim(&claim)?;
        let id = crate::ledger::reservation_id(self.random.as_ref())?;
        transaction!(self, tx => { reserve_in(tx, &id, claim, scopes, amount, now, ttl).await })
    }

    async fn renew(&self, instance: &str, _now: DateTime<Utc>, ttl: Duration) -> Result<u64> {
        // The database's clock, which every instance shares, judges expiry.
        let seconds = ttl.num_milliseconds() as f64 / 1000.0;
        let done = sqlx::query(
            "UPDATE keymeter_reservations SET expires_at = now() + make_interval(secs => $2) \
             WHERE instance_id = $1",
        )
        .bind(instance)
        .bind(seconds)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn sweep(&self, _now: DateTime<Utc>) -> Result<u64> {
        transaction!(self, tx => {
            async {
                // Lapsed by the database's clock; rows another sweep holds are skipped.
                let rows = sqlx::query(
                    "SELECT id, estimate FROM keymeter_reservations WHERE expires_at <= now() \
                     ORDER BY expires_at LIMIT 256 FOR UPDATE SKIP LOCKED",
                )
                .fetch_all(&mut **tx)
                .await
                .map_err(db)?;
                let mut ended: Vec<String> = Vec::with_capacity(rows.len());
                let mut bills: Vec<UsageEvent> = Vec::new();
                for row in &rows {
                    let id = row.text("id")?;
                    match row.try_get::<Option<String>, _>("estimate").map_err(db)? {
                        None => ended.push(id),
                        Some(text) => match text.parse::<UsageEvent>() {
                            Ok(event) => {
                                ended.push(id);
                                bills.push(event);
                            }
                            Err(e) => tracing::error!(reservation = %id, error = %e,
                                "a lapsed claim's estimate does not read: kept"),
                        },
                    }
                }
                sqlx::query("DELETE FROM keymeter_reservations WHERE id = ANY($1)")
                    .bind(&ended)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                if bills.is_empty() {
                    return Ok(0);
                }
                let recorded = record_in(tx, &bills).await?;
                let billed = recorded.iter().filter(|r| !r.duplicate).count() as u64;
                tracing::warn!(billed, lapsed = bills.len(), "lapsed claims billed at their reservation as estimated");
                Ok(billed)
            }
            .await
        })
    }

    async fn settle(
        &self,
        reservation_id: &str,
        event: &UsageEvent,
        _now: DateTime<Utc>,
    ) -> Result<Recorded> {
        event.validate()?;
        transaction!(self, tx => {
            async {
                let ended: std::collections::HashSet<String> =
                    sqlx::query_scalar("DELETE FROM keymeter_reservations WHERE id = $1 RETURNING id")
                        .bind(reservation_id)
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(db)?
                        .into_iter()
                        .collect();
                let mut one = record_in(tx, std::slice::from_ref(event)).await?;
                let recorded = one.pop().ok_or_else(|| corrupt("usage event"))?;
                super::lease::shrink_for(tx, &[(reservation_id, &recorded)], &ended).await?;
                Ok(recorded)
            }
            .await
        })
    }

    async fn settle_batch(
        &self,
        settles: &[(&str, &UsageEvent)],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>> {
        crate::ledger::validate_settles(settles)?;
        let ids: Vec<&str> = settles.iter().map(|(id, _)| *id).collect();
        let events: Vec<UsageEvent> = settles.iter().map(|(_, e)| (*e).clone()).collect();
        transaction!(self, tx => {
            async {
                let ended: std::collections::HashSet<String> =
                    sqlx::query_scalar("DELETE FROM keymeter_reservations WHERE id = ANY($1) RETURNING id")
                        .bind(&ids)
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(db)?
                        .into_iter()
                        .collect();
                let recorded = record_in(tx, &events).await?;
                let settled: Vec<(&str, &Recorded)> = ids.iter().copied().zip(&recorded).collect();
                super::lease::shrink_for(tx, &settled, &ended).await?;
                Ok(recorded)
            }
            .await
        })
    }

    async fn lease(&self, ask: LeaseAsk<'_>, now: DateTime<Utc>, ttl: Duration) -> Result<Lease> {
        crate::ledger::lease::validate(&ask)?;
        crate::validate::positive("lease ttl", ttl)?;
        transaction!(self, tx => { super::lease::lease_in(tx, &ask, now, ttl).await })
    }

    async fn carve(
        &self,
        holds: &[(&str, &UsageEvent)],
        instance: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Vec<bool>> {
        crate::ledger::lease::validate_carve(holds, instance, ttl)?;
        transaction!(self, tx => { super::lease::carve_in(tx, holds, instance, now + ttl).await })
    }

    async fn end_leases(&self, instance: &str, current: &str) -> Result<u64> {
        let earlier = format!("{}.%", crate::store::sql::like_escaped(instance));
        let done = sqlx::query(
            "DELETE FROM keymeter_reservations WHERE instance_id LIKE $1 ESCAPE '\\' AND instance_id <> $2 \
             AND request_id IS NULL AND estimate IS NULL",
        )
        .bind(&earlier)
        .bind(current)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn release(&self, reservation_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM keymeter_reservations WHERE id = $1")
            .bind(reservation_id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}

/// A report grouped by key, owner, org or model, summed in the database.
async fn grouped_report(store: &PostgresStore, f: &EventFilter, by: GroupBy) -> Result<Report> {
    let key = match by {
        GroupBy::Key => "COALESCE(key_id, '(none)')",
        GroupBy::Org => "COALESCE(org, '(none)')",
        GroupBy::Model => "model",
        _ => "owner",
    };
    let sql = format!(
        "SELECT {key} AS key, SUM(cost) AS cost, COUNT(*) AS events, \
         SUM(input_tokens)::bigint AS input_tokens, SUM(output_tokens)::bigint AS output_tokens \
         FROM keymeter_usage_events WHERE {FILTER} GROUP BY 1"
    );
    let mut out = ReportBuilder::default();
    let mut rows = filtered(&sql, f).fetch(store.pool());
    while let Some(row) = rows.try_next().await.map_err(db)? {
        out.add(&row.text("key")?, &totals(&row)?);
    }
    Ok(out.finish())
}

impl crate::ledger::EventPages for PostgresStore {
    async fn events_page(
        &self,
        f: &EventFilter,
        after: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>> {
        let sql = format!(
            "SELECT * FROM keymeter_usage_events WHERE {FILTER} AND ($7::timestamptz IS NULL OR \
             (at, event_id) > ($7, $8::text)) ORDER BY at, event_id LIMIT $9"
        );
        let rows = filtered(&sql, f)
            .bind(after.map(|c| c.at))
            .bind(after.map(|c| c.event_id.as_str()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        rows.iter().map(usage_event).collect()
    }
}
