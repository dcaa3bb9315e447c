//! [`LimitStore`] and [`RateLimiter`] on PostgreSQL: a check is one transaction that locks its buckets in name
//! order, decides with [`gcra`], and writes them back, so instances sharing the database never both take the last
//! unit and never deadlock.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::Row;

use super::{PostgresStore, db};
use crate::error::Result;
use crate::limits::{
    BucketStore, Charge, Decision, LimitScope, LimitStore, Limits, RateLimiter, gcra,
};
use crate::store::sql::{Columns, limits_of, models_text, quotas_text};

/// The buckets' states, each row locked for the rest of the transaction. A bucket seen for the first time is
/// created at 0 (no state: every time since the epoch is past it) so that it can be locked like the others.
async fn lock(tx: &mut super::Tx, charges: &[Charge]) -> Result<Vec<Option<i64>>> {
    let mut names: Vec<&str> = charges.iter().map(|c| c.bucket.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    sqlx::query(
        "INSERT INTO keymeter_rate_buckets (bucket, tat) SELECT b, 0 FROM UNNEST($1::text[]) AS b \
         ON CONFLICT (bucket) DO NOTHING",
    )
    .bind(&names)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let rows = sqlx::query(
        "SELECT bucket, tat FROM keymeter_rate_buckets WHERE bucket = ANY($1::text[]) ORDER BY bucket FOR UPDATE",
    )
    .bind(&names)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let mut tats: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for row in rows {
        tats.insert(row.text("bucket")?, row.try_get("tat").map_err(db)?);
    }
    Ok(charges
        .iter()
        .map(|c| tats.get(&c.bucket).copied().filter(|t| *t != 0))
        .collect())
}

/// Stores each charge's new state; `tats` is empty when the check was refused (nothing changes then).
async fn save(tx: &mut super::Tx, charges: &[Charge], tats: &[i64]) -> Result<()> {
    if tats.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = charges.iter().map(|c| c.bucket.as_str()).collect();
    sqlx::query(
        "UPDATE keymeter_rate_buckets AS b SET tat = n.tat FROM UNNEST($1::text[], $2::bigint[]) AS n(bucket, tat) \
         WHERE b.bucket = n.bucket",
    )
    .bind(&names)
    .bind(tats)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl LimitStore for PostgresStore {
    async fn set_limits(&self, scope: &LimitScope, limits: &Limits) -> Result<()> {
        scope.validate()?;
        limits.validate()?;
        let done = if limits.is_empty() {
            sqlx::query("DELETE FROM keymeter_limits WHERE scope_kind = $1 AND scope_id = $2")
                .bind(scope.kind())
                .bind(scope.id())
                .execute(&self.pool)
                .await
        } else {
            sqlx::query(
                "INSERT INTO keymeter_limits (scope_kind, scope_id, requests, tokens, models, max_parallel) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (scope_kind, scope_id) DO UPDATE SET requests = excluded.requests, tokens = excluded.tokens, \
                 models = excluded.models, max_parallel = excluded.max_parallel",
            )
            .bind(scope.kind())
            .bind(scope.id())
            .bind(quotas_text(&limits.requests))
            .bind(quotas_text(&limits.tokens))
            .bind(models_text(&limits.models))
            .bind(limits.max_parallel.map(|m| m as i32))
            .execute(&self.pool)
            .await
        };
        done.map_err(db)?;
        Ok(())
    }

    async fn limits(&self, scopes: &[LimitScope]) -> Result<Vec<Limits>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let (kinds, ids): (Vec<&str>, Vec<&str>) =
            scopes.iter().map(|s| (s.kind(), s.id())).unzip();
        let rows = sqlx::query(
            "SELECT scope_kind, scope_id, requests, tokens, models, max_parallel::text AS max_parallel \
             FROM keymeter_limits WHERE (scope_kind, scope_id) IN \
             (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(&kinds)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        limits_of(scopes, &rows)
    }
}

#[async_trait]
impl RateLimiter for PostgresStore {
    async fn check(&self, charges: &[Charge], now: i64) -> Result<Decision> {
        if charges.is_empty() {
            return Ok(Decision::UNLIMITED);
        }
        transaction!(self, tx => {
            async {
                let states = lock(tx, charges).await?;
                let (decision, tats) = gcra::decide_all(&states, now, charges);
                save(tx, charges, &tats).await?;
                Ok(decision)
            }
            .await
        })
    }

    async fn charge(&self, charges: &[Charge], now: i64) -> Result<()> {
        self.apply(charges, now, gcra::force).await
    }

    async fn refund(&self, charges: &[Charge], now: i64) -> Result<()> {
        self.apply(charges, now, gcra::refund).await
    }
}

/// A change to a bucket whatever it holds: [`gcra::force`] or [`gcra::refund`].
type Rule = fn(Option<i64>, i64, &crate::limits::Quota, u64) -> i64;

impl PostgresStore {
    async fn apply(&self, charges: &[Charge], now: i64, rule: Rule) -> Result<()> {
        if charges.is_empty() {
            return Ok(());
        }
        transaction!(self, tx => {
            async {
                let states = lock(tx, charges).await?;
                let tats: Vec<i64> = charges
                    .iter()
                    .zip(states)
                    .map(|(c, tat)| rule(tat, now, &c.quota, c.cost))
                    .collect();
                save(tx, charges, &tats).await
            }
            .await
        })
    }
}

#[async_trait]
impl BucketStore for PostgresStore {
    async fn bucket_states(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query_as::<_, (String, i64)>(
            "SELECT bucket, tat FROM keymeter_rate_buckets WHERE tat > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows)
    }

    async fn save_bucket_states(&self, states: &[(String, i64)]) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = states.iter().map(|(b, _)| b.as_str()).collect();
        let tats: Vec<i64> = states.iter().map(|(_, t)| *t).collect();
        // One statement: atomic without a transaction.
        sqlx::query(
            "INSERT INTO keymeter_rate_buckets (bucket, tat) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (bucket) DO UPDATE SET tat = excluded.tat",
        )
        .bind(&names)
        .bind(&tats)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}
