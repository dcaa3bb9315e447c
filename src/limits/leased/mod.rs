//! [`LeasedLimiter`]: rate limits shared by several instances through the store without a store call per check —
//! DESIGN §14's leased request quotas, the rate-limit counterpart of budget leases.
//!
//! An instance *leases* a slice of each bucket it serves: it charges the shared bucket for a few units in one call
//! (the store's own all-or-none check, so the shared bucket never admits more than its quota) and admits requests
//! against those units in memory. A slice is sized to the traffic since the last lease (half a window's worth, at
//! most 1/32 of the quota), the next leased in the background once fewer units than a slice are left, and usable only within its *window* (1 s by
//! default, renewed while traffic flows); units left when a window ends go back to the store ([`gcra::refund`]).
//!
//! An instance never refuses from an empty slice alone: a check its slices do not cover asks the store for exactly
//! what it needs (the per-request fallback, which is also what runs near a limit). So one instance alone admits
//! exactly what the store would; with several, the most a bucket refuses early is the units other instances hold
//! in live windows (at most 1/16 of the quota each). Token limits lease no units: their pre-check (cost 0) is
//! answered from the bucket's state as of the last lease plus the tokens this instance charged since, and those
//! charges reach the store in batches (every quarter window). A process that dies loses its unused units — the
//! bucket counts them spent until it refills — and its unsent token charges (at most a quarter window's).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::limits::{Charge, LeasedLimiter, Quota, RateLimiter};
//! use keymeter::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let limiter = LeasedLimiter::new(store.clone());
//! let c = [Charge { bucket: "key:abc:requests:3/min".into(), quota: "3/min".parse::<Quota>()?, cost: 1 }];
//! let now = 1_000_000;
//! for _ in 0..3 {
//!     assert!(limiter.check(&c, now).await?.allowed);
//! }
//! // The fourth asks the store, which the three (and any slice leased meanwhile) used up.
//! assert!(!limiter.check(&c, now).await?.allowed);
//! // What this instance holds unused goes back to the store.
//! limiter.flush().await?;
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::Result;
use crate::limits::gcra::{self, Tightest};
use crate::limits::{Charge, Decision, RateLimiter};
use crate::lookups::Lookups;

mod slice;

use slice::{Grant, Owed, charge};

/// How long a leased slice may be used after it was leased (or last refilled), by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// How often a check that finds a lease of its bucket in flight waits for it before it asks the store.
const ATTEMPTS: usize = 3;

/// Rate limits leased from a shared [`RateLimiter`] (the store's, one transaction per call) and spent in this
/// process's memory. See [the module](self).
#[derive(Debug, Clone)]
pub struct LeasedLimiter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    inner: Arc<dyn RateLimiter>,
    window: i64,
    state: Mutex<State>,
    /// Charges and refunds the store still owes: token charges, units of ended windows, failed sends.
    owed: Mutex<Owed>,
    /// Woken when a lease lands, for a check that found one in flight.
    leased: tokio::sync::Notify,
    /// Checks answered from the slices alone (hits) and with the store (misses).
    lookups: Arc<Lookups>,
}

#[derive(Debug, Default)]
struct State {
    /// Bucket names are built by keymeter from stored scopes, never taken from a request: a fast hasher is safe.
    grants: HashMap<String, Grant, foldhash::fast::RandomState>,
    /// The latest time a caller gave, and when: background work's clock follows the callers' (tests pass their
    /// own times).
    seen: Option<(i64, Instant)>,
}

/// What the memory alone could answer.
enum Local {
    /// The whole answer; the buckets whose slices want a lease.
    Done(Decision, Vec<String>),
    /// Some charges need the store.
    Missing(Partial),
}

/// A check the slices cover in part: the covered charges were taken (`taken`, their answers folded), whether the
/// ended slices of the `missing` ones were retired (their units and tokens now owed to the store), and whether a
/// lease of a missing bucket is in flight.
struct Partial {
    fold: Tightest,
    taken: Vec<usize>,
    missing: Vec<usize>,
    retired: bool,
    in_flight: bool,
}

impl LeasedLimiter {
    /// Leases from `inner` with a window of [`DEFAULT_WINDOW`].
    pub fn new(inner: Arc<dyn RateLimiter>) -> Self {
        Self::with_window(inner, DEFAULT_WINDOW)
    }

