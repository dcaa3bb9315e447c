//! The SQLite backend (feature `sqlite`): the embedded default for one machine.
//!
//! Opens the database in WAL mode with a busy timeout, so readers never block the writer and concurrent writers
//! (other processes included) wait their turn instead of failing. A key read by id (the cold verify path) runs on
//! the calling thread through a few read-only `rusqlite` connections to the same file, without sqlx's hand-off to
//! a worker thread; it never waits (a busy database sends it through the pool). keymeter's tables are all named `keymeter_…`
//! and its migrations keep their own bookkeeping table (`keymeter_migrations`, never the application's
//! `_sqlx_migrations`), so a host application can keep its own sqlx-migrated tables in the same database, in
//! either order. [`SqliteStore::connect`] migrates; a host that owns its pool calls [`migrate`] and
//! [`SqliteStore::from_pool`].
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use keymeter::store::SqliteStore;
//! use sqlx::sqlite::SqlitePoolOptions;
//!
//! // The host's own pool (one connection: each `:memory:` connection is its own database).
//! let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
//! sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY)").execute(&pool).await.unwrap();
//! keymeter::store::sqlite::migrate(&pool).await?;
//! let store = SqliteStore::from_pool(pool);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

/// How often a transaction that hit `SQLITE_BUSY` despite the busy timeout is tried again.
const BUSY_RETRIES: u32 = 20;

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Runs `$body` (a block using `$tx: &mut Tx`, which may `.await`) in a `BEGIN IMMEDIATE` transaction and
/// commits it, retrying the whole of it while the database is busy. One write transaction of this store at a time
/// (an in-process lock in front of SQLite's): the process's writers queue here instead of meeting in SQLite's
/// sleeping busy handler. A macro rather than a closure so the body may borrow the caller's arguments.
macro_rules! immediate {
    ($store:expr, $tx:ident => $body:block) => {{
        let mut attempt = 0u32;
        loop {
            let _writer = $store.writer.lock().await;
            let result: Result<_> = async {
                let mut transaction: super::Tx = $store
                    .pool()
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db)?;
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
                Err(e) if super::is_busy(&e) && attempt < super::BUSY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)))
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
mod point;
mod reserve;
mod rollup;
mod slots;
mod stats;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::random::{OsRandom, RandomSource};

pub use migrate::migrate;

/// What can go wrong inside the SQLite backend. Private: callers see [`Error::Store`] (or a more precise
/// variant such as [`Error::AlreadyExists`]), never sqlx's types.
#[derive(Debug, thiserror::Error)]
enum SqliteError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Point(rusqlite::Error),
    #[error("stored row has an invalid {0}")]
    Corrupt(&'static str),
    #[error("keymeter migration {version} was changed after it was applied (checksum differs)")]
    MigrationChanged { version: i64 },
    #[error(
        "the database has keymeter migration {version}, newer than this build knows: upgrade keymeter"
    )]
    MigrationUnknown { version: i64 },
}

impl SqliteError {
    /// SQLITE_BUSY (5) or SQLITE_LOCKED (6), with any extended code.
    fn is_busy(&self) -> bool {
        match self {
            SqliteError::Db(e) => e
                .as_database_error()
                .and_then(|d| d.code())
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
            _ => false,
        }
    }
}

impl From<SqliteError> for Error {
    fn from(e: SqliteError) -> Self {
        Error::Store {
            store: "sqlite",
            source: Box::new(e),
        }
    }
}

/// Whether `e` is a SQLite "database is busy/locked" error (worth retrying).
fn is_busy(e: &Error) -> bool {
    match e {
        Error::Store { source, .. } => source
            .downcast_ref::<SqliteError>()
            .is_some_and(SqliteError::is_busy),
        _ => false,
    }
}

fn db(e: sqlx::Error) -> Error {
    SqliteError::Db(e).into()
}

