//! [`SlotStore`] on PostgreSQL: an acquire is one transaction that takes a transaction-scoped advisory lock per
//! scope (in a fixed order, so two acquires never wait on each other in a cycle), drops the scope's lapsed slots,
//! counts the live ones and inserts. Expiry is judged by the database's clock, which every instance shares.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{PostgresStore, db};
use crate::error::Result;
use crate::limits::slots::first_full;
use crate::limits::{LimitScope, Slot, SlotRefusal, SlotStore};

fn seconds(ttl: chrono::Duration) -> f64 {
    ttl.num_milliseconds() as f64 / 1000.0
}

#[async_trait]
impl SlotStore for PostgresStore {
    async fn acquire(
        &self,
        slot: &Slot,
        _now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<SlotRefusal>> {
        let scopes: Vec<String> = slot.claims.iter().map(|c| c.scope.to_string()).collect();
        let mut locked = scopes.clone();
        locked.sort();
        locked.dedup();
        transaction!(self, tx => {
            async {
                // In sorted order; "keymeter slot" keeps the locks apart from an application's own.
                for scope in &locked {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('keymeter slot ' || $1, 0))")
                        .bind(scope)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                }
                sqlx::query("DELETE FROM keymeter_slots WHERE scope = ANY($1) AND expires_at <= now()")
                    .bind(&locked)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT scope, COUNT(*) FROM keymeter_slots WHERE scope = ANY($1) GROUP BY scope",
                )
                .bind(&locked)
                .fetch_all(&mut **tx)
                .await
                .map_err(db)?;
                let counts: Vec<u64> = scopes
                    .iter()
                    .map(|s| {
                        rows.iter()
                            .find(|(scope, _)| scope == s)
                            .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
                    })
                    .collect();
                if let Some(refused) = first_full(&slot.claims, &counts) {
                    return Ok(Some(refused));
                }
                sqlx::query(
                    "INSERT INTO keymeter_slots (scope, slot_id, expires_at) \
                     SELECT s, $2, now() + make_interval(secs => $3) FROM UNNEST($1::text[]) AS t(s) \
                     ON CONFLICT (scope, slot_id) DO UPDATE SET expires_at = excluded.expires_at",
                )
                .bind(&locked)
                .bind(&slot.id)
                .bind(seconds(ttl))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                Ok(None)
            }
            .await
        })
    }

    async fn renew(
        &self,
        slots: &[Slot],
        _now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
        sqlx::query(
            "UPDATE keymeter_slots SET expires_at = now() + make_interval(secs => $2) WHERE slot_id = ANY($1)",
        )
        .bind(&ids)
        .bind(seconds(ttl))
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn release(&self, slot: &Slot) -> Result<()> {
        sqlx::query("DELETE FROM keymeter_slots WHERE slot_id = $1")
            .bind(&slot.id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn in_flight(&self, scopes: &[LimitScope], _now: DateTime<Utc>) -> Result<Vec<u64>> {
        let names: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT scope, COUNT(*) FROM keymeter_slots WHERE scope = ANY($1) AND expires_at > now() GROUP BY scope",
        )
        .bind(&names)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        Ok(names
            .iter()
            .map(|s| {
                rows.iter()
                    .find(|(scope, _)| scope == s)
                    .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
            })
            .collect())
    }
}
