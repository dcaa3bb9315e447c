//! Budget leases on PostgreSQL ([`Ledger::lease`](crate::ledger::Ledger::lease)): a lease is a reservation of
//! its instance, rewritten in the transaction that locks its budgets (in the fixed order every reserve uses) and
//! reads the room it may grow into; a settled draw's amount leaves it in the settle's own transaction.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sqlx::Row;

use super::ledger::{insert_budgets, lock_budgets, standing_of};
use super::{Tx, db};
use crate::error::{Error, Result};
use crate::ledger::lease::{Lease, LeaseAsk, drawn, grant};
use crate::ledger::{BudgetScope, Recorded, Standing, UsageEvent};
use crate::store::sql::estimate_text;

/// Grows or shrinks lease `ask.id` as the budgets allow.
pub(super) async fn lease_in(
    tx: &mut Tx,
    ask: &LeaseAsk<'_>,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Lease> {
    let budgets = lock_budgets(tx, ask.scopes.iter().collect::<BTreeSet<_>>()).await?;
    // Lapsed (by the caller's clock, as reserves judge it) is gone: a lease has no estimate to bill.
    let row = sqlx::query(
        "DELETE FROM keymeter_reservations WHERE id = $1 RETURNING amount, instance_id, expires_at > $2 AS live",
    )
    .bind(ask.id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let mut held = Decimal::ZERO;
    if let Some(row) = row {
        let instance: Option<String> = row.try_get("instance_id").map_err(db)?;
        if instance.as_deref() != Some(ask.instance) {
            return Err(Error::invalid("lease id", "held by another instance"));
        }
        if row.try_get::<bool, _>("live").map_err(db)? {
            held = row.try_get("amount").map_err(db)?;
        }
    }
    let mut found = Vec::with_capacity(budgets.len());
    for budget in &budgets {
        let start = budget.period_start(now);
        let (spent, reserved) = standing_of(&mut **tx, &budget.scope, start, now).await?;
        found.push((budget, spent, reserved, start));
    }
    let lease = grant(
        found.iter().map(|(budget, spent, reserved, _)| Standing {
            budget,
            spent: *spent,
            reserved: *reserved,
        }),
        held,
        ask.change,
        now,
    );
    let Some(room) = lease.room.filter(|r| *r > Decimal::ZERO) else {
        return Ok(lease);
    };
    sqlx::query(
        "INSERT INTO keymeter_reservations (id, amount, expires_at, instance_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(ask.id)
    .bind(room)
    .bind(now + ttl)
    .bind(ask.instance)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let slots: Vec<(&BudgetScope, DateTime<Utc>)> = found
        .iter()
        .map(|(b, .., start)| (&b.scope, *start))
        .collect();
    insert_budgets(tx, ask.id, &slots).await?;
    Ok(lease)
}

/// Takes each settled draw's amount out of its lease: newly recorded settles only (a resent one took it
/// already), and not for draws in `carved` (carved out before, their own reservation just ended).
pub(super) async fn shrink_for(
    tx: &mut Tx,
    settled: &[(&str, &Recorded)],
    carved: &std::collections::HashSet<String>,
) -> Result<()> {
    let mut leases: Vec<&str> = Vec::new();
    let mut amounts: Vec<Decimal> = Vec::new();
    for (id, recorded) in settled {
        if let Some((lease, amount)) = drawn(id)
            && !recorded.duplicate
            && !carved.contains(*id)
        {
            leases.push(lease);
            amounts.push(amount);
        }
    }
    if leases.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE keymeter_reservations r SET amount = GREATEST(r.amount - d.amount, 0) \
         FROM (SELECT id, SUM(amount) AS amount FROM UNNEST($1::text[], $2::numeric[]) AS u(id, amount) GROUP BY id) d \
         WHERE r.id = d.id",
    )
    .bind(&leases)
    .bind(&amounts)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Moves each open draw's amount out of its lease into a reservation of its own (id the draw's, claiming the
/// estimate's request id, billed the estimate if it lapses); whether each was carved.
pub(super) async fn carve_in(
    tx: &mut Tx,
    holds: &[(&str, &UsageEvent)],
    instance: &str,
    expires_at: DateTime<Utc>,
) -> Result<Vec<bool>> {
    let mut out = Vec::with_capacity(holds.len());
    for (id, estimate) in holds {
        let Some((lease, amount)) = drawn(id) else {
            out.push(false);
            continue;
        };
        let taken = sqlx::query(
            "SELECT 1 FROM keymeter_usage_events WHERE request_id = $1 \
             UNION ALL SELECT 1 FROM keymeter_pruned_requests WHERE request_id = $1 \
             UNION ALL SELECT 1 FROM keymeter_reservations WHERE request_id = $1 OR id = $2 LIMIT 1",
        )
        .bind(&estimate.request_id)
        .bind(*id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .is_some();
        if taken {
            out.push(false);
            continue;
        }
        let shrunk = sqlx::query(
            "UPDATE keymeter_reservations SET amount = GREATEST(amount - $3, 0) \
             WHERE id = $1 AND instance_id = $2 RETURNING id",
        )
        .bind(lease)
        .bind(instance)
        .bind(amount)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
        if shrunk.is_none() {
            out.push(false);
            continue;
        }
        sqlx::query(
            "INSERT INTO keymeter_reservations (id, amount, expires_at, request_id, instance_id, estimate) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(*id)
        .bind(amount)
        .bind(expires_at)
        .bind(&estimate.request_id)
        .bind(instance)
        .bind(estimate_text(estimate)?)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO keymeter_reservation_budgets (reservation_id, scope_kind, scope_id, period_start) \
             SELECT $1, scope_kind, scope_id, period_start FROM keymeter_reservation_budgets WHERE reservation_id = $2",
        )
        .bind(*id)
        .bind(lease)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        out.push(true);
    }
    Ok(out)
}