fn corrupt(what: &'static str) -> Error {
    SqliteError::Corrupt(what).into()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    v.map(|m| DateTime::from_timestamp_micros(m).ok_or_else(|| corrupt("timestamp")))
        .transpose()
}

impl crate::store::sql::Columns for sqlx::sqlite::SqliteRow {
    fn text(&self, column: &str) -> Result<String> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        sqlx::Row::try_get(self, column).map_err(db)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        from_micros(sqlx::Row::try_get(self, column).map_err(db)?)
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
    /// Amounts are exact decimal strings: SQLite has no exact decimal type.
    fn opt_decimal(&self, column: &str) -> Result<Option<rust_decimal::Decimal>> {
        decimal_text(self.opt_text(column)?)
    }
    fn corrupt(&self, what: &'static str) -> Error {
        corrupt(what)
    }
}

/// An amount stored as its exact decimal string.
fn decimal_text(text: Option<String>) -> Result<Option<rust_decimal::Decimal>> {
    text.map(|t| t.parse().map_err(|_| corrupt("decimal amount")))
        .transpose()
}

/// Creates a missing database file empty with mode 0600, so the database and the `-wal`/`-shm` files SQLite
/// makes beside it (it gives them the database file's mode) are never readable by other users. An existing
/// file is left as it is.
fn create_private(path: &std::path::Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Config(format!(
            "cannot create the SQLite database {}: {e}; create its directory first or use a path in a directory that exists",
            path.display()
        ))),
    }
}

