//! keymeter's own migration runner for PostgreSQL.
//!
//! The migrations are embedded; `keymeter_migrations` records which ran, with a checksum of each. The whole run
//! is one transaction (PostgreSQL's DDL is transactional) that first takes a transaction-scoped advisory lock,
//! so instances starting together on a new database serialise: the first applies everything, the others find
//! it done. sqlx's own migrator is not used: it would share the application's `_sqlx_migrations` table.

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::{PgError, db};
use crate::error::Result;
use crate::store::sql::{Migration, MigrationMismatch, checksum, pending};

/// keymeter's PostgreSQL migrations: version, name, SQL. Append only; never edit one that shipped.
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "api_keys",
        include_str!("../../../migrations/postgres/0001_api_keys.sql"),
    ),
    (
        2,
        "credentials",
        include_str!("../../../migrations/postgres/0002_credentials.sql"),
    ),
    (
        3,
        "ledger",
        include_str!("../../../migrations/postgres/0003_ledger.sql"),
    ),
    (
        4,
        "rate_limits",
        include_str!("../../../migrations/postgres/0004_rate_limits.sql"),
    ),
    (
        5,
        "key_stats",
        include_str!("../../../migrations/postgres/0005_key_stats.sql"),
    ),
    (
        6,
        "key_changes",
        include_str!("../../../migrations/postgres/0006_key_changes.sql"),
    ),
    (
        7,
        "usage_buckets",
        include_str!("../../../migrations/postgres/0007_usage_buckets.sql"),
    ),
    (
        8,
        "pruned_requests",
        include_str!("../../../migrations/postgres/0008_pruned_requests.sql"),
    ),
    (
        9,
        "estimated_events",
        include_str!("../../../migrations/postgres/0009_estimated_events.sql"),
    ),
    (
        10,
        "request_claims",
        include_str!("../../../migrations/postgres/0010_request_claims.sql"),
    ),
    (
        11,
        "key_creations",
        include_str!("../../../migrations/postgres/0011_key_creations.sql"),
    ),
    (
        12,
        "lapsing_claims",
        include_str!("../../../migrations/postgres/0012_lapsing_claims.sql"),
    ),
    (
        13,
        "model_allowlists",
        include_str!("../../../migrations/postgres/0013_model_allowlists.sql"),
    ),
    (
        14,
        "concurrency_slots",
        include_str!("../../../migrations/postgres/0014_concurrency_slots.sql"),
    ),
    (
        15,
        "key_tags",
        include_str!("../../../migrations/postgres/0015_key_tags.sql"),
    ),
    (
        16,
        "event_attribution",
        include_str!("../../../migrations/postgres/0016_event_attribution.sql"),
    ),
    (
        17,
        "alerts",
        include_str!("../../../migrations/postgres/0017_alerts.sql"),
    ),
    (
        18,
        "key_creators",
        include_str!("../../../migrations/postgres/0018_key_creators.sql"),
    ),
    (
        19,
        "credential_version",
        include_str!("../../../migrations/postgres/0019_credential_version.sql"),
    ),
];

/// The advisory lock migrations take: "keymeter" in ASCII, so it stays clear of an application's own numbers.
const MIGRATION_LOCK: i64 = 0x6b65_796d_6574_6572;

/// Brings keymeter's tables in the database behind `pool` up to date. Safe to call from many instances at once,
/// and on a database that also holds the application's own tables and sqlx migrations.
///
/// # Errors
/// [`crate::Error::Store`] when the database cannot be written, a migration that already ran was changed, or the
/// database was migrated by a newer keymeter.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS keymeter_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
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
        MigrationMismatch::Changed(version) => PgError::MigrationChanged { version },
        MigrationMismatch::Unknown(version) => PgError::MigrationUnknown { version },
    })?;
    for (version, name, sql) in pending {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO keymeter_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(name)
        .bind(checksum(sql))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
