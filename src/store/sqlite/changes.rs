//! The SQLite [`KeyChangeFeed`]: reads the change table the key table's triggers fill (migration 0007).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use super::db;
use crate::error::Result;
use crate::keys::changes::{KeyChangeFeed, KeyChanges};

/// Changes after `cursor`, the last sequence number this feed has seen.
#[derive(Debug)]
pub(super) struct SqliteKeyFeed {
    pool: SqlitePool,
    cursor: tokio::sync::Mutex<i64>,
}

impl SqliteKeyFeed {
    /// A feed starting from now.
    pub(super) async fn new(pool: SqlitePool) -> Result<Self> {
        let cursor = newest(&pool).await?;
        Ok(SqliteKeyFeed {
            pool,
            cursor: tokio::sync::Mutex::new(cursor),
        })
    }
}

async fn newest(pool: &SqlitePool) -> Result<i64> {
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM keymeter_key_changes")
        .fetch_one(pool)
        .await
        .map_err(db)
}

#[async_trait]
impl KeyChangeFeed for SqliteKeyFeed {
    async fn poll(&self) -> Result<KeyChanges> {
        let mut cursor = self.cursor.lock().await;
        let rows = sqlx::query(
            "SELECT seq, key_id, (SELECT MIN(seq) FROM keymeter_key_changes) AS oldest \
             FROM keymeter_key_changes WHERE seq > ?1 ORDER BY seq",
        )
        .bind(*cursor)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let Some(first) = rows.first() else {
            return Ok(KeyChanges::Keys(Vec::new()));
        };
        // Sequence numbers are consecutive (AUTOINCREMENT, one writer at a time): a gap after the cursor means
        // the rows were pruned before this feed read them.
        let oldest: i64 = first.try_get("oldest").map_err(db)?;
        if oldest > *cursor + 1 && *cursor > 0 {
            *cursor = newest(&self.pool).await?;
            return Ok(KeyChanges::Lost);
        }
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            *cursor = row.try_get("seq").map_err(db)?;
            ids.push(row.try_get("key_id").map_err(db)?);
        }
        Ok(KeyChanges::Keys(ids))
    }
}