    /// Leases from `inner` with slices usable for `window` (at least 1 ms).
    pub fn with_window(inner: Arc<dyn RateLimiter>, window: Duration) -> Self {
        let window = i64::try_from(window.as_micros())
            .unwrap_or(i64::MAX)
            .max(1_000);
        LeasedLimiter {
            shared: Arc::new(Shared {
                inner,
                window,
                state: Mutex::new(State::default()),
                owed: Mutex::new(Owed::default()),
                leased: tokio::sync::Notify::new(),
                lookups: Arc::default(),
            }),
        }
    }

    /// How many checks the slices answered alone (hits) and how many asked the store (misses), for metrics.
    pub fn lookups(&self) -> &Arc<Lookups> {
        &self.shared.lookups
    }

    /// Units this instance holds unused for `bucket` (0 when it holds no live slice of it).
    pub fn leased_units(&self, bucket: &str, now: i64) -> u64 {
        self.shared
            .lock()
            .grants
            .get(bucket)
            .filter(|g| g.live(now))
            .map_or(0, |g| g.units)
    }

    /// Gives back the units of every window ended by `now` and sends the token charges made since the last
    /// sweep, in one store call each; returns how many charges went. A failed send is kept for the next sweep.
    ///
    /// # Errors
    /// The store's failure.
    pub async fn sweep(&self, now: i64) -> Result<usize> {
        let mut out = Owed::default();
        {
            let mut state = self.shared.lock();
            state.grants.retain(|bucket, g| {
                if g.pending > 0 {
                    let c = charge(bucket, g.quota, std::mem::take(&mut g.pending));
                    out.charge(c, g.pending_at);
                }
                let ended = !g.live(now) && !g.refilling;
                if ended && g.units > 0 {
                    out.refunds.push(charge(bucket, g.quota, g.units));
                }
                !ended
            });
        }
        self.shared.send(out, now).await
    }

