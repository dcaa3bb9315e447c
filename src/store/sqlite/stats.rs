//! [`StatsStore`] on SQLite: a flush is one transaction adding every delta and moving `last_used_at` forward.

use async_trait::async_trait;
use chrono::NaiveDate;
use sqlx::Row;

use super::{SqliteStore, corrupt, db, micros};
use crate::error::Result;
use crate::keys::VerdictCode;
use crate::stats::{Counts, StatsDelta, StatsStore};
use crate::store::sql::day_counts;

#[async_trait]
impl StatsStore for SqliteStore {
    async fn add_stats(&self, deltas: &[StatsDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        immediate!(self, tx => {
            async {
                for d in deltas {
                    let day = d.day.to_string();
                    for code in VerdictCode::ALL {
                        let n = d.counts[code.index()];
                        if n == 0 {
                            continue;
                        }
                        sqlx::query(
                            "INSERT INTO keymeter_key_stats (key_id, day, code, count) VALUES (?1, ?2, ?3, ?4) \
                             ON CONFLICT (key_id, day, code) DO UPDATE SET count = count + excluded.count",
                        )
                        .bind(&d.key_id)
                        .bind(&day)
                        .bind(code.as_str())
                        .bind(i64::try_from(n).unwrap_or(i64::MAX))
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                    }
                    if let Some(at) = d.last_used_at {
                        sqlx::query(
                            "UPDATE keymeter_api_keys SET last_used_at = ?1 \
                             WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
                        )
                        .bind(micros(at))
                        .bind(&d.key_id)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                    }
                }
                Ok(())
            }
            .await
        })
    }

    async fn key_stats(&self, key_id: &str, since: NaiveDate) -> Result<Vec<(NaiveDate, Counts)>> {
        let rows = sqlx::query(
            "SELECT day, code, count FROM keymeter_key_stats WHERE key_id = ?1 AND day >= ?2 ORDER BY day",
        )
        .bind(key_id)
        .bind(since.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let rows = rows
            .iter()
            .map(|row| {
                let day: NaiveDate = row
                    .try_get::<String, _>("day")
                    .map_err(db)?
                    .parse()
                    .map_err(|_| corrupt("statistics day"))?;
                let code = VerdictCode::from_name(&row.try_get::<String, _>("code").map_err(db)?)
                    .ok_or_else(|| corrupt("verdict code"))?;
                let n = u64::try_from(row.try_get::<i64, _>("count").map_err(db)?)
                    .map_err(|_| corrupt("count"))?;
                Ok((day, code, n))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(day_counts(rows))
    }
}
