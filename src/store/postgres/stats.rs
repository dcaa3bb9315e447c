//! [`StatsStore`] on PostgreSQL: a flush is one transaction adding every delta and moving `last_used_at` forward.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::{PostgresStore, corrupt, db};
use crate::error::Result;
use crate::keys::VerdictCode;
use crate::stats::{Counts, StatsDelta, StatsStore};
use crate::store::sql::{Columns, day_counts};

#[async_trait]
impl StatsStore for PostgresStore {
    async fn add_stats(&self, deltas: &[StatsDelta]) -> Result<()> {
        let (mut keys, mut days, mut codes, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut used_keys, mut used_at): (Vec<&str>, Vec<DateTime<Utc>>) =
            (Vec::new(), Vec::new());
        for d in deltas {
            for code in VerdictCode::ALL {
                let n = d.counts[code.index()];
                if n > 0 {
                    keys.push(d.key_id.as_str());
                    days.push(d.day);
                    codes.push(code.as_str());
                    counts.push(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            if let Some(at) = d.last_used_at {
                used_keys.push(&d.key_id);
                used_at.push(at);
            }
        }
        if keys.is_empty() && used_keys.is_empty() {
            return Ok(());
        }
        transaction!(self, tx => {
            async {
                // Summed per (key, day, code) first: one statement may not touch a row twice.
                sqlx::query(
                    "INSERT INTO keymeter_key_stats (key_id, day, code, count) \
                     SELECT k, d, c, SUM(n) FROM UNNEST($1::text[], $2::date[], $3::text[], $4::bigint[]) AS t(k, d, c, n) \
                     GROUP BY k, d, c ORDER BY k, d, c \
                     ON CONFLICT (key_id, day, code) DO UPDATE SET count = keymeter_key_stats.count + excluded.count",
                )
                .bind(&keys)
                .bind(&days)
                .bind(&codes)
                .bind(&counts)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                sqlx::query(
                    "UPDATE keymeter_api_keys AS k SET last_used_at = u.at \
                     FROM (SELECT id, MAX(at) AS at FROM UNNEST($1::text[], $2::timestamptz[]) AS t(id, at) GROUP BY id) AS u \
                     WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                )
                .bind(&used_keys)
                .bind(&used_at)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                Ok(())
            }
            .await
        })
    }

    async fn key_stats(&self, key_id: &str, since: NaiveDate) -> Result<Vec<(NaiveDate, Counts)>> {
        let rows = sqlx::query(
            "SELECT day, code, count FROM keymeter_key_stats WHERE key_id = $1 AND day >= $2 ORDER BY day",
        )
        .bind(key_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let rows = rows
            .iter()
            .map(|row| {
                let day: NaiveDate = row.try_get("day").map_err(db)?;
                let code = VerdictCode::from_name(&row.text("code")?)
                    .ok_or_else(|| corrupt("verdict code"))?;
                let n = u64::try_from(row.try_get::<i64, _>("count").map_err(db)?)
                    .map_err(|_| corrupt("count"))?;
                Ok((day, code, n))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(day_counts(rows))
    }
}