    /// Sweeps every quarter window in the background while the limiter lives, on the callers' clock; a failure
    /// is logged once per streak (and the send retried).
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        crate::streak::spawn_every(
            Arc::downgrade(&self.shared),
            Duration::from_micros((self.shared.window / 4).max(1) as u64),
            "could not give leased rate-limit units back to the store or send token charges; kept and sent \
             when it answers",
            "leased rate-limit units and token charges reach the store again",
            |shared: Arc<Shared>| async move {
                // No check yet: nothing to sweep.
                let Some(now) = shared.now() else {
                    return Ok(0);
                };
                LeasedLimiter { shared }.sweep(now).await
            },
        )
    }

    /// Looks at the slices of `charges` under the lock and takes what they cover.
    fn local(&self, charges: &[Charge], now: i64, partial: bool, can_lease: bool) -> Local {
        let window = self.shared.window;
        let mut state = self.shared.lock();
        state.see(now);
        let mut fold = Tightest::default();
        let mut missing = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            match state.grants.get(&c.bucket) {
                Some(g)
                    if g.quota == c.quota
                        && g.live(now)
                        && (c.cost == 0 || (g.takes_units && g.units >= c.cost)) =>
                {
                    // Units in hand were admitted by the store, so a check they cover is admitted; the numbers
                    // come from the bucket as this instance sees it.
                    let (ok, _, status) = gcra::decide(Some(g.seen_tat()), now, &c.quota, c.cost);
                    fold.add(ok || c.cost > 0, status);
                }
                _ => missing.push(i),
            }
        }
        if !fold.decision().allowed {
            // A token limit in debt: refused here, nothing taken.
            return Local::Done(fold.decision(), Vec::new());
        }
        if !missing.is_empty() && !partial {
            // The synchronous path only looks: nothing taken.
            return Local::Missing(Partial {
                fold,
                taken: Vec::new(),
                missing,
                retired: false,
                in_flight: false,
            });
        }
        let mut wants = Vec::new();
        let mut taken = Vec::new();
        // What ended slices owe goes where every owed charge waits, so that nothing drops it.
        let mut retire = Owed::default();
        let mut in_flight = false;
        let mut next_missing = missing.iter().peekable();
        for (i, c) in charges.iter().enumerate() {
            if next_missing.peek() == Some(&&i) {
                next_missing.next();
                if let Some(g) = state.grants.get(&c.bucket) {
                    in_flight |= g.refilling;
                    if (!g.live(now) || g.quota != c.quota) && !g.refilling {
                        // An ended slice: its units and tokens go to the store before the store is asked.
                        if g.units > 0 {
                            retire.refunds.push(charge(&c.bucket, g.quota, g.units));
                        }
                        if g.pending > 0 {
                            retire.charge(charge(&c.bucket, g.quota, g.pending), g.pending_at);
                        }
                        state.grants.remove(&c.bucket);
                    }
                }
                continue;
            }
            let Some(g) = state.grants.get_mut(&c.bucket) else {
                continue;
            };
            g.units -= c.cost;
            g.used += c.cost;
            if !missing.is_empty() {
                // Given back if the store refuses the rest.
                taken.push(i);
            }
            if can_lease && g.wants_lease(now, window) {
                g.refilling = true;
                wants.push(c.bucket.clone());
            }
        }
        if missing.is_empty() {
            return Local::Done(fold.decision(), wants);
        }
        let retired = !retire.is_empty();
        if retired {
            self.shared.owed().append(retire);
        }
        drop(state);
        self.lease(wants, now);
        Local::Missing(Partial {
            fold,
            taken,
            missing,
            retired,
            in_flight,
        })
    }

    /// Puts back the units taken for a check the store then refused.
    fn give_back(&self, charges: &[Charge], taken: &[usize]) {
        let mut state = self.shared.lock();
        for &i in taken {
            if let Some(g) = state.grants.get_mut(&charges[i].bucket) {
                g.units += charges[i].cost;
                g.used = g.used.saturating_sub(charges[i].cost);
            }
        }
    }

    /// The store's answer as the caller sees the bucket: the units this instance holds unused are room too
    /// (the store counts them spent). The store names only its tightest limit; its bucket is the missing charge
    /// of the same quota.
    fn count_held(&self, mut answer: Decision, exact: &[Charge], now: i64) -> Decision {
        let Some(status) = answer.tightest.as_mut() else {
            return answer;
        };
        let Some(c) = exact
            .iter()
            .find(|c| c.quota.count == status.limit && c.quota.period == status.period)
        else {
            return answer;
        };
        let state = self.shared.lock();
        if let Some(g) = state
            .grants
            .get(&c.bucket)
            .filter(|g| g.live(now) && g.quota == c.quota)
        {
            let held = i64::try_from(g.units)
                .unwrap_or(i64::MAX)
                .saturating_mul(c.quota.emission_micros());
            status.remaining = status.remaining.saturating_add(g.units).min(status.limit);
            status.reset_micros = status.reset_micros.saturating_sub(held).max(0);
        }
        answer
    }

    /// After the store admitted `missing` at `now`: slices for them, leased in the background.
    fn follow(&self, charges: &[Charge], missing: &[usize], now: i64) {
        let window = self.shared.window;
        let mut wants = Vec::new();
        {
            let mut state = self.shared.lock();
            for &i in missing {
                let c = &charges[i];
                let g = state
                    .grants
                    .entry(c.bucket.clone())
                    .or_insert_with(|| Grant::new(c.quota, now, c.cost > 0));
                if g.quota != c.quota {
                    continue;
                }
                g.used += c.cost;
                g.takes_units |= c.cost > 0;
                if g.wants_lease(now, window) {
                    g.refilling = true;
                    wants.push(c.bucket.clone());
                }
            }
        }
        self.lease(wants, now);
    }

    /// Leases a slice of each of `buckets` (already marked as refilling) in a background task, at the time of
    /// the check that asked (the callers' clock).
    fn lease(&self, buckets: Vec<String>, now: i64) {
        if buckets.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.lease(buckets, now).await });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is complete before the next statement that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owed(&self) -> MutexGuard<'_, Owed> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The callers' clock now: the latest time given plus the time since.
    fn now(&self) -> Option<i64> {
        let (at, when) = self.lock().seen?;
        let since = i64::try_from(when.elapsed().as_micros()).unwrap_or(i64::MAX);
        Some(at.saturating_add(since))
    }
}

impl State {
    fn see(&mut self, now: i64) {
        if self.seen.is_none_or(|(at, _)| now > at) {
            self.seen = Some((now, Instant::now()));
        }
    }
}

