//! keymeter's own migration runner for SQLite.
//!
//! The migrations are embedded; `keymeter_migrations` records which ran, with a checksum of each. The whole run
//! is one `BEGIN IMMEDIATE` transaction (SQLite's DDL is transactional), so processes starting together on a new
//! database serialise on the write lock: the first applies everything, the others find it done. sqlx's own
//! migrator is not used: it would share the application's `_sqlx_migrations` table, and on SQLite it takes no
//! lock.

use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use super::{SqliteError, db, is_busy};
use crate::error::Result;
use crate::store::sql::{Migration, MigrationMismatch, checksum, pending};

/// keymeter's SQLite migrations: version, name, SQL. Append only; never edit one that shipped.
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "api_keys",
        include_str!("../../../migrations/sqlite/0001_api_keys.sql"),
    ),
    (
        2,
        "credentials",
        include_str!("../../../migrations/sqlite/0002_credentials.sql"),
    ),
    (
        3,
        "ledger",
        include_str!("../../../migrations/sqlite/0003_ledger.sql"),
    ),
    (
        4,
        "key_rotation",
        include_str!("../../../migrations/sqlite/0004_key_rotation.sql"),
    ),
    (
        5,
        "rate_limits",
        include_str!("../../../migrations/sqlite/0005_rate_limits.sql"),
    ),
    (
        6,
        "key_stats",
        include_str!("../../../migrations/sqlite/0006_key_stats.sql"),
    ),
    (
        7,
        "key_changes",
        include_str!("../../../migrations/sqlite/0007_key_changes.sql"),
    ),
    (
        8,
        "usage_rollups",
        include_str!("../../../migrations/sqlite/0008_usage_rollups.sql"),
    ),
    (
        9,
        "pruned_requests",
        include_str!("../../../migrations/sqlite/0009_pruned_requests.sql"),
    ),
    (
        10,
        "estimated_events",
        include_str!("../../../migrations/sqlite/0010_estimated_events.sql"),
    ),
    (
        11,
        "request_claims",
        include_str!("../../../migrations/sqlite/0011_request_claims.sql"),
    ),
    (
        12,
        "key_creations",
        include_str!("../../../migrations/sqlite/0012_key_creations.sql"),
    ),
    (
        13,
        "lapsing_claims",
        include_str!("../../../migrations/sqlite/0013_lapsing_claims.sql"),
    ),
    (
        14,
        "model_allowlists",
        include_str!("../../../migrations/sqlite/0014_model_allowlists.sql"),
    ),
    (
        15,
        "concurrency_slots",
        include_str!("../../../migrations/sqlite/0015_concurrency_slots.sql"),
    ),
    (
        16,
        "key_tags",
        include_str!("../../../migrations/sqlite/0016_key_tags.sql"),
    ),
    (
        17,
        "event_attribution",
        include_str!("../../../migrations/sqlite/0017_event_attribution.sql"),
    ),
    (
        18,
        "alerts",
        include_str!("../../../migrations/sqlite/0018_alerts.sql"),
    ),
    (
        19,
        "key_creators",
        include_str!("../../../migrations/sqlite/0019_key_creators.sql"),
    ),
    (
        20,
        "credential_version",
        include_str!("../../../migrations/sqlite/0020_credential_version.sql"),
    ),
];

/// The migration that creates the report rollups: when it runs, the events already stored are rolled up.
const ROLLUPS: i64 = 8;

/// Brings keymeter's tables in the database behind `pool` up to date. Safe to call from many processes at once,
/// and on a database that also holds the application's own tables and sqlx migrations.
///
/// # Errors
/// [`crate::Error::Store`] when the database cannot be written, a migration that already ran was changed, or the
/// database was migrated by a newer keymeter.
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut attempt = 0u32;
    loop {
        match migrate_once(pool).await {
            // The busy timeout covers most waits; a lock upgrade that SQLite refuses outright is retried.
            Err(e) if is_busy(&e) && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn migrate_once(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS keymeter_migrations (version INTEGER PRIMARY KEY NOT NULL, \
         name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (datetime('now')))",
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let applied = sqlx::query("SELECT version, checksum FROM keymeter_migrations ORDER BY version")
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
    let applied = applied
        .iter()
        .map(|row| {
            Ok((
                row.try_get("version").map_err(db)?,
                row.try_get("checksum").map_err(db)?,
            ))
        })
        .collect::<Result<Vec<(i64, String)>>>()?;
    let pending = pending(MIGRATIONS, &applied).map_err(|m| match m {
        MigrationMismatch::Changed(version) => SqliteError::MigrationChanged { version },
        MigrationMismatch::Unknown(version) => SqliteError::MigrationUnknown { version },
    })?;
    let migrated = !pending.is_empty();
    for (version, name, sql) in pending {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO keymeter_migrations (version, name, checksum) VALUES (?1, ?2, ?3)",
        )
        .bind(version)
        .bind(name)
        .bind(checksum(sql))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if *version == ROLLUPS {
            super::rollup::rebuild(&mut tx, i64::MIN, i64::MAX).await?;
        }
    }
    if migrated {
        // A statement this connection prepared before a migration altered its table keeps the old columns in
        // sqlx's cache: drop them before the connection serves anything else.
        sqlx::Connection::clear_cached_statements(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
