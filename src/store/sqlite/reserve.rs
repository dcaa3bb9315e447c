//! Reservations through `rusqlite`, the whole transaction in one hand-off to a blocking thread.
//!
//! Through sqlx each of a reservation's dozen statements (begin, purge, claim check, each budget's row, spend and
//! reservations, two inserts, commit) is a hand-off to the connection's worker thread and back: on this 2-core
//! machine about 1.3 ms a reservation, nearly all of it waiting to be woken. Here the same statements run
//! back to back on one thread, under the process's writer lock like every other write. Anything unusual (a
//! lapsed claim to bill, a database that says busy or refuses a write) returns `None` with nothing written, and
//! the caller takes the pool's path, which handles it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use rust_decimal::Decimal;

use super::{micros, point::PointRow};
use crate::error::{Error, Result};
use crate::ledger::{Budget, BudgetScope, Reservation, Standing, admit};
use crate::store::sql::budget;

/// A reservation's inputs, owned, for the blocking thread.
#[derive(Debug)]
pub(super) struct Ask {
    pub id: String,
    pub request_id: Option<String>,
    pub instance: Option<String>,
    pub estimate: Option<String>,
    pub scopes: Vec<BudgetScope>,
    pub amount: Decimal,
    pub now: DateTime<Utc>,
    pub ttl: Duration,
}

/// One read-write connection to the database file, kept between reservations.
pub(super) struct Reserver {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Reserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserver")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reserver {
    /// A reserver on the database file at `path`, or `None` when it is not a file on disk.
    pub(super) fn new(path: &Path) -> Option<Self> {
        path.is_file().then(|| Reserver {
            path: path.to_owned(),
            conn: Mutex::new(None),
        })
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the pool's connections: reservation budgets go with their reservation; no waiting on another
        // process's write lock here (busy means "use the pool", which waits).
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        Ok(conn)
    }

    /// Reserves as the pool's path does. `None`: nothing was written; use the pool's path. Call it with the
    /// process's writer lock held, on a thread that may block.
    pub(super) fn reserve(&self, ask: &Ask) -> Option<Result<Reservation>> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => self.open().ok()?,
        };
        let outcome = reserve_in(&mut conn, ask);
        // A connection that failed is dropped: the next reservation opens a fresh one.
        match outcome {
            Ok(done) => {
                *slot = Some(conn);
                done
            }
            Err(_) => None,
        }
    }
}

