//! [`Leases`]: the instance's side of budget leases — per set of scopes, the room leased and the part in use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use rust_decimal::Decimal;
use tokio::sync::Notify;

use super::LeaseAsk;
use crate::clock::{Clock, SystemClock};
use crate::ledger::{BudgetScope, Ledger};
use crate::lookups::Lookups;
use crate::streak::Streak;

/// How leases are sized and kept.
///
/// ```
/// use keymeter::ledger::lease::LeaseConfig;
///
/// let config = LeaseConfig::default().window(std::time::Duration::from_millis(500));
/// assert_eq!(config.holds, 8);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long a lease covers new holds before it is resized (default 1 s): budgets changed elsewhere are seen
    /// within it, and an instance whose traffic stops gives its unused room back about this long after.
    pub window: std::time::Duration,
    /// How long a lease lives in the store without its instance's heartbeat (default 30 s, the claim TTL).
    pub ttl: chrono::Duration,
    /// A lease asks for room for at least this many holds of the size just asked for (default 8), or twice what
    /// was drawn in its last window, whichever is more.
    pub holds: u32,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            window: std::time::Duration::from_secs(1),
            ttl: chrono::Duration::seconds(30),
            holds: 8,
        }
    }
}

impl LeaseConfig {
    /// Sets the window.
    #[must_use]
    pub fn window(mut self, window: std::time::Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets the time to live in the store.
    #[must_use]
    pub fn ttl(mut self, ttl: chrono::Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how many holds of the size asked for a lease asks room for.
    #[must_use]
    pub fn holds(mut self, holds: u32) -> Self {
        self.holds = holds.max(1);
        self
    }
}

/// A hold drawn from a lease: its id stands in for a reservation id (the journal's records and the store's
/// settle take it; the store has no row of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    /// The hold's id, for [`Leases::settled`] and [`Leases::released`].
    pub id: String,
    /// The amount drawn.
    pub amount: Decimal,
    /// The scopes whose budgets the lease holds room in (empty when none has a budget).
    pub scopes: Vec<BudgetScope>,
}

/// The leases of one instance, shared by clones. See [the module](super).
#[derive(Debug, Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ledger: Arc<dyn Ledger>,
    instance: String,
    config: LeaseConfig,
    clock: Arc<dyn Clock>,
    /// Marks this run's lease ids, so a lease or draw of an earlier run (a journal replayed at start) is never
    /// taken for one of this run's.
    run: String,
    /// `lse_{run}_`: what this run's lease ids start with.
    prefix: String,
    slots: RwLock<HashMap<Vec<BudgetScope>, Arc<Slot>>>,
    numbered: RwLock<Vec<Arc<Slot>>>,
    lookups: Arc<Lookups>,
    fallbacks: AtomicU64,
    keeper: AtomicBool,
    /// Resizes the store refused in a row: logged once when they start and once when they stop.
    refusals: Mutex<Streak>,
}

#[derive(Debug)]
struct Slot {
    /// The lease's id in the store.
    id: String,
    scopes: Vec<BudgetScope>,
    state: Mutex<State>,
    resized: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The room the lease holds in the store, as this instance has changed it; `None` when no scope has a
    /// budget.
    room: Option<Decimal>,
    /// Holds drawn and not yet ended in the store.
    in_use: Decimal,
    draws: HashMap<u64, Decimal>,
    next: u64,
    /// Until when (µs since the epoch, the clock's) the lease covers new holds.
    fresh_until: i64,
    /// A resize is under way (one at a time).
    resizing: bool,
    /// ...and it shrinks the window: no hold is drawn until it is done, so the room it gives back is unused.
    shrinking: bool,
    /// Drawn since the last resize: whether the lease is used, and how big the next one should be.
    drawn: Decimal,
    /// The room asked for last, for the low-water mark.
    wanted: Decimal,
}

impl State {
    fn covers(&self, amount: Decimal) -> bool {
        self.room.is_none_or(|room| room - self.in_use >= amount)
    }

