//! The SQLite [`Ledger`]: every write is one `BEGIN IMMEDIATE` transaction, so the budget check and the write it
//! guards cannot interleave with another writer, in this process or another. A writer that finds the database
//! busy waits (the connection's busy timeout) and then retries with backoff instead of failing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use sqlx::sqlite::Sqlite;
use sqlx::{QueryBuilder, Row};

use super::{SqliteStore, Tx, corrupt, db, micros};
use crate::alerts::Alert;
use crate::credentials::CredentialSource;
use crate::error::{Error, Result};
use crate::ledger::lease::{Lease, LeaseAsk};
use crate::ledger::{
    Budget, BudgetScope, BudgetStatus, Claim, EventCursor, EventFilter, GroupBy, Ledger, Recorded,
    Report, Reservation, Standing, UsageEvent, admit,
};
use crate::store::sql::{
    Columns, budget, estimate_text, tags_text, thresholds_text, usage_event, usage_text,
};

async fn budget_of(tx: &mut Tx, scope: &BudgetScope) -> Result<Option<Budget>> {
    let row = sqlx::query("SELECT * FROM keymeter_budgets WHERE scope_kind = ?1 AND scope_id = ?2")
        .bind(scope.kind())
        .bind(scope.id())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    row.as_ref().map(budget).transpose()
}

async fn spent_in(tx: &mut Tx, scope: &BudgetScope, start: i64) -> Result<Decimal> {
    let row = sqlx::query("SELECT spent FROM keymeter_budget_spend WHERE scope_kind = ?1 AND scope_id = ?2 AND period_start = ?3")
        .bind(scope.kind())
        .bind(scope.id())
        .bind(start)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    row.map_or(Ok(Decimal::ZERO), |r| r.decimal("spent"))
}

async fn reserved_in(tx: &mut Tx, scope: &BudgetScope, start: i64) -> Result<Decimal> {
    let rows = sqlx::query(
        "SELECT r.amount FROM keymeter_reservation_budgets b JOIN keymeter_reservations r ON r.id = b.reservation_id \
         WHERE b.scope_kind = ?1 AND b.scope_id = ?2 AND b.period_start = ?3",
    )
    .bind(scope.kind())
    .bind(scope.id())
    .bind(start)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    rows.iter()
        .try_fold(Decimal::ZERO, |sum, r| Ok(sum + r.decimal("amount")?))
}

