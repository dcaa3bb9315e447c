//! The PostgreSQL backend (feature `postgres`): the shared store when a service runs on several machines.
//!
//! Every instance points at the same database. Writes that must be atomic are one transaction each: reserve takes
//! the budget rows' locks in one fixed order (so two instances never deadlock and never both take the last of a
//! budget), a rate-limit check locks its buckets the same way, and key creation serialises on an advisory lock.
//! Amounts are `NUMERIC` (exact); times `timestamptz`. keymeter's tables are all named `keymeter_…`; its
//! migrations keep their own bookkeeping table (`keymeter_migrations`) and run under an advisory lock, so
//! instances starting together on a new database are safe. A host that owns its pool calls [`migrate`] and
//! [`PostgresStore::from_pool`].
//!
//! ```no_run
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use keymeter::store::PostgresStore;
//!
//! let store = PostgresStore::connect("postgres://keymeter@127.0.0.1/keymeter").await?;
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

/// Runs `$body` (a block using `$tx: &mut Tx`, which may `.await`) in a transaction and commits it, running it
/// again when PostgreSQL aborts it as a deadlock or serialization failure.
macro_rules! transaction {
    ($store:expr, $tx:ident => $body:block) => {{
        let mut attempt = 0u32;
        loop {
            let result: Result<_> = async {
                let mut transaction: super::Tx = $store.pool().begin().await.map_err(db)?;
                let outcome: Result<_> = {
                    let $tx: &mut super::Tx = &mut transaction;
                    $body
                };
                let value = outcome?;
                transaction.commit().await.map_err(db)?;
                Ok(value)
            }
            .await;
            match result {
                Err(e) if super::is_conflict(&e) && attempt < super::CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2 * u64::from(attempt)))
                        .await;
                }
                other => break other,
            }
        }
    }};
}

mod changes;
mod credentials;
mod keys;
mod lease;
mod ledger;
mod limits;
mod migrate;
mod outbox;
mod slots;
mod stats;

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::random::{OsRandom, RandomSource};
use crate::store::sql::Columns;

pub use migrate::migrate;

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// How often a transaction that PostgreSQL aborted as a deadlock or serialization failure is tried again.
const CONFLICT_RETRIES: u32 = 10;

/// What can go wrong inside the PostgreSQL backend. Private: callers see [`Error::Store`] (or a more precise
/// variant), never sqlx's types.
#[derive(Debug, thiserror::Error)]
enum PgError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("stored row has an invalid {0}")]
    Corrupt(&'static str),
    #[error("keymeter migration {version} was changed after it was applied (checksum differs)")]
    MigrationChanged { version: i64 },
    #[error(
        "the database has keymeter migration {version}, newer than this build knows: upgrade keymeter"
    )]
    MigrationUnknown { version: i64 },
}

impl PgError {
    /// SQLSTATE 40001 (serialization failure) or 40P01 (deadlock detected): the transaction may be run again.
    fn is_conflict(&self) -> bool {
        match self {
            PgError::Db(e) => e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "40001" || c == "40P01"),
            _ => false,
        }
    }
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Self {
        Error::Store {
            store: "postgres",
            source: Box::new(e),
        }
    }
}

fn is_conflict(e: &Error) -> bool {
    match e {
        Error::Store { source, .. } => source
            .downcast_ref::<PgError>()
            .is_some_and(PgError::is_conflict),
        _ => false,
    }
}

fn db(e: sqlx::Error) -> Error {
    PgError::Db(e).into()
}

fn corrupt(what: &'static str) -> Error {
    PgError::Corrupt(what).into()
}

impl Columns for PgRow {
    fn text(&self, column: &str) -> Result<String> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn flag(&self, column: &str) -> Result<bool> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn opt_flag(&self, column: &str) -> Result<Option<bool>> {
        match sqlx::Row::try_get(self, column) {
            Ok(v) => Ok(Some(v)),
            Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
            Err(e) => Err(db(e)),
        }
    }
    fn opt_text_if_present(&self, column: &str) -> Result<Option<String>> {
        match sqlx::Row::try_get(self, column) {
            Ok(v) => Ok(v),
            Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
            Err(e) => Err(db(e)),
        }
    }
    fn opt_decimal(&self, column: &str) -> Result<Option<Decimal>> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn corrupt(&self, what: &'static str) -> Error {
        corrupt(what)
    }
}

/// A store in a PostgreSQL database. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?options]`) and runs keymeter's
    /// migrations.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL (the message never repeats the URL, which may hold a password);
    /// [`Error::Store`] when the database cannot be reached or migrated.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|_| {
            Error::Config(
                "invalid PostgreSQL URL: use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
                    .into(),
            )
        })?;
        PostgresStore::connect_with(options, 10).await
    }

    /// Connects with explicit options and pool size, and runs keymeter's migrations.
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be reached or migrated.
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // While the server is down sqlx keeps retrying a refused connect until this deadline: a call then
            // fails within 2 s (a 503 for a service) instead of hanging for sqlx's default 30 s.
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_with(options)
            .await
            .map_err(db)?;
        migrate(&pool).await?;
        Ok(PostgresStore::from_pool(pool))
    }

    /// A store on a pool the application owns, already migrated with [`migrate`]. keymeter only touches its own
    /// `keymeter_…` tables.
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresStore {
            pool,
            clock: Arc::new(SystemClock),
            random: Arc::new(OsRandom),
        }
    }

    /// Injects the clock (credential timestamps).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Injects the random source (reservation ids).
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// A feed of the key changes any process makes in this database (see [`crate::keys::changes`]).
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be read or the listener cannot connect.
    pub async fn key_changes(&self) -> Result<impl crate::keys::changes::KeyChangeFeed + use<>> {
        changes::PgKeyFeed::new(&self.pool).await
    }

    /// The connection pool, for callers that keep their own tables beside keymeter's.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One trivial query through the pool: whether the server answers now.
    ///
    /// # Errors
    /// [`Error::Store`] when it does not.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db)
    }
}
