//! Concurrency limits: at most N requests in flight per key, owner or organisation (DESIGN §15).
//!
//! A request in flight holds a *slot* in every scope that limits it ([`crate::limits::Limits::max_parallel`]). A slot is a claim
//! with a short time to live (DESIGN §13): the process that holds it renews all of its slots in one call every
//! third of that time ([`SlotKeeper`]'s heartbeat), the request gives it back the moment it ends (its
//! [`SlotGuard`] dropped: a cancel frees it at once), and a process that dies stops renewing, so its slots lapse
//! within about a TTL. Expiry is judged by the store's clock where the store has one of its own (PostgreSQL,
//! Redis); a counter that a crash or a lost decrement could leave high forever does not exist.
//!
//! - [`SlotStore`]: where slots are kept, acquired atomically over all of a request's scopes. The memory, SQLite,
//!   PostgreSQL and Redis stores implement it; [`crate::conformance::limits`] checks any backend.
//! - [`SlotKeeper`]: one per process; hands out [`SlotGuard`]s and renews what they hold.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::limits::{LimitScope, SlotClaim, SlotKeeper};
//! use keymeter::store::MemoryStore;
//!
//! let keeper = SlotKeeper::new(Arc::new(MemoryStore::new()), chrono::Duration::seconds(30));
//! let claims = vec![SlotClaim { scope: LimitScope::Key("abc".into()), max: 1 }];
//! let first = keeper.acquire(&claims).await?;
//! let refused = keeper.acquire(&claims).await;
//! assert!(matches!(refused, Err(keymeter::Error::TooManyConcurrent { limit: 1, .. })));
//! drop(first); // the request ended: its slot is free at once
//! # tokio::task::yield_now().await;
//! assert!(keeper.acquire(&claims).await.is_ok());
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::limits::LimitScope;
use crate::random::{OsRandom, RandomSource};

/// The most requests in flight a scope may allow.
pub const MAX_PARALLEL: u32 = 100_000;

/// One scope's concurrency limit, as a request claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotClaim {
    /// The scope limited.
    pub scope: LimitScope,
    /// Requests in flight it allows.
    pub max: u32,
}

/// A held slot: its id (unique per request) and the scopes it counts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Unique among live slots.
    pub id: String,
    /// The limits it was admitted under.
    pub claims: Vec<SlotClaim>,
}

/// Why a slot was not given: the first scope with no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRefusal {
    /// The scope that refused.
    pub scope: LimitScope,
    /// Its limit.
    pub max: u32,
    /// Its live slots when it refused.
    pub in_flight: u64,
}

impl SlotRefusal {
    /// The error a refusal is: [`Error::TooManyConcurrent`].
    pub fn into_error(self) -> Error {
        Error::TooManyConcurrent {
            scope: self.scope.to_string(),
            limit: self.max,
            in_flight: self.in_flight,
        }
    }
}

/// Where slots are kept. Object safe. `now` is the caller's clock; a backend with a clock of its own (a server
/// database, Redis) judges expiry by that instead, so instances with skewed clocks agree.
#[async_trait]
pub trait SlotStore: Send + Sync + std::fmt::Debug {
    /// Takes `slot` in every scope of its claims when each has fewer live slots than its `max`, all or none,
    /// living `ttl` from now; `Some(refusal)` when one had no room (nothing taken).
    ///
    /// # Errors
    /// Backend failures.
    async fn acquire(
        &self,
        slot: &Slot,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<SlotRefusal>>;

    /// Extends each of `slots` that is still held to `ttl` from now (a slot already released stays released):
    /// one call for every slot of a process.
    ///
    /// # Errors
    /// Backend failures.
    async fn renew(&self, slots: &[Slot], now: DateTime<Utc>, ttl: chrono::Duration) -> Result<()>;

    /// Gives `slot` back in every scope (releasing one not held is not an error).
    ///
    /// # Errors
    /// Backend failures.
    async fn release(&self, slot: &Slot) -> Result<()>;

    /// The live slots of each of `scopes`, in order.
    ///
    /// # Errors
    /// Backend failures.
    async fn in_flight(&self, scopes: &[LimitScope], now: DateTime<Utc>) -> Result<Vec<u64>>;
}

/// Hands out slots and keeps them alive: one per process (its slot ids carry a random per-keeper prefix).
///
/// [`SlotKeeper::acquire`] asks the store only when a request has a concurrency limit; the heartbeat started with
/// the first slot renews every held slot in one [`SlotStore::renew`] every third of the TTL and stops when the
/// keeper is dropped.
#[derive(Debug)]
pub struct SlotKeeper {
    store: Arc<dyn SlotStore>,
    ttl: chrono::Duration,
    clock: Arc<dyn Clock>,
    prefix: String,
    next: AtomicU64,
    held: Mutex<HashMap<String, Arc<Slot>>>,
    beating: std::sync::Once,
    me: Weak<SlotKeeper>,
}

impl SlotKeeper {
    /// A keeper over `store` whose slots live `ttl` (at least one second) without a renewal.
    pub fn new(store: Arc<dyn SlotStore>, ttl: chrono::Duration) -> Arc<Self> {
        Self::build(store, ttl, Arc::new(SystemClock), &OsRandom)
    }

    /// The same with a clock and a random source of the caller's (tests).
    pub fn with_clock_and_random(
        store: Arc<dyn SlotStore>,
        ttl: chrono::Duration,
        clock: Arc<dyn Clock>,
        random: &dyn RandomSource,
    ) -> Arc<Self> {
        Self::build(store, ttl, clock, random)
    }