    /// Room for new holds.
    fn window(&self) -> Decimal {
        self.room.map_or(Decimal::ZERO, |room| room - self.in_use)
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Leases {
    /// The leases of `instance` (the claimant its journal renews, [`crate::ledger::journal::Journal::claimant`])
    /// in `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>, instance: impl Into<String>, config: LeaseConfig) -> Self {
        let mut mark = [0u8; 12];
        // A failing random source leaves the mark empty: ids still differ within the run.
        let _ = crate::random::fill_base62(&crate::random::OsRandom, &mut mark);
        let run: String = mark.iter().map(|&b| char::from(b)).collect();
        Leases {
            inner: Arc::new(Inner {
                ledger,
                instance: instance.into(),
                config,
                clock: Arc::new(SystemClock),
                prefix: super::lease_id(&run, 0).trim_end_matches('0').to_owned(),
                run,
                slots: RwLock::default(),
                numbered: RwLock::default(),
                lookups: Arc::default(),
                fallbacks: AtomicU64::new(0),
                keeper: AtomicBool::new(false),
                refusals: Mutex::default(),
            }),
        }
    }

    /// Injects the clock (before the first draw).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = clock;
        }
        self
    }

    /// Draws `amount` for one hold against the lease of `scopes` (taking or resizing it first when it is stale
    /// or short). `None` when the lease cannot cover it even after a resize, or the store cannot be asked: then
    /// ask the store for exact room ([`Ledger::reserve_claim`]).
    pub async fn draw(&self, scopes: &[BudgetScope], amount: Decimal) -> Option<Draw> {
        self.keep_in_background();
        let slot = self.slot(scopes);
        let mut resized = false;
        let mut waited = false;
        loop {
            let wait = {
                let mut s = slot.lock();
                let fresh = self.inner.clock.now_micros() < s.fresh_until;
                if fresh && !s.shrinking && s.covers(amount) {
                    if resized || waited {
                        self.inner.lookups.miss();
                    } else {
                        self.inner.lookups.hit();
                    }
                    return Some(self.take(&slot, &mut s, amount));
                } else if s.resizing {
                    Some(slot.resized.notified())
                } else if resized {
                    self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                    return None;
                } else {
                    s.resizing = true;
                    None
                }
            };
            match wait {
                Some(notified) => {
                    notified.await;
                    waited = true;
                }
                None => {
                    // Growth (or a renewal that changes nothing): holds may still be drawn meanwhile.
                    let change = {
                        let s = slot.lock();
                        (self.want(&s, amount) - s.window()).max(Decimal::ZERO)
                    };
                    resize(self.inner.clone(), slot.clone(), change).await;
                    resized = true;
                }
            }
        }
    }

    /// Takes `amount` from the slot's window (which covers it) for a new draw.
    fn take(&self, slot: &Arc<Slot>, s: &mut State, amount: Decimal) -> Draw {
        s.next += 1;
        let n = s.next;
        s.draws.insert(n, amount);
        s.in_use += amount;
        s.drawn += amount;
        // Low water: grow in the background, before a hold has to wait for it.
        if !s.resizing && s.room.is_some() && s.window() * Decimal::from(4) < s.wanted {
            s.resizing = true;
            let change = (self.want(s, amount) - s.window()).max(Decimal::ZERO);
            tokio::spawn(resize(self.inner.clone(), slot.clone(), change));
        }
        Draw {
            id: super::draw_id(&slot.id, amount, n),
            amount,
            scopes: if s.room.is_some() {
                slot.scopes.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// The hold `id` is settled in the store: its cost is in the spend and its amount has left the lease there
    /// (the store's settle of a draw does both). Ids that are not this run's draws, or ended already, are ignored.
    pub fn settled(&self, id: &str) {
        self.end(id, true);
    }

    /// The hold `id` was given back before anything was spent: its room is free for new holds again (the lease
    /// in the store never stopped holding it). Ids that are not this run's draws, or ended already, are ignored.
    pub fn released(&self, id: &str) {
        self.end(id, false);
    }

    /// The hold `id` was carved out of its lease into a reservation of its own ([`Ledger::carve`]): its amount
    /// has left the lease in the store, and leaves it here. A draw released meanwhile (its release is the
    /// drain's next step, which ends the carved reservation) leaves the lease all the same.
    pub fn carved(&self, id: &str) {
        let Some((slot, n)) = self.parse(id) else {
            return;
        };
        let Some((_, amount)) = super::drawn(id) else {
            return;
        };
        let mut s = slot.lock();
        if s.draws.remove(&n).is_some() {
            s.in_use -= amount;
        }
        if let Some(room) = &mut s.room {
            *room -= amount;
        }
    }

    fn end(&self, id: &str, settled: bool) {
        let Some((slot, n)) = self.parse(id) else {
            return;
        };
        let mut s = slot.lock();
        if let Some(amount) = s.draws.remove(&n) {
            s.in_use -= amount;
            if settled && let Some(room) = &mut s.room {
                *room -= amount;
            }
        }
    }

    /// Whether `id` is a draw of this run still in use.
    pub fn holds(&self, id: &str) -> bool {
        self.parse(id)
            .is_some_and(|(slot, n)| slot.lock().draws.contains_key(&n))
    }

    /// Draws answered from a warm lease (hits) and those that waited for the store (misses).
    pub fn lookups(&self) -> &Arc<Lookups> {
        &self.inner.lookups
    }

    /// Draws the leases could not cover, handed back for an exact check in the store.
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// Shrinks every lease to what is in use (giving the rest of the room back to the store): at shutdown.
    pub async fn close(&self) {
        let slots: Vec<Arc<Slot>> = self.numbered().clone();
        for slot in slots {
            loop {
                let step = {
                    let mut s = slot.lock();
                    if s.resizing {
                        Err(slot.resized.notified())
                    } else if s.window().is_zero() {
                        break;
                    } else {
                        s.resizing = true;
                        s.shrinking = true;
                        Ok(-s.window())
                    }
                };
                match step {
                    Ok(change) => {
                        resize(self.inner.clone(), slot.clone(), change).await;
                        break;
                    }
                    // A resize under way (a background refill) ends first.
                    Err(wait) => wait.await,
                }
            }
        }
    }

    fn want(&self, s: &State, amount: Decimal) -> Decimal {
        (amount * Decimal::from(self.inner.config.holds)).max(s.drawn * Decimal::TWO)
    }

    fn parse(&self, id: &str) -> Option<(Arc<Slot>, u64)> {
        // Only the lease and the number: the amount is the one kept with the draw.
        let (lease, _) = id.split_once('/')?;
        let number = lease
            .strip_prefix(&*self.inner.prefix)?
            .parse::<usize>()
            .ok()?;
        let slot = self.numbered().get(number)?.clone();
        let n = id.rsplit('/').next()?.parse().ok()?;
        Some((slot, n))
    }

    fn numbered(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        self.inner
            .numbered
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, scopes: &[BudgetScope]) -> Arc<Slot> {
        if let Some(slot) = self
            .inner
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(scopes)
        {
            return slot.clone();
        }
        let mut slots = self.inner.slots.write().unwrap_or_else(|p| p.into_inner());
        let mut numbered = self
            .inner
            .numbered
            .write()
            .unwrap_or_else(|p| p.into_inner());
        slots
            .entry(scopes.to_vec())
            .or_insert_with(|| {
                let slot = Arc::new(Slot {
                    id: super::lease_id(&self.inner.run, numbered.len()),
                    scopes: scopes.to_vec(),
                    state: Mutex::default(),
                    resized: Notify::new(),
                });
                numbered.push(slot.clone());
                slot
            })
            .clone()
    }

    /// Starts the keeper once: it renews used leases before their window ends and shrinks idle ones.
    fn keep_in_background(&self) {
        if !self.inner.keeper.load(Ordering::Relaxed)
            && !self.inner.keeper.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(keeper(Arc::downgrade(&self.inner)));
        }
    }
}

/// Asks the store to change the slot's lease by `change` (growth as far as the budgets allow), and ends the
/// slot's resize (whoever started it set `resizing`, and `shrinking` for a shrink, during which no hold is drawn).
async fn resize(inner: Arc<Inner>, slot: Arc<Slot>, change: Decimal) {
    let now = inner.clock.now();
    let ask = LeaseAsk {
        id: &slot.id,
        instance: &inner.instance,
        scopes: &slot.scopes,
        change,
    };
    let result = inner.ledger.lease(ask, now, inner.config.ttl).await;
    inner
        .refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .note(
            &result,
            "budget lease: the store refused a resize; holds ask the store directly",
            "budget lease: the store takes resizes again",
        );
    {
        let mut s = slot.lock();
        match result {
            Ok(lease) => {
                let window = chrono::Duration::from_std(inner.config.window)
                    .unwrap_or(chrono::Duration::seconds(1));
                // The change, not the store's total: settles the store has made and this instance has not yet
                // heard of shrink both sides by the same amounts, in whichever order.
                s.room = lease
                    .room
                    .map(|_| s.room.unwrap_or(Decimal::ZERO) + lease.change);
                s.fresh_until = (now + window).min(lease.until).timestamp_micros();
                s.wanted = s.window();
                s.drawn = Decimal::ZERO;
            }
            Err(_) => {
                // The lease (as the store still holds it) keeps counting; new holds ask the store directly.
                s.fresh_until = 0;
            }
        }
        s.resizing = false;
        s.shrinking = false;
    }
    slot.resized.notify_waiters();
}

/// Every quarter window: renews the leases used since their last resize shortly before their window ends, and
/// shrinks the idle ones to what is in use. Ends with the leases.
async fn keeper(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let quarter = strong.config.window / 4;
        let slots: Vec<Arc<Slot>> = strong
            .numbered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for slot in slots {
            let now = strong.clock.now_micros();
            let ask = {
                let mut s = slot.lock();
                let soon = now + i64::try_from(quarter.as_micros()).unwrap_or(i64::MAX);
                let used = !s.drawn.is_zero();
                if s.resizing {
                    None
                } else if used && soon >= s.fresh_until {
                    // Sized to the traffic of the window ending, shrinking by half at most per window.
                    Some((s.drawn * Decimal::TWO).max(s.wanted / Decimal::TWO) - s.window())
                } else if !used && now >= s.fresh_until && !s.window().is_zero() {
                    Some(-s.window())
                } else {
                    None
                }
                .inspect(|change| {
                    s.resizing = true;
                    s.shrinking = *change < Decimal::ZERO;
                })
            };
            if let Some(change) = ask {
                resize(strong.clone(), slot, change).await;
            }
        }
        drop(strong);
        tokio::time::sleep(quarter.max(std::time::Duration::from_millis(10))).await;
    }
}