/// A store in a SQLite database. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Key reads by id without the pool's thread hand-off, when the database is a file.
    points: Option<Arc<point::PointReads>>,
    /// Reservations in one hand-off to a blocking thread (a database file only).
    reserver: Option<Arc<reserve::Reserver>>,
    /// Held across each write transaction: one writer per process.
    writer: Arc<tokio::sync::Mutex<()>>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path/to.db`, `sqlite:path`, or
    /// `sqlite::memory:`) and runs keymeter's migrations.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL; [`Error::Store`] when the database cannot be opened or migrated.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url).map_err(|_| {
            Error::Config("invalid SQLite URL: use sqlite://PATH or sqlite::memory:".into())
        })?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            create_private(options.get_filename())?;
        }
        // Each connection to `:memory:` is its own database: keep one.
        let max = if in_memory { 1 } else { 8 };
        SqliteStore::connect_with(options, max).await
    }

    /// Opens with explicit options and pool size, and runs keymeter's migrations. Unlike [`SqliteStore::connect`],
    /// it does not create a missing database file with mode 0600 first: SQLite creates it with the process's
    /// umask.
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be opened or migrated.
    pub async fn connect_with(options: SqliteConnectOptions, max_connections: u32) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // Reads through a shared memory map and a larger page cache keep busy ledgers out of read/write
            // syscalls (profiling showed half the batch-insert time in the kernel with the defaults).
            .pragma("mmap_size", "268435456")
            // A writer's working set is the leaves of every index it inserts into (request ids are random): at
            // 16 MiB an import of 10,000 events spent its time re-reading evicted pages (15,900 → 20,200 events/s
            // at 64 MiB). Pages are allocated as a connection touches them, not up front.
            .pragma("cache_size", "-65536")
            // A batch of 5,000 events dirties more than the default 1,000-page checkpoint interval, so every
            // commit paid a checkpoint (copy and fsync) of pages the next batch dirtied again; at 8,192 pages
            // (32 MiB of WAL) a page is copied once for several batches (import 20,800 → 26,000 events/s). A file
            // database is checkpointed in the background instead (below): no commit pays for one.
            .pragma("wal_autocheckpoint", "8192")
            // After a checkpoint the WAL is cut back to 16 MiB instead of keeping its largest size for good.
            .pragma("journal_size_limit", "16777216");
        let in_memory = options
            .get_filename()
            .to_string_lossy()
            .contains(":memory:");
        let options = if in_memory {
            options
        } else {
            options.pragma("wal_autocheckpoint", "0")
        };
        let mut pool = SqlitePoolOptions::new().max_connections(max_connections.max(1));
        if !in_memory {
            // A transaction SQLite ended by itself (SQLITE_FULL, SQLITE_IOERR) leaves sqlx counting it as open, and
            // every later BEGIN on that connection fails: such a connection is closed instead of reused, so the
            // store recovers as soon as the disk has room again.
            pool = pool.before_acquire(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            });
        }
        let pool = pool.connect_with(options).await.map_err(db)?;
        migrate(&pool).await?;
        let wal = {
            let mut name = pool.connect_options().get_filename().as_os_str().to_owned();
            name.push("-wal");
            std::path::PathBuf::from(name)
        };
        let store = SqliteStore::from_pool(pool);
        if !in_memory {
            tokio::spawn(checkpoints(
                store.pool.clone(),
                Arc::downgrade(&store.writer),
                wal,
            ));
        }
        Ok(store)
    }

    /// A store on a pool the application owns, already migrated with [`migrate`]. keymeter only touches its own
    /// `keymeter_…` tables. For concurrent writers, the pool's connections should have a busy timeout (sqlx's
    /// default is 5 s) and the database WAL mode. When the pool's database is a file, keys are read by id on
    /// the calling thread through connections of keymeter's own (see the module docs).
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore {
            points: point::PointReads::new(pool.connect_options().get_filename()).map(Arc::new),
            reserver: reserve::Reserver::new(pool.connect_options().get_filename()).map(Arc::new),
            writer: Arc::new(tokio::sync::Mutex::new(())),
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
    /// [`Error::Store`] when the database cannot be read.
    pub async fn key_changes(&self) -> Result<impl crate::keys::changes::KeyChangeFeed + use<>> {
        changes::SqliteKeyFeed::new(self.pool.clone()).await
    }

    /// The connection pool, for callers that keep their own tables beside keymeter's.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }

    /// One trivial query through the pool: whether the database answers now.
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

/// How often the background checkpoint runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// The WAL size past which the background checkpoint also restarts the WAL from its beginning.
const WAL_BOUND: u64 = 16 << 20;

/// Keeps the WAL small without any commit on the request path paying for a checkpoint. Every
/// [`CHECKPOINT_EVERY`] a passive checkpoint copies the WAL into the database (it never waits for, nor blocks, a
/// writer). Under steady load some reader always holds a snapshot, so the WAL never restarts by itself and would
/// grow without end: past [`WAL_BOUND`] a `TRUNCATE` checkpoint, taken under the store's writer lock (so the
/// process's writers queue in process, not in SQLite's sleeping busy handler), waits for the readers of the moment
/// and empties it; the copy was already done, so the writers wait only for that. Ends when the store is dropped or
/// closed.
async fn checkpoints(
    pool: SqlitePool,
    writer: std::sync::Weak<tokio::sync::Mutex<()>>,
    wal: std::path::PathBuf,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(lock) = writer.upgrade() else {
            return;
        };
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "SQLite background checkpoint failed; the next one retries");
            continue;
        }
        if !std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_BOUND) {
            continue;
        }
        // The writer lock first, then a connection: the order of every write transaction, so the two never wait
        // for each other.
        let _writer = lock.lock().await;
        let Ok(mut conn) = pool.acquire().await else {
            continue;
        };
        // Wait for the readers of the moment at most 200 ms (a long report may hold its snapshot for longer: the
        // next tick tries again) — the process's writers are queued behind this.
        let truncated = sqlx::raw_sql(
            "PRAGMA busy_timeout = 200; PRAGMA wal_checkpoint(TRUNCATE); PRAGMA busy_timeout = 30000;",
        )
        .execute(&mut *conn)
        .await;
        if let Err(e) = truncated {
            tracing::debug!(error = %e, "SQLite WAL not emptied this time; the next checkpoint retries");
            let _ = sqlx::query("PRAGMA busy_timeout = 30000")
                .execute(&mut *conn)
                .await;
        }
    }
}
