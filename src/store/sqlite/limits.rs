//! [`LimitStore`] and [`RateLimiter`] on SQLite: a check is one `BEGIN IMMEDIATE` transaction that reads the
//! buckets, decides with [`gcra`], and writes them back, so processes sharing the file never both take the last
//! unit.

use async_trait::async_trait;

use super::{SqliteStore, db};
use crate::error::Result;
use crate::limits::{
    BucketStore, Charge, Decision, LimitScope, LimitStore, Limits, RateLimiter, gcra,
};
use crate::store::sql::{limits_of, models_text, quotas_text};

async fn load(tx: &mut super::Tx, charges: &[Charge]) -> Result<Vec<Option<i64>>> {
    let mut states = Vec::with_capacity(charges.len());
    for c in charges {
        let tat =
            sqlx::query_scalar::<_, i64>("SELECT tat FROM keymeter_rate_buckets WHERE bucket = ?1")
                .bind(&c.bucket)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?;
        states.push(tat);
    }
    Ok(states)
}

async fn save(tx: &mut super::Tx, bucket: &str, tat: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO keymeter_rate_buckets (bucket, tat) VALUES (?1, ?2) \
         ON CONFLICT (bucket) DO UPDATE SET tat = excluded.tat",
    )
    .bind(bucket)
    .bind(tat)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl LimitStore for SqliteStore {
    async fn set_limits(&self, scope: &LimitScope, limits: &Limits) -> Result<()> {
        scope.validate()?;
        limits.validate()?;
        let query = if limits.is_empty() {
            sqlx::query("DELETE FROM keymeter_limits WHERE scope_kind = ?1 AND scope_id = ?2")
        } else {
            sqlx::query(
                "INSERT INTO keymeter_limits (scope_kind, scope_id, requests, tokens, models, max_parallel) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (scope_kind, scope_id) DO UPDATE SET requests = excluded.requests, tokens = excluded.tokens, \
                 models = excluded.models, max_parallel = excluded.max_parallel",
            )
        };
        query
            .bind(scope.kind())
            .bind(scope.id())
            .bind(quotas_text(&limits.requests))
            .bind(quotas_text(&limits.tokens))
            .bind(models_text(&limits.models))
            .bind(limits.max_parallel.map(i64::from))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn limits(&self, scopes: &[LimitScope]) -> Result<Vec<Limits>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT scope_kind, scope_id, requests, tokens, models, CAST(max_parallel AS TEXT) AS max_parallel \
             FROM keymeter_limits WHERE ",
        );
        for i in 0..scopes.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(scope_kind = ?{} AND scope_id = ?{})",
                2 * i + 1,
                2 * i + 2
            ));
        }
        // On the calling thread when it can: every request reads these, twice (its request and token limits).
        if let Some(points) = &self.points {
            let values: Vec<&str> = scopes.iter().flat_map(|s| [s.kind(), s.id()]).collect();
            let params: Vec<&dyn rusqlite::ToSql> =
                values.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
            if let Some(rows) = points.text_rows(&sql, &params) {
                return limits_of(scopes, &rows?);
            }
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in scopes {
            query = query.bind(s.kind()).bind(s.id());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db)?;
        limits_of(scopes, &rows)
    }
}

#[async_trait]
impl RateLimiter for SqliteStore {
    async fn check(&self, charges: &[Charge], now: i64) -> Result<Decision> {
        if charges.is_empty() {
            return Ok(Decision::UNLIMITED);
        }
        immediate!(self, tx => {
            async {
                let states = load(tx, charges).await?;
                let (decision, tats) = gcra::decide_all(&states, now, charges);
                for (c, tat) in charges.iter().zip(tats) {
                    save(tx, &c.bucket, tat).await?;
                }
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

// Rows per statement when saving states: 2 parameters each, well under SQLite's parameter limit.
const SAVE_CHUNK: usize = 500;

#[async_trait]
impl BucketStore for SqliteStore {
    async fn bucket_states(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query_as::<_, (String, i64)>(
            "SELECT bucket, tat FROM keymeter_rate_buckets WHERE tat > ?1",
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
        immediate!(self, tx => {
            async {
                for chunk in states.chunks(SAVE_CHUNK) {
                    let mut sql = String::from("INSERT INTO keymeter_rate_buckets (bucket, tat) VALUES ");
                    for i in 0..chunk.len() {
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(&format!("(?{}, ?{})", 2 * i + 1, 2 * i + 2));
                    }
                    sql.push_str(" ON CONFLICT (bucket) DO UPDATE SET tat = excluded.tat");
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (bucket, tat) in chunk {
                        query = query.bind(bucket).bind(*tat);
                    }
                    query.execute(&mut **tx).await.map_err(db)?;
                }
                Ok(())
            }
            .await
        })
    }
}

/// A change to a bucket whatever it holds: [`gcra::force`] or [`gcra::refund`].
type Rule = fn(Option<i64>, i64, &crate::limits::Quota, u64) -> i64;

impl SqliteStore {
    async fn apply(&self, charges: &[Charge], now: i64, rule: Rule) -> Result<()> {
        if charges.is_empty() {
            return Ok(());
        }
        immediate!(self, tx => {
            async {
                let states = load(tx, charges).await?;
                for (c, tat) in charges.iter().zip(states) {
                    save(tx, &c.bucket, rule(tat, now, &c.quota, c.cost)).await?;
                }
                Ok(())
            }
            .await
        })
    }
}