/// Ends the lapsed reservations: each with an estimate is billed it (once), the others freed. Returns how many
/// were billed. A row whose estimate does not read stays, counted as reserved, and is logged: never freed unbilled.
pub(super) async fn purge(tx: &mut Tx, now: DateTime<Utc>) -> Result<u64> {
    let lapsed = sqlx::query(
        "SELECT id, estimate FROM keymeter_reservations WHERE expires_at <= ?1 AND estimate IS NOT NULL LIMIT 256",
    )
    .bind(micros(now))
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let mut bills = Vec::with_capacity(lapsed.len());
    for row in &lapsed {
        let id: String = row.try_get("id").map_err(db)?;
        let text: String = row.try_get("estimate").map_err(db)?;
        match text.parse::<UsageEvent>() {
            Ok(event) => bills.push((id, event)),
            Err(e) => {
                tracing::error!(reservation = %id, error = %e, "a lapsed claim's estimate does not read: kept")
            }
        }
    }
    sqlx::query("DELETE FROM keymeter_reservations WHERE expires_at <= ?1 AND estimate IS NULL")
        .bind(micros(now))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    if bills.is_empty() {
        return Ok(0);
    }
    for (id, _) in &bills {
        sqlx::query("DELETE FROM keymeter_reservations WHERE id = ?1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    let events: Vec<UsageEvent> = bills.into_iter().map(|(_, e)| e).collect();
    let recorded = record_in(tx, &events).await?;
    let billed = recorded.iter().filter(|r| !r.duplicate).count() as u64;
    tracing::warn!(
        billed,
        lapsed = events.len(),
        "lapsed claims billed at their reservation as estimated"
    );
    Ok(billed)
}

/// Adds `amount` to a budget's spend in the period starting `start`; returns the spend before and after.
async fn add_spend(
    tx: &mut Tx,
    scope: &BudgetScope,
    start: i64,
    amount: Decimal,
) -> Result<(Decimal, Decimal)> {
    let before = spent_in(tx, scope, start).await?;
    let total = before + amount;
    sqlx::query(
        "INSERT INTO keymeter_budget_spend (scope_kind, scope_id, period_start, spent) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (scope_kind, scope_id, period_start) DO UPDATE SET spent = excluded.spent",
    )
    .bind(scope.kind())
    .bind(scope.id())
    .bind(start)
    .bind(total.normalize().to_string())
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok((before, total))
}

/// Reserves `amount` as reservation `id` against the budgets of `scopes`, claiming `request_id` if given: one
/// writer at a time (the caller's `BEGIN IMMEDIATE`), so the checks below cannot interleave with another claim.
async fn reserve_in(
    tx: &mut Tx,
    id: &str,
    claim: Claim<'_>,
    scopes: &[BudgetScope],
    amount: Decimal,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Reservation> {
    let expires_at = now + ttl;
    purge(tx, now).await?;
    if let Some(request) = claim.request_id {
        claimable(tx, request).await?;
    }
    let found = standings(tx, scopes, now).await?;
    admit(found.iter().map(Found::standing), amount, now)?;
    let slots: Vec<(BudgetScope, i64)> = found
        .into_iter()
        .map(|f| (f.budget.scope, f.start))
        .collect();
    insert_reservation(tx, id, claim, amount, expires_at, slots).await
}

/// A budget as a reservation finds it: its spend and live reservations in the period containing the
/// reservation's time, which starts at `start`.
pub(super) struct Found {
    pub(super) budget: Budget,
    spent: Decimal,
    reserved: Decimal,
    pub(super) start: i64,
}

impl Found {
    pub(super) fn standing(&self) -> Standing<'_> {
        Standing {
            budget: &self.budget,
            spent: self.spent,
            reserved: self.reserved,
        }
    }
}

/// The budgets of `scopes` (each once) as they stand at `now`.
pub(super) async fn standings(
    tx: &mut Tx,
    scopes: &[BudgetScope],
    now: DateTime<Utc>,
) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    for scope in scopes {
        if found.iter().any(|f| f.budget.scope == *scope) {
            continue;
        }
        if let Some(budget) = budget_of(tx, scope).await? {
            let start = micros(budget.period_start(now));
            let spent = spent_in(tx, scope, start).await?;
            let reserved = reserved_in(tx, scope, start).await?;
            found.push(Found {
                budget,
                spent,
                reserved,
                start,
            });
        }
    }
    Ok(found)
}

/// Writes reservation `id` of `amount` in `slots` (admitted already), with `claim`.
pub(super) async fn insert_reservation(
    tx: &mut Tx,
    id: &str,
    claim: Claim<'_>,
    amount: Decimal,
    expires_at: DateTime<Utc>,
    slots: Vec<(BudgetScope, i64)>,
) -> Result<Reservation> {
    let estimate = claim.estimate.map(estimate_text).transpose()?;
    sqlx::query(
        "INSERT INTO keymeter_reservations (id, amount, expires_at, request_id, instance_id, estimate) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(id)
    .bind(amount.to_string())
    .bind(micros(expires_at))
    .bind(claim.request_id)
    .bind(claim.instance)
    .bind(estimate)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    for (scope, start) in &slots {
        sqlx::query(
            "INSERT INTO keymeter_reservation_budgets (reservation_id, scope_kind, scope_id, period_start) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(id)
        .bind(scope.kind())
        .bind(scope.id())
        .bind(start)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    Ok(Reservation {
        id: id.to_owned(),
        amount,
        expires_at,
        scopes: slots.into_iter().map(|(s, _)| s).collect(),
    })
}

/// Refuses a request id that a live reservation holds or that is recorded (or pruned).
async fn claimable(tx: &mut Tx, request_id: &str) -> Result<()> {
    let taken = |event_id: Option<String>, cost: Option<Decimal>| Error::DuplicateRequest {
        request_id: request_id.to_owned(),
        event_id,
        cost,
    };
    let row = sqlx::query(
        "SELECT event_id, cost FROM keymeter_usage_events WHERE request_id = ?1 \
         UNION ALL SELECT event_id, NULL FROM keymeter_pruned_requests WHERE request_id = ?1 \
         UNION ALL SELECT NULL, NULL FROM keymeter_reservations WHERE request_id = ?1 LIMIT 1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    match row {
        None => Ok(()),
        Some(row) => {
            let event_id: Option<String> = row.try_get("event_id").map_err(db)?;
            let cost: Option<String> = row.try_get("cost").map_err(db)?;
            let cost = cost
                .map(|c| c.parse::<Decimal>().map_err(|_| corrupt("event cost")))
                .transpose()?;
            Err(taken(event_id, cost))
        }
    }
}

/// Adds to `found` the event id stored in `table` (events or pruned requests) for each of `requests` it holds.
async fn event_ids_of(
    tx: &mut Tx,
    table: &'static str,
    requests: &[&str],
    found: &mut HashMap<String, String>,
) -> Result<()> {
    for chunk in requests.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT request_id, event_id FROM {table} WHERE request_id IN ("
        ));
        let mut list = qb.separated(", ");
        for r in chunk {
            list.push_bind(*r);
        }
        qb.push(")");
        for row in qb.build().fetch_all(&mut **tx).await.map_err(db)? {
            found.insert(
                row.try_get("request_id").map_err(db)?,
                row.try_get("event_id").map_err(db)?,
            );
        }
    }
    Ok(())
}

/// Rows per multi-row INSERT: 11 parameters each stays far below SQLite's 32,766.
const INSERT_CHUNK: usize = 500;

/// Records `events` (each idempotent by request id) and adds the new ones to their budgets' spend: one multi-row
/// insert per chunk, then one read-modify-write per (budget, period) touched, whatever the batch size.
async fn record_in(tx: &mut Tx, events: &[UsageEvent]) -> Result<Vec<Recorded>> {
    // Request id → event id, of rows this call inserted, and of rows that were there before.
    let mut inserted: HashMap<String, String> = HashMap::with_capacity(events.len());
    let mut existing: HashMap<String, String> = HashMap::new();
    // Request ids of pruned events stay recorded.
    let requests: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
    event_ids_of(tx, "keymeter_pruned_requests", &requests, &mut existing).await?;
    let live: Vec<&UsageEvent> = events
        .iter()
        .filter(|e| !existing.contains_key(&e.request_id))
        .collect();
    for chunk in live.chunks(INSERT_CHUNK) {
        let usages = chunk
            .iter()
            .map(|e| usage_text(e))
            .collect::<Result<Vec<_>>>()?;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keymeter_usage_events (event_id, request_id, at, key_id, owner, org, provider, model, usage, cost, \
             credential_source, estimated, estimated_first, tags, end_user) ",
        );
        qb.push_values(chunk.iter().zip(&usages), |mut row, (e, usage)| {
            row.push_bind(&e.event_id)
                .push_bind(&e.request_id)
                .push_bind(micros(e.at))
                .push_bind(&e.key_id)
                .push_bind(&e.owner)
                .push_bind(&e.org)
                .push_bind(&e.provider)
                .push_bind(&e.model)
                .push_bind(usage)
                .push_bind(e.cost.normalize().to_string())
                .push_bind(e.credential_source.map(CredentialSource::as_str))
                .push_bind(e.estimated)
                .push_bind(e.estimated_first)
                .push_bind(tags_text(&e.tags))
                .push_bind(&e.end_user);
        });
        qb.push(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id, event_id");
        for row in qb.build().fetch_all(&mut **tx).await.map_err(db)? {
            inserted.insert(
                row.try_get("request_id").map_err(db)?,
                row.try_get("event_id").map_err(db)?,
            );
        }
    }
    // Request ids already stored before this batch: look up their first event's id.
    let missing: Vec<&str> = live
        .iter()
        .map(|e| e.request_id.as_str())
        .filter(|r| !inserted.contains_key(*r))
        .collect();
    event_ids_of(tx, "keymeter_usage_events", &missing, &mut existing).await?;
    let mut counted: HashSet<&str> = HashSet::new();
    let mut fresh: Vec<&UsageEvent> = Vec::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let (event_id, new) = match inserted.get(&e.request_id) {
            // The batch's first event with this request id is the one inserted.
            Some(id) => (
                id.clone(),
                *id == e.event_id && counted.insert(e.request_id.as_str()),
            ),
            None => (
                existing
                    .get(&e.request_id)
                    .cloned()
                    .ok_or_else(|| corrupt("usage event (neither inserted nor found)"))?,
                false,
            ),
        };
        if new {
            fresh.push(e);
        }
        out.push(Recorded {
            event_id,
            duplicate: !new,
            replaced: false,
        });
    }
    let added: Vec<(&UsageEvent, Decimal)> = fresh.iter().map(|e| (*e, e.cost)).collect();
    add_to_budgets(tx, &added).await?;
    super::rollup::add(tx, &fresh).await?;
    replace_estimated(tx, events, &mut out).await?;
    Ok(out)
}

/// Replaces stored `estimated` events with the exact events of the batch that were found duplicates of them: each
/// row takes the exact usage and cost, its budgets and rollups move by the difference, and `out` says `replaced`
/// for it. Pruned events are never replaced.
async fn replace_estimated(tx: &mut Tx, events: &[UsageEvent], out: &mut [Recorded]) -> Result<()> {
    let candidates: Vec<usize> = (0..events.len())
        .filter(|&i| out[i].duplicate && !events[i].estimated)
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    // A pruned event has no row left, so it is never found (and never replaced) here.
    let mut stored: HashMap<String, UsageEvent> = HashMap::new();
    let wanted: Vec<&str> = candidates
        .iter()
        .map(|&i| events[i].request_id.as_str())
        .collect();
    for chunk in wanted.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT * FROM keymeter_usage_events WHERE estimated = 1 AND request_id IN (",
        );
        let mut list = qb.separated(", ");
        for r in chunk {
            list.push_bind(*r);
        }
        qb.push(")");
        for row in qb.build().fetch_all(&mut **tx).await.map_err(db)? {
            let e = usage_event(&row)?;
            stored.insert(e.request_id.clone(), e);
        }
    }
    let (mut olds, mut news, mut deltas) = (Vec::new(), Vec::new(), Vec::new());
    for i in candidates {
        // The first exact event of a request id replaces; the row is exact from then on.
        let Some(old) = stored.remove(&events[i].request_id) else {
            continue;
        };
        let new = old.replaced_by(&events[i]);
        sqlx::query(
            "UPDATE keymeter_usage_events SET usage = ?1, cost = ?2, credential_source = ?3, estimated = 0, \
             estimated_first = 1 WHERE event_id = ?4",
        )
        .bind(usage_text(&new)?)
        .bind(new.cost.normalize().to_string())
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
        deltas.push(new.cost - old.cost);
        olds.push(old);
        news.push(new);
    }
    let moved: Vec<(&UsageEvent, Decimal)> = olds.iter().zip(deltas).collect();
    add_to_budgets(tx, &moved).await?;
    super::rollup::remove(tx, &olds.iter().collect::<Vec<_>>()).await?;
    super::rollup::add(tx, &news.iter().collect::<Vec<_>>()).await
}

