//! [`SlotStore`] on SQLite: an acquire is one `BEGIN IMMEDIATE` transaction that drops the lapsed slots of its
//! scopes, counts the live ones and inserts, so processes sharing the file never both take the last slot.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{SqliteStore, db, micros};
use crate::error::Result;
use crate::limits::slots::first_full;
use crate::limits::{LimitScope, Slot, SlotRefusal, SlotStore};

#[async_trait]
impl SlotStore for SqliteStore {
    async fn acquire(
        &self,
        slot: &Slot,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<SlotRefusal>> {
        let (now, until) = (micros(now), micros(now + ttl));
        immediate!(self, tx => {
            async {
                let mut counts = Vec::with_capacity(slot.claims.len());
                for claim in &slot.claims {
                    let scope = claim.scope.to_string();
                    sqlx::query("DELETE FROM keymeter_slots WHERE scope = ?1 AND expires_at <= ?2")
                        .bind(&scope)
                        .bind(now)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keymeter_slots WHERE scope = ?1")
                        .bind(&scope)
                        .fetch_one(&mut **tx)
                        .await
                        .map_err(db)?;
                    counts.push(u64::try_from(n).unwrap_or(0));
                }
                if let Some(refused) = first_full(&slot.claims, &counts) {
                    return Ok(Some(refused));
                }
                for claim in &slot.claims {
                    sqlx::query(
                        "INSERT INTO keymeter_slots (scope, slot_id, expires_at) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (scope, slot_id) DO UPDATE SET expires_at = excluded.expires_at",
                    )
                    .bind(claim.scope.to_string())
                    .bind(&slot.id)
                    .bind(until)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                }
                Ok(None)
            }
            .await
        })
    }

    async fn renew(&self, slots: &[Slot], now: DateTime<Utc>, ttl: chrono::Duration) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(&slots.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        let until = micros(now + ttl);
        immediate!(self, tx => {
            sqlx::query(
                "UPDATE keymeter_slots SET expires_at = ?1 \
                 WHERE slot_id IN (SELECT value FROM json_each(?2))",
            )
            .bind(until)
            .bind(&ids)
            .execute(&mut **tx)
            .await
            .map_err(db)
            .map(|_| ())
        })
    }

    async fn release(&self, slot: &Slot) -> Result<()> {
        immediate!(self, tx => {
            sqlx::query("DELETE FROM keymeter_slots WHERE slot_id = ?1")
                .bind(&slot.id)
                .execute(&mut **tx)
                .await
                .map_err(db)
                .map(|_| ())
        })
    }

    async fn in_flight(&self, scopes: &[LimitScope], now: DateTime<Utc>) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM keymeter_slots WHERE scope = ?1 AND expires_at > ?2",
            )
            .bind(scope.to_string())
            .bind(micros(now))
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
            out.push(u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }
}
