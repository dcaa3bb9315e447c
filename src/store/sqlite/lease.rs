//! Budget leases on SQLite ([`Ledger::lease`](crate::ledger::Ledger::lease)): a lease is a reservation of its
//! instance, rewritten in the `BEGIN IMMEDIATE` transaction that reads the room it may grow into; a settled
//! draw's amount leaves it in the settle's own transaction.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sqlx::Row;

use super::ledger::{Found, insert_reservation, purge, standings};
use super::{Tx, corrupt, db};
use crate::error::{Error, Result};
use crate::ledger::lease::{Lease, LeaseAsk, drawn, grant};
use crate::ledger::{Claim, Recorded, UsageEvent};
use crate::store::sql::estimate_text;

/// Grows or shrinks lease `ask.id` as the budgets allow.
pub(super) async fn lease_in(
    tx: &mut Tx,
    ask: &LeaseAsk<'_>,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Lease> {
    purge(tx, now).await?;
    let held = held(tx, ask).await?;
    sqlx::query("DELETE FROM keymeter_reservations WHERE id = ?1")
        .bind(ask.id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let found = standings(tx, ask.scopes, now).await?;
    let lease = grant(found.iter().map(Found::standing), held, ask.change, now);
    if let Some(room) = lease.room.filter(|r| *r > Decimal::ZERO) {
        let slots = found
            .into_iter()
            .map(|f| (f.budget.scope, f.start))
            .collect();
        let claim = Claim::default().instance(Some(ask.instance));
        insert_reservation(tx, ask.id, claim, room, now + ttl, slots).await?;
    }
    Ok(lease)
}

/// What lease `ask.id` holds now (nothing once lapsed); refuses an id another instance holds.
async fn held(tx: &mut Tx, ask: &LeaseAsk<'_>) -> Result<Decimal> {
    let row = sqlx::query("SELECT amount, instance_id FROM keymeter_reservations WHERE id = ?1")
        .bind(ask.id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let Some(row) = row else {
        return Ok(Decimal::ZERO);
    };
    let instance: Option<String> = row.try_get("instance_id").map_err(db)?;
    if instance.as_deref() != Some(ask.instance) {
        return Err(Error::invalid("lease id", "held by another instance"));
    }
    let amount: String = row.try_get("amount").map_err(db)?;
    amount
        .parse::<Decimal>()
        .map_err(|_| corrupt("reservation amount"))
}

/// Takes each settled draw's amount out of its lease: newly recorded settles only (a resent one took it
/// already), and not for draws in `carved` (carved out before, their own reservation just ended).
pub(super) async fn shrink_for(
    tx: &mut Tx,
    settled: &[(&str, &Recorded)],
    carved: &std::collections::HashSet<String>,
) -> Result<()> {
    for (id, recorded) in settled {
        let Some((lease, amount)) = drawn(id) else {
            continue;
        };
        if recorded.duplicate || carved.contains(*id) {
            continue;
        }
        take_from(tx, lease, None, amount).await?;
    }
    Ok(())
}

/// Takes `amount` out of lease `lease` (down to nothing), if it exists (and is `instance`'s, when given);
/// whether it did. Amounts are text in SQLite: the arithmetic is `Decimal`'s, under the writer's transaction.
async fn take_from(
    tx: &mut Tx,
    lease: &str,
    instance: Option<&str>,
    amount: Decimal,
) -> Result<bool> {
    let row = sqlx::query(
        "SELECT amount FROM keymeter_reservations WHERE id = ?1 AND (?2 IS NULL OR instance_id = ?2)",
    )
    .bind(lease)
    .bind(instance)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let Some(row) = row else {
        return Ok(false);
    };
    let held: String = row.try_get("amount").map_err(db)?;
    let held: Decimal = held.parse().map_err(|_| corrupt("reservation amount"))?;
    sqlx::query("UPDATE keymeter_reservations SET amount = ?2 WHERE id = ?1")
        .bind(lease)
        .bind((held - amount).max(Decimal::ZERO).to_string())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(true)
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
            "SELECT 1 FROM keymeter_usage_events WHERE request_id = ?1 \
             UNION ALL SELECT 1 FROM keymeter_pruned_requests WHERE request_id = ?1 \
             UNION ALL SELECT 1 FROM keymeter_reservations WHERE request_id = ?1 OR id = ?2 LIMIT 1",
        )
        .bind(&estimate.request_id)
        .bind(*id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .is_some();
        if taken || !take_from(tx, lease, Some(instance), amount).await? {
            out.push(false);
            continue;
        }
        sqlx::query(
            "INSERT INTO keymeter_reservations (id, amount, expires_at, request_id, instance_id, estimate) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(*id)
        .bind(amount.to_string())
        .bind(super::micros(expires_at))
        .bind(&estimate.request_id)
        .bind(instance)
        .bind(estimate_text(estimate)?)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO keymeter_reservation_budgets (reservation_id, scope_kind, scope_id, period_start) \
             SELECT ?1, scope_kind, scope_id, period_start FROM keymeter_reservation_budgets WHERE reservation_id = ?2",
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