/// Adds each amount to the spend of every budget its event counts against (in the event's period).
async fn add_to_budgets(tx: &mut Tx, events: &[(&UsageEvent, Decimal)]) -> Result<()> {
    let scopes: BTreeSet<BudgetScope> = events
        .iter()
        .flat_map(|(e, _)| BudgetScope::of_event(e))
        .collect();
    if scopes.is_empty() {
        return Ok(());
    }
    let mut budgets: HashMap<BudgetScope, Budget> = HashMap::new();
    let scopes: Vec<BudgetScope> = scopes.into_iter().collect();
    for chunk in scopes.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT * FROM keymeter_budgets WHERE (scope_kind, scope_id) IN (",
        );
        qb.push_values(chunk, |mut row, scope| {
            row.push_bind(scope.kind()).push_bind(scope.id());
        });
        qb.push(")");
        for row in qb.build().fetch_all(&mut **tx).await.map_err(db)? {
            let budget = budget(&row)?;
            budgets.insert(budget.scope.clone(), budget);
        }
    }
    if budgets.is_empty() {
        return Ok(());
    }
    // Per budget and period: the amount, and the latest event's time (when a crossing happened).
    let mut deltas: BTreeMap<(BudgetScope, i64), (Decimal, DateTime<Utc>)> = BTreeMap::new();
    for (e, amount) in events {
        for scope in BudgetScope::of_event(e) {
            if let Some(budget) = budgets.get(&scope) {
                let entry = deltas
                    .entry((scope, micros(budget.period_start(e.at))))
                    .or_insert((Decimal::ZERO, e.at));
                entry.0 += *amount;
                entry.1 = entry.1.max(e.at);
            }
        }
    }
    let mut alerts = Vec::new();
    for ((scope, start), (amount, at)) in deltas {
        let (before, after) = add_spend(tx, &scope, start, amount).await?;
        if let (Some(budget), Some(start)) =
            (budgets.get(&scope), DateTime::from_timestamp_micros(start))
        {
            alerts.extend(Alert::budget_crossings(budget, start, before, after, at));
        }
    }
    super::outbox::insert_alerts(tx, &alerts).await.map(drop)
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn record(&self, event: &UsageEvent) -> Result<Recorded> {
        event.validate()?;
        let mut one = immediate!(self, tx => { record_in(tx, std::slice::from_ref(event)).await })?;
        one.pop().ok_or_else(|| corrupt("usage event"))
    }

    async fn record_batch(&self, events: &[UsageEvent]) -> Result<Vec<Recorded>> {
        events.iter().try_for_each(UsageEvent::validate)?;
        immediate!(self, tx => { record_in(tx, events).await })
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<UsageEvent>> {
        self.events_after(f, None, usize::MAX).await
    }

    async fn event(&self, request_id: &str) -> Result<Option<UsageEvent>> {
        let row = sqlx::query("SELECT * FROM keymeter_usage_events WHERE request_id = ?1")
            .bind(request_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        row.as_ref().map(usage_event).transpose()
    }

    async fn report(&self, f: &EventFilter, by: GroupBy, tz: Tz) -> Result<Report> {
        if by.by_attribution() || f.by_attribution() {
            // Tags and end users are not rolled up: summed from the events.
            return Ok(crate::ledger::aggregate(&self.events(f).await?, by, tz));
        }
        let mut report = super::rollup::report(self, f, by, tz).await?;
        // Few and indexed apart (a partial index): summed from the events themselves.
        let sql =
            format!("SELECT cost FROM keymeter_usage_events WHERE estimated = 1 AND {FILTER}");
        let rows = filtered(&sql, f).fetch_all(self.pool()).await.map_err(db)?;
        for row in &rows {
            report.estimated.add(row.decimal("cost")?);
        }
        report.estimated.cost = report.estimated.cost.normalize();
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
        let before = micros(before);
        immediate!(self, tx => {
            async {
                sqlx::query(
                    "INSERT OR IGNORE INTO keymeter_pruned_requests (request_id, event_id) \
                     SELECT request_id, event_id FROM keymeter_usage_events WHERE at < ?1",
                )
                .bind(before)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                let done = sqlx::query("DELETE FROM keymeter_usage_events WHERE at < ?1")
                    .bind(before)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                // Rollups follow the events (budgets' spend does not).
                super::rollup::rebuild(tx, i64::MIN, before).await?;
                Ok(done.rows_affected())
            }
            .await
        })
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> Result<bool> {
        immediate!(self, tx => {
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
        let kept = immediate!(self, tx => {
            sqlx::query(
                "UPDATE keymeter_budgets SET limit_amount = ?3, soft_limit = ?4, thresholds = ?7 \
                 WHERE scope_kind = ?1 AND scope_id = ?2 AND period = ?5 AND tz = ?6",
            )
            .bind(budget.scope.kind())
            .bind(budget.scope.id())
            .bind(budget.limit.to_string())
            .bind(budget.soft_limit.map(|s| s.to_string()))
            .bind(budget.period.as_str())
            .bind(budget.tz.name())
            .bind(thresholds_text(budget))
            .execute(&mut **tx)
            .await
            .map_err(db)
        })?;
        if kept.rows_affected() > 0 {
            return Ok(());
        }
        let events = self
            .events(&EventFilter {
                owner: matches!(budget.scope, BudgetScope::Owner(_))
                    .then(|| budget.scope.id().to_owned()),
                org: matches!(budget.scope, BudgetScope::Org(_))
                    .then(|| budget.scope.id().to_owned()),
                key_id: matches!(budget.scope, BudgetScope::Key(_))
                    .then(|| budget.scope.id().to_owned()),
                ..EventFilter::default()
            })
            .await?;
        immediate!(self, tx => {
            async {
                let scope = &budget.scope;
                sqlx::query(
                    "INSERT INTO keymeter_budgets (scope_kind, scope_id, limit_amount, soft_limit, period, tz, thresholds) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (scope_kind, scope_id) DO UPDATE SET \
                     limit_amount = excluded.limit_amount, soft_limit = excluded.soft_limit, \
                     period = excluded.period, tz = excluded.tz, thresholds = excluded.thresholds",
                )
                .bind(scope.kind())
                .bind(scope.id())
                .bind(budget.limit.to_string())
                .bind(budget.soft_limit.map(|s| s.to_string()))
                .bind(budget.period.as_str())
                .bind(budget.tz.name())
                .bind(thresholds_text(budget))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                // Recount this scope's spend under the (possibly new) period and time zone. Events recorded
                // between the read above and this transaction were counted by their own transactions under
                // the old settings, so the recount covers exactly the events read.
                delete_scope(tx, "keymeter_budget_spend", scope).await?;
                let mut sums: std::collections::BTreeMap<i64, Decimal> = std::collections::BTreeMap::new();
                for e in events.iter().filter(|e| scope.covers(e)) {
                    *sums.entry(micros(budget.period_start(e.at))).or_default() += e.cost;
                }
                for (start, amount) in sums {
                    add_spend(tx, scope, start, amount).await?;
                }
                Ok(())
            }
            .await
        })
    }

    async fn budget(&self, scope: &BudgetScope) -> Result<Option<Budget>> {
        let row =
            sqlx::query("SELECT * FROM keymeter_budgets WHERE scope_kind = ?1 AND scope_id = ?2")
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
        // A deferred read transaction: one consistent snapshot of spend and reservations.
        let mut tx = self.pool().begin().await.map_err(db)?;
        let Some(budget) = budget_of(&mut tx, scope).await? else {
            return Ok(None);
        };
        let start = micros(budget.period_start(now));
        let spent = spent_in(&mut tx, scope, start).await?;
        let rows = sqlx::query(
            "SELECT r.amount FROM keymeter_reservation_budgets b JOIN keymeter_reservations r ON r.id = b.reservation_id \
             WHERE b.scope_kind = ?1 AND b.scope_id = ?2 AND b.period_start = ?3 \
             AND (r.expires_at > ?4 OR r.estimate IS NOT NULL)",
        )
        .bind(scope.kind())
        .bind(scope.id())
        .bind(start)
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let reserved = rows.iter().try_fold(Decimal::ZERO, |sum, r| {
            Ok::<_, Error>(sum + r.decimal("amount")?)
        })?;
        tx.commit().await.map_err(db)?;
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
        if let Some(reserver) = &self.reserver {
            let ask = super::reserve::Ask {
                id: id.clone(),
                request_id: claim.request_id.map(str::to_owned),
                instance: claim.instance.map(str::to_owned),
                estimate: claim.estimate.map(estimate_text).transpose()?,
                scopes: scopes.to_vec(),
                amount,
                now,
                ttl,
            };
            // The lock goes with the work: a caller that stops waiting leaves it held until the write is done.
            let writer = self.writer.clone().lock_owned().await;
            let reserver = reserver.clone();
            let done = tokio::task::spawn_blocking(move || {
                let _writer = writer;
                reserver.reserve(&ask)
            })
            .await;
            if let Ok(Some(result)) = done {
                return result;
            }
        }
        immediate!(self, tx => { reserve_in(tx, &id, claim, scopes, amount, now, ttl).await })
    }

    async fn renew(&self, instance: &str, now: DateTime<Utc>, ttl: Duration) -> Result<u64> {
        immediate!(self, tx => {
            sqlx::query("UPDATE keymeter_reservations SET expires_at = ?1 WHERE instance_id = ?2")
                .bind(micros(now + ttl))
                .bind(instance)
                .execute(&mut **tx)
                .await
                .map_err(db)
                .map(|done| done.rows_affected())
        })
    }

    async fn sweep(&self, now: DateTime<Utc>) -> Result<u64> {
        immediate!(self, tx => { purge(tx, now).await })
    }

    async fn settle(
        &self,
        reservation_id: &str,
        event: &UsageEvent,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        event.validate()?;
        immediate!(self, tx => {
            async {
                purge(tx, now).await?;
                let ended: HashSet<String> = sqlx::query_scalar("DELETE FROM keymeter_reservations WHERE id = ?1 RETURNING id")
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
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>> {
        crate::ledger::validate_settles(settles)?;
        let events: Vec<UsageEvent> = settles.iter().map(|(_, e)| (*e).clone()).collect();
        immediate!(self, tx => {
            async {
                purge(tx, now).await?;
                let mut ended: HashSet<String> = HashSet::new();
                for chunk in settles.chunks(INSERT_CHUNK) {
                    let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM keymeter_reservations WHERE id IN (");
                    let mut ids = qb.separated(", ");
                    for (id, _) in chunk {
                        ids.push_bind(*id);
                    }
                    qb.push(") RETURNING id");
                    let gone: Vec<String> = qb.build_query_scalar().fetch_all(&mut **tx).await.map_err(db)?;
                    ended.extend(gone);
                }
                let recorded = record_in(tx, &events).await?;
                let settled: Vec<(&str, &Recorded)> =
                    settles.iter().map(|(id, _)| *id).zip(&recorded).collect();
                super::lease::shrink_for(tx, &settled, &ended).await?;
                Ok(recorded)
            }
            .await
        })
    }

    async fn lease(&self, ask: LeaseAsk<'_>, now: DateTime<Utc>, ttl: Duration) -> Result<Lease> {
        crate::ledger::lease::validate(&ask)?;
        crate::validate::positive("lease ttl", ttl)?;
        immediate!(self, tx => { super::lease::lease_in(tx, &ask, now, ttl).await })
    }

    async fn carve(
        &self,
        holds: &[(&str, &UsageEvent)],
        instance: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Vec<bool>> {
        crate::ledger::lease::validate_carve(holds, instance, ttl)?;
        immediate!(self, tx => { super::lease::carve_in(tx, holds, instance, now + ttl).await })
    }

    async fn end_leases(&self, instance: &str, current: &str) -> Result<u64> {
        let earlier = format!("{}.%", crate::store::sql::like_escaped(instance));
        immediate!(self, tx => {
            sqlx::query(
                "DELETE FROM keymeter_reservations WHERE instance_id LIKE ?1 ESCAPE '\\' AND instance_id <> ?2 \
                 AND request_id IS NULL AND estimate IS NULL",
            )
            .bind(&earlier)
            .bind(current)
            .execute(&mut **tx)
            .await
            .map_err(db)
            .map(|done| done.rows_affected())
        })
    }

    async fn release(&self, reservation_id: &str) -> Result<bool> {
        immediate!(self, tx => {
            sqlx::query("DELETE FROM keymeter_reservations WHERE id = ?1")
                .bind(reservation_id)
                .execute(&mut **tx)
                .await
                .map_err(db)
                .map(|done| done.rows_affected() > 0)
        })
    }
}

/// An [`EventFilter`] as SQL over parameters `?1`–`?6`, bound by [`filtered`].
/// Deletes the rows of `scope` from `table` (one of keymeter's budget tables, keyed by scope kind and id).
async fn delete_scope(tx: &mut Tx, table: &'static str, scope: &BudgetScope) -> Result<u64> {
    let sql = format!("DELETE FROM {table} WHERE scope_kind = ?1 AND scope_id = ?2");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(scope.kind())
        .bind(scope.id())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}

const FILTER: &str = "(?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR org = ?2) AND (?3 IS NULL OR key_id = ?3) \
     AND (?4 IS NULL OR model = ?4) AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6)";

/// `sql` (holding [`FILTER`]) with the filter's values bound as `?1`–`?6`.
fn filtered<'q>(
    sql: &'q str,
    f: &'q EventFilter,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&f.owner)
        .bind(&f.org)
        .bind(&f.key_id)
        .bind(&f.model)
        .bind(f.since.map(micros))
        .bind(f.until.map(micros))
}

impl crate::ledger::EventPages for SqliteStore {
    async fn events_page(
        &self,
        f: &EventFilter,
        after: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>> {
        let sql = format!(
            "SELECT * FROM keymeter_usage_events WHERE {FILTER} \
             AND (?7 IS NULL OR at > ?7 OR (at = ?7 AND event_id > ?8)) ORDER BY at, event_id LIMIT ?9"
        );
        let rows = filtered(&sql, f)
            .bind(after.map(|c| micros(c.at)))
            .bind(after.map(|c| c.event_id.as_str()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        rows.iter().map(usage_event).collect()
    }
}