    fn build(
        store: Arc<dyn SlotStore>,
        ttl: chrono::Duration,
        clock: Arc<dyn Clock>,
        random: &dyn RandomSource,
    ) -> Arc<Self> {
        let mut bytes = [0u8; 8];
        // A failed draw leaves zeros; ids then stay unique within the process by the counter, which is what
        // renewals need, and another process's collisions are vanishingly unlikely to matter for long (a TTL).
        let _ = random.fill(&mut bytes);
        let prefix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Arc::new_cyclic(|me| SlotKeeper {
            store,
            ttl: ttl.max(chrono::Duration::seconds(1)),
            clock,
            prefix,
            next: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            beating: std::sync::Once::new(),
            me: me.clone(),
        })
    }

    /// How long a slot lives without a renewal.
    pub fn ttl(&self) -> chrono::Duration {
        self.ttl
    }

    /// The store behind the keeper.
    pub fn store(&self) -> &Arc<dyn SlotStore> {
        &self.store
    }

    /// Slots this process holds now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Takes a slot in every scope of `claims` (none to take: a guard that holds nothing, with no store call).
    ///
    /// # Errors
    /// [`Error::TooManyConcurrent`] naming the first scope with no room (nothing held); the store's failures.
    pub async fn acquire(&self, claims: &[SlotClaim]) -> Result<SlotGuard> {
        let keeper = self.me.upgrade();
        if claims.is_empty() {
            return Ok(SlotGuard { slot: None, keeper });
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id: format!("{}-{n}", self.prefix),
            claims: claims.to_vec(),
        });
        // Armed before the store is asked: a caller that gives up mid-acquire (a client gone) drops the guard,
        // which gives back whatever the store may already have taken.
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.id.clone(), slot.clone());
        let mut guard = SlotGuard {
            slot: Some(slot.clone()),
            keeper,
        };
        match self.store.acquire(&slot, self.now(), self.ttl).await {
            Ok(None) => {
                self.start_heartbeat();
                Ok(guard)
            }
            Ok(Some(refused)) => {
                // Nothing was taken: nothing to give back.
                self.forget(&slot.id);
                guard.slot = None;
                Err(refused.into_error())
            }
            Err(e) => Err(e),
        }
    }

    fn start_heartbeat(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.beating.call_once(|| {
            let me = self.me.clone();
            let every = (self.ttl.to_std().unwrap_or(Duration::from_secs(30)) / 3)
                .max(Duration::from_millis(100));
            crate::streak::spawn_every(
                me,
                every,
                "concurrency slots: cannot renew this process's slots; past their TTL other requests may take \
                 them",
                "concurrency slots: the store takes renewals again",
                |keeper: Arc<SlotKeeper>| async move { keeper.renew().await },
            );
        });
    }

    /// Renews every slot held now, in one store call (what the heartbeat runs).
    ///
    /// # Errors
    /// The store's failures.
    pub async fn renew(&self) -> Result<()> {
        let slots: Vec<Slot> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.values().map(|s| (**s).clone()).collect()
        };
        if slots.is_empty() {
            return Ok(());
        }
        self.store.renew(&slots, self.now(), self.ttl).await
    }

    fn forget(&self, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// A request's slots: given back when it is dropped (in a task of the runtime, or at once by
/// [`SlotGuard::release`]).
#[derive(Debug)]
#[must_use = "the slot is given back when the guard is dropped"]
pub struct SlotGuard {
    slot: Option<Arc<Slot>>,
    keeper: Option<Arc<SlotKeeper>>,
}

impl SlotGuard {
    /// A guard that holds nothing (no concurrency limit applied).
    pub fn none() -> Self {
        SlotGuard {
            slot: None,
            keeper: None,
        }
    }

    /// The slot held, if any.
    pub fn slot(&self) -> Option<&Slot> {
        self.slot.as_deref()
    }

    /// Gives the slot back now and waits for the store.
    ///
    /// # Errors
    /// The store's failures (the slot then lapses within its TTL: it is no longer renewed).
    pub async fn release(mut self) -> Result<()> {
        match (self.slot.take(), self.keeper.take()) {
            (Some(slot), Some(keeper)) => {
                keeper.forget(&slot.id);
                keeper.store.release(&slot).await
            }
            _ => Ok(()),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let (Some(slot), Some(keeper)) = (self.slot.take(), self.keeper.take()) else {
            return;
        };
        keeper.forget(&slot.id);
        // Without a runtime to give it back from, it is no longer renewed and lapses within its TTL.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = keeper.store.release(&slot).await {
                    tracing::warn!(error = %e, slot = %slot.id,
                        "concurrency slot not given back; it lapses within its TTL");
                }
            });
        }
    }
}

/// Checks a concurrency limit's value: 1 to [`MAX_PARALLEL`].
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn check_max(max: u32) -> Result<()> {
    if max == 0 || max > MAX_PARALLEL {
        return Err(Error::invalid(
            "max_parallel",
            format!("must be between 1 and {MAX_PARALLEL}"),
        ));
    }
    Ok(())
}

/// Picks, of each scope's live count, the first whose count is at its claim's limit: the shared decision of the
/// backends that count then insert.
pub(crate) fn first_full(claims: &[SlotClaim], counts: &[u64]) -> Option<SlotRefusal> {
    claims
        .iter()
        .zip(counts)
        .find(|(c, n)| **n >= u64::from(c.max))
        .map(|(c, n)| SlotRefusal {
            scope: c.scope.clone(),
            max: c.max,
            in_flight: *n,
        })
}
