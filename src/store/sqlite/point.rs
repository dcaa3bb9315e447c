//! Point reads of one row (a key record, a sealed credential) through `rusqlite`, on the calling thread.
//!
//! sqlx runs each SQLite statement on a worker thread and wakes the caller when it is done: on the cold verify
//! path those two thread hand-offs (futex wake, eventfd, epoll) were about three quarters of a ~75 µs read whose
//! SQLite work is ~4 µs. A read by primary key in WAL mode never waits for a writer, so it runs here, inline, on
//! a small set of read-only connections to the same file. It never waits at all: a database that answers "busy"
//! (a WAL being reset or recovered) sends the caller back to the pool's path.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, ffi::ErrorCode};

use super::{SqliteError, corrupt, decimal_text, from_micros};
use crate::error::{Error, Result};
use crate::keys::KeyRecord;
use crate::store::sql::{Columns, key_record};

/// Idle connections kept for the next read; a burst beyond them opens more and closes them after.
const IDLE: usize = 4;

/// Read-only connections to one database file, for reads that must not pay a thread hand-off.
pub(super) struct PointReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for PointReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointReads")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PointReads {
    /// Point reads on the database file at `path`, or `None` when it is not a file on disk (an in-memory
    /// database is only reachable through the pool).
    pub(super) fn new(path: &Path) -> Option<Self> {
        path.is_file().then(|| PointReads {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never a write through these, and never a wait: busy means "use the pool".
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "mmap_size", 268_435_456)?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        Ok(conn)
    }

    /// The key record the query `sql` (one `?1` parameter, [`crate::store::sql::KEY_COLUMNS`] selected) finds
    /// for `value`. `None`: the database was busy or no connection could be opened, ask the pool.
    pub(super) fn record(&self, sql: &str, value: &str) -> Option<Result<Option<KeyRecord>>> {
        self.row(sql, &[&value], |r| key_record(r))
    }

    /// The first row the query `sql` finds with `params`, read by `read`. `None`: the database was busy or no
    /// connection could be opened, ask the pool.
    pub(super) fn row<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        read: impl FnOnce(&PointRow<'_, '_>) -> Result<T>,
    ) -> Option<Result<Option<T>>> {
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .map_or_else(|| self.open(), Ok);
        let conn = match conn {
            Ok(conn) => conn,
            // The pool's own connections may still reach the database (a file replaced under an open pool, a
            // read-only mount): let it answer, and say why.
            Err(e) => {
                tracing::debug!(error = %e, "SQLite point read unavailable; reading through the pool");
                return None;
            }
        };
        let found = first(&conn, sql, params, read);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE {
            idle.push(conn);
        }
        drop(idle);
        match found {
            Ok(found) => Some(found),
            Err(e) => busy_or(e),
        }
    }
}

impl PointReads {
    /// Every row the query `sql` finds with `params`, its columns read as text (for tables of text columns,
    /// such as the limits). `None`: the database was busy or no connection could be opened, ask the pool.
    pub(super) fn text_rows(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Option<Result<Vec<TextRow>>> {
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .map_or_else(|| self.open(), Ok)
            .ok()?;
        let found = all_text(&conn, sql, params);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE {
            idle.push(conn);
        }
        drop(idle);
        match found {
            Ok(rows) => Some(Ok(rows)),
            Err(e) => busy_or(e),
        }
    }
}

fn all_text(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<TextRow>> {
    let mut statement = conn.prepare_cached(sql)?;
    let names: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut columns = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            columns.push((name.clone(), row.get::<_, Option<String>>(i)?));
        }
        out.push(TextRow(columns));
    }
    Ok(out)
}

/// A row read as owned text, column by name.
pub(super) struct TextRow(Vec<(String, Option<String>)>);

impl TextRow {
    fn value(&self, column: &str) -> Result<Option<String>> {
        self.0
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| corrupt("column"))
    }
}