/// The transaction: `Ok(None)` rolls back and hands the reservation to the pool.
fn reserve_in(conn: &mut Connection, ask: &Ask) -> rusqlite::Result<Option<Result<Reservation>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = micros(ask.now);
    // Lapsed claims with an estimate are billed on the pool's path (it records events).
    // Statements are compiled once per connection (prepare_cached): compiling them was a third of the time.
    let lapsed: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM keymeter_reservations WHERE expires_at <= ?1 AND estimate IS NOT NULL)",
        )?
        .query_row([now], |r| r.get(0))?;
    if lapsed {
        return Ok(None);
    }
    tx.prepare_cached(
        "DELETE FROM keymeter_reservations WHERE expires_at <= ?1 AND estimate IS NULL",
    )?
    .execute([now])?;
    if let Some(request) = &ask.request_id {
        let taken: Option<(Option<String>, Option<String>)> = tx
            .prepare_cached(
                "SELECT event_id, cost FROM keymeter_usage_events WHERE request_id = ?1 \
                 UNION ALL SELECT event_id, NULL FROM keymeter_pruned_requests WHERE request_id = ?1 \
                 UNION ALL SELECT NULL, NULL FROM keymeter_reservations WHERE request_id = ?1 LIMIT 1",
            )?
            .query_row([request], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((event_id, cost)) = taken {
            let cost = match cost.map(|c| c.parse::<Decimal>()).transpose() {
                Ok(cost) => cost,
                Err(_) => return Ok(None),
            };
            return Ok(Some(Err(Error::DuplicateRequest {
                request_id: request.clone(),
                event_id,
                cost,
            })));
        }
    }
    let mut found: Vec<(Budget, Decimal, Decimal, i64)> = Vec::new();
    for scope in &ask.scopes {
        if found.iter().any(|(b, ..)| b.scope == *scope) {
            continue;
        }
        let row = tx
            .prepare_cached(
                "SELECT * FROM keymeter_budgets WHERE scope_kind = ?1 AND scope_id = ?2",
            )?
            .query_row([scope.kind(), scope.id()], |r| Ok(budget(&PointRow(r))))
            .optional()?;
        let Some(Ok(budget)) = row else {
            match row {
                None => continue,
                // A row that does not read: the pool's path says so.
                Some(_) => return Ok(None),
            }
        };
        let start = micros(budget.period_start(ask.now));
        let spent: Option<String> = tx
            .prepare_cached(
                "SELECT spent FROM keymeter_budget_spend WHERE scope_kind = ?1 AND scope_id = ?2 \
                 AND period_start = ?3",
            )?
            .query_row(rusqlite::params![scope.kind(), scope.id(), start], |r| {
                r.get(0)
            })
            .optional()?;
        let mut amounts = tx.prepare_cached(
            "SELECT r.amount FROM keymeter_reservation_budgets b JOIN keymeter_reservations r \
             ON r.id = b.reservation_id WHERE b.scope_kind = ?1 AND b.scope_id = ?2 AND b.period_start = ?3",
        )?;
        let held: Vec<String> = amounts
            .query_map(rusqlite::params![scope.kind(), scope.id(), start], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        drop(amounts);
        let Some(spent) = spent
            .map_or(Ok(Decimal::ZERO), |s| s.parse::<Decimal>())
            .ok()
        else {
            return Ok(None);
        };
        let mut reserved = Decimal::ZERO;
        for amount in held {
            let Ok(amount) = amount.parse::<Decimal>() else {
                return Ok(None);
            };
            reserved += amount;
        }
        found.push((budget, spent, reserved, start));
    }
    let standings = found.iter().map(|(budget, spent, reserved, _)| Standing {
        budget,
        spent: *spent,
        reserved: *reserved,
    });
    if let Err(refused) = admit(standings, ask.amount, ask.now) {
        return Ok(Some(Err(refused)));
    }
    let expires_at = ask.now + ask.ttl;
    tx.prepare_cached(
        "INSERT INTO keymeter_reservations (id, amount, expires_at, request_id, instance_id, estimate) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(rusqlite::params![
            ask.id,
            ask.amount.to_string(),
            micros(expires_at),
            ask.request_id,
            ask.instance,
            ask.estimate
    ])?;
    for (budget, _, _, start) in &found {
        tx.prepare_cached(
            "INSERT INTO keymeter_reservation_budgets (reservation_id, scope_kind, scope_id, period_start) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(rusqlite::params![ask.id, budget.scope.kind(), budget.scope.id(), start])?;
    }
    tx.commit()?;
    Ok(Some(Ok(Reservation {
        id: ask.id.clone(),
        amount: ask.amount,
        expires_at,
        scopes: found.into_iter().map(|(b, ..)| b.scope).collect(),
    })))
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use rust_decimal::Decimal;

    use super::{Ask, Reserver};
    use crate::error::Error;
    use crate::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger};
    use crate::store::SqliteStore;

    fn ask(id: &str, request: Option<&str>, estimate: Option<&str>, amount: &str) -> Ask {
        Ask {
            id: id.into(),
            request_id: request.map(str::to_owned),
            instance: Some("i1".into()),
            estimate: estimate.map(str::to_owned),
            scopes: vec![BudgetScope::Owner("alice".into())],
            amount: amount.parse().unwrap(),
            now: Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap(),
            ttl: Duration::seconds(30),
        }
    }

    /// The fast path itself answers: admits, refuses past the limit, refuses a claimed id; and it hands the
    /// reservation to the pool (writing nothing) when a lapsed claim waits to be billed or the database is busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reservations_are_answered_here_or_handed_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reserve.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let alice = BudgetScope::Owner("alice".into());
        store
            .set_budget(&Budget::new(alice.clone(), Decimal::ONE, BudgetPeriod::Monthly).unwrap())
            .await
            .unwrap();
        let reserver = Reserver::new(&path).unwrap();
        let r = reserver
            .reserve(&ask("a", Some("req-1"), None, "0.75"))
            .expect("answered here")
            .expect("admitted");
        assert_eq!(r.scopes, std::slice::from_ref(&alice));
        let now = ask("x", None, None, "0").now;
        let status = store.budget_status(&alice, now).await.unwrap().unwrap();
        assert_eq!(status.reserved, "0.75".parse::<Decimal>().unwrap());
        assert!(matches!(
            reserver.reserve(&ask("b", None, None, "0.5")),
            Some(Err(Error::BudgetExceeded { .. }))
        ));
        assert!(matches!(
            reserver.reserve(&ask("c", Some("req-1"), None, "0.1")),
            Some(Err(Error::DuplicateRequest { .. }))
        ));

        // Another process holds the write lock: handed over, nothing written.
        let locker = rusqlite::Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(reserver.reserve(&ask("d", None, None, "0.1")).is_none());
        locker.execute_batch("ROLLBACK").unwrap();

        // A lapsed claim with an estimate: the pool's path bills it.
        let mut lapsing = ask("e", None, Some("{}"), "0.1");
        lapsing.ttl = Duration::seconds(1);
        reserver.reserve(&lapsing).unwrap().unwrap();
        let mut later = ask("f", None, None, "0.1");
        later.now += Duration::seconds(5);
        assert!(reserver.reserve(&later).is_none());
        let status = store.budget_status(&alice, now).await.unwrap().unwrap();
        assert_eq!(
            status.reserved,
            "0.85".parse::<Decimal>().unwrap(),
            "d and f wrote nothing"
        );
        store.close().await;
    }
}