#[async_trait]
impl RateLimiter for LeasedLimiter {
    async fn check(&self, charges: &[Charge], now: i64) -> Result<Decision> {
        if charges.is_empty() {
            return Ok(Decision::UNLIMITED);
        }
        let mut attempt = 0;
        // Whether this check retired a slice (in any attempt): the store gets what it owes before it is asked.
        let mut retired_any = false;
        loop {
            attempt += 1;
            // Made before looking, so a lease that lands after the look still wakes this check.
            let leased = self.shared.leased.notified();
            tokio::pin!(leased);
            leased.as_mut().enable();
            let Partial {
                mut fold,
                taken,
                missing,
                retired,
                in_flight,
            } = match self.local(charges, now, true, true) {
                Local::Missing(partial) => partial,
                Local::Done(decision, wants) => {
                    self.lease(wants, now);
                    if attempt == 1 {
                        self.shared.lookups.hit();
                    } else {
                        self.shared.lookups.miss();
                    }
                    return Ok(decision);
                }
            };
            retired_any |= retired;
            if in_flight && attempt < ATTEMPTS {
                // A lease of a missing bucket is in flight: its units (already charged in the store) serve this
                // check, and the store's answer would not count them.
                self.give_back(charges, &taken);
                let wait = Duration::from_micros(self.shared.window as u64);
                let _ = tokio::time::timeout(wait, leased).await;
                continue;
            }
            if retired_any && let Err(e) = self.shared.send(Owed::default(), now).await {
                // Kept as owed; the exact check below still runs.
                tracing::debug!(error = %e, "ended rate-limit slices kept for the next sweep");
            }
            self.shared.lookups.miss();
            let exact: Vec<Charge> = missing.iter().map(|&i| charges[i].clone()).collect();
            let answer = match self.shared.inner.check(&exact, now).await {
                Ok(answer) => self.count_held(answer, &exact, now),
                Err(e) => {
                    self.give_back(charges, &taken);
                    return Err(e);
                }
            };
            if answer.allowed {
                self.follow(charges, &missing, now);
            } else {
                self.give_back(charges, &taken);
            }
            fold.merge(answer);
            return Ok(fold.decision());
        }
    }

    fn check_now(&self, charges: &[Charge], now: i64) -> Option<Result<Decision>> {
        if charges.is_empty() {
            return Some(Ok(Decision::UNLIMITED));
        }
        let can_lease = tokio::runtime::Handle::try_current().is_ok();
        match self.local(charges, now, false, can_lease) {
            Local::Done(decision, wants) => {
                self.lease(wants, now);
                self.shared.lookups.hit();
                Some(Ok(decision))
            }
            Local::Missing(_) => None,
        }
    }

    async fn charge(&self, charges: &[Charge], now: i64) -> Result<()> {
        let mut direct = Vec::new();
        {
            let mut state = self.shared.lock();
            state.see(now);
            for c in charges {
                match state.grants.get_mut(&c.bucket) {
                    // A lease in flight counts the tokens when it lands (or the next sweep sends them).
                    Some(g) if g.quota == c.quota && (g.live(now) || g.refilling) => {
                        if g.pending == 0 {
                            g.pending_at = now;
                        }
                        g.pending = g.pending.saturating_add(c.cost);
                    }
                    _ => direct.push(c.clone()),
                }
            }
        }
        if direct.is_empty() {
            return Ok(());
        }
        self.shared.inner.charge(&direct, now).await
    }

    async fn refund(&self, charges: &[Charge], now: i64) -> Result<()> {
        let mut direct = Vec::new();
        {
            let mut state = self.shared.lock();
            for c in charges {
                match state.grants.get_mut(&c.bucket) {
                    Some(g) if g.quota == c.quota && g.live(now) && g.takes_units => {
                        g.units = g.units.saturating_add(c.cost);
                        g.used = g.used.saturating_sub(c.cost);
                    }
                    _ => direct.push(c.clone()),
                }
            }
        }
        if direct.is_empty() {
            return Ok(());
        }
        self.shared.inner.refund(&direct, now).await
    }

    async fn reachable(&self) -> Result<()> {
        self.shared.inner.reachable().await
    }

    /// Gives every unused unit back and sends every token charge (a service calls it at shutdown).
    async fn flush(&self) -> Result<()> {
        let now = self.shared.now().unwrap_or(0);
        let mut out = Owed::default();
        {
            let mut state = self.shared.lock();
            for (bucket, g) in state.grants.drain() {
                if g.pending > 0 {
                    out.charge(charge(&bucket, g.quota, g.pending), g.pending_at);
                }
                if g.units > 0 {
                    out.refunds.push(charge(&bucket, g.quota, g.units));
                }
            }
        }
        self.shared.send(out, now).await?;
        self.shared.inner.flush().await
    }
}