impl Columns for TextRow {
    fn text(&self, column: &str) -> Result<String> {
        self.value(column)?.ok_or_else(|| corrupt("text column"))
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.value(column)
    }
    fn opt_time(&self, _: &str) -> Result<Option<DateTime<Utc>>> {
        Err(corrupt("timestamp (not a text column)"))
    }
    fn flag(&self, _: &str) -> Result<bool> {
        Err(corrupt("flag (not a text column)"))
    }
    fn opt_decimal(&self, column: &str) -> Result<Option<rust_decimal::Decimal>> {
        decimal_text(self.value(column)?)
    }
    fn corrupt(&self, what: &'static str) -> Error {
        corrupt(what)
    }
}

fn first<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    read: impl FnOnce(&PointRow<'_, '_>) -> Result<T>,
) -> rusqlite::Result<Result<Option<T>>> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    match rows.next()? {
        Some(row) => Ok(read(&PointRow(row)).map(Some)),
        None => Ok(Ok(None)),
    }
}

/// `None` for "busy" (the caller falls back to the pool), the error otherwise.
fn busy_or<T>(e: rusqlite::Error) -> Option<Result<T>> {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => None,
        _ => Some(Err(SqliteError::Point(e).into())),
    }
}

/// A `rusqlite` row read through [`Columns`].
pub(super) struct PointRow<'a, 'b>(pub(super) &'a rusqlite::Row<'b>);

impl PointRow<'_, '_> {
    pub(super) fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> Result<T> {
        self.0
            .get(column)
            .map_err(|e| Error::from(SqliteError::Point(e)))
    }
}

impl Columns for PointRow<'_, '_> {
    fn text(&self, column: &str) -> Result<String> {
        self.get(column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.get(column)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        from_micros(self.get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool> {
        self.get(column)
    }
    fn opt_decimal(&self, column: &str) -> Result<Option<rust_decimal::Decimal>> {
        decimal_text(self.opt_text(column)?)
    }
    fn corrupt(&self, what: &'static str) -> Error {
        corrupt(what)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

    use super::PointReads;
    use crate::keys::{KeyHasher, KeyIssuer, KeyStore, NewKey, Pepper, PepperRing};
    use crate::random::OsRandom;
    use crate::store::SqliteStore;
    use crate::store::sqlite::keys::GET_SQL;

    #[test]
    fn a_busy_database_sends_the_read_to_the_pool() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("busy.db");
            let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let hasher = KeyHasher::new(
                PepperRing::new(vec![Pepper::generate("p", &OsRandom).unwrap()]).unwrap(),
            );
            let issuer = KeyIssuer::new(Arc::new(store.clone()), Arc::new(hasher));
            let id = issuer
                .issue(NewKey::new("k", "alice"))
                .await
                .unwrap()
                .record
                .id;
            store.close().await;

            // Another process holds the database exclusively: a point read does not wait for it...
            let locker = rusqlite::Connection::open(&path).unwrap();
            locker
                .execute_batch(
                    "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
                     UPDATE keymeter_api_keys SET name = name;",
                )
                .unwrap();
            let points = PointReads::new(&path).unwrap();
            assert!(points.record(&GET_SQL, &id).is_none());
            // ...so the store's read goes to the pool, which waits its busy timeout and answers once the lock is gone.
            let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
                .unwrap()
                .busy_timeout(std::time::Duration::from_secs(30));
            let store = SqliteStore {
                points: Some(Arc::new(points)),
                ..SqliteStore::from_pool(SqlitePool::connect_lazy_with(options))
            };
            let reader = tokio::spawn({
                let store = store.clone();
                let id = id.clone();
                async move { store.get(&id).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(!reader.is_finished(), "the read waited for the lock");
            locker.execute_batch("COMMIT").unwrap();
            drop(locker);
            assert_eq!(reader.await.unwrap().unwrap().unwrap().id, id);
        });
    }
}
