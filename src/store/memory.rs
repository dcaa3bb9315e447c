//! The in-memory backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::credentials::{
    CredentialScope, CredentialStore, Provider, SealedCredential, StoredCredential,
};
use crate::error::{Error, Result};
use crate::keys::{KeyFilter, KeyHash, KeyLookup, KeyRecord, KeyStore, MAX_KEYS_PER_HINT};
use crate::ledger::{
    Budget, BudgetScope, BudgetStatus, EventFilter, Ledger, Recorded, Reservation, Standing,
    UsageEvent, admit,
};

#[derive(Debug, Default)]
struct Keys {
    by_id: HashMap<String, Arc<KeyRecord>>,
    by_digest: HashMap<String, String>,
    by_hint: HashMap<String, Vec<String>>,
    // Insertion order, so `list` is oldest first like the SQL backends.
    order: Vec<String>,
}

impl Keys {
    /// Copy-on-write update of one record: readers holding the old `Arc` keep a consistent snapshot.
    fn update(&mut self, id: &str, f: impl FnOnce(&mut KeyRecord)) -> Result<()> {
        let slot = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::key_not_found(id))?;
        f(Arc::make_mut(slot));
        Ok(())
    }
}

/// Keeps everything in process memory; share it as `Arc<MemoryStore>` (or `Arc<dyn KeyStore>`).
#[derive(Debug)]
pub struct MemoryStore {
    keys: RwLock<Keys>,
    credentials: RwLock<BTreeMap<(CredentialScope, Provider), SealedCredential>>,
    ledger: std::sync::Mutex<LedgerState>,
    // Reservation ids are this per-store random prefix and a counter: unique without a syscall per reserve.
    reservation_prefix: String,
}

impl Default for MemoryStore {
    fn default() -> Self {
        let prefix = crate::ledger::reservation_id(&crate::random::OsRandom)
            .unwrap_or_else(|_| "rsv_".into());
        MemoryStore {
            keys: RwLock::default(),
            credentials: RwLock::default(),
            ledger: std::sync::Mutex::default(),
            reservation_prefix: format!("{prefix}_"),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    // A panic while holding the lock cannot leave a half-written record (updates are copy-on-write), so a
    // poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create(&self, record: &KeyRecord) -> Result<()> {
        let mut keys = self.write();
        if keys.by_id.contains_key(&record.id) {
            return Err(Error::AlreadyExists {
                what: "key",
                id: record.id.clone(),
            });
        }
        match &record.lookup {
            KeyLookup::Id => {}
            KeyLookup::Digest(d) => {
                if keys.by_digest.contains_key(d) {
                    return Err(Error::AlreadyExists {
                        what: "key digest",
                        id: d.clone(),
                    });
                }
                keys.by_digest.insert(d.clone(), record.id.clone());
            }
            KeyLookup::Hint(h) => {
                let ids = keys.by_hint.entry(h.clone()).or_default();
                if ids.len() >= MAX_KEYS_PER_HINT {
                    return Err(Error::HintFull {
                        hint: h.clone(),
                        max: MAX_KEYS_PER_HINT,
                    });
                }
                ids.push(record.id.clone());
            }
        }
        keys.order.push(record.id.clone());
        keys.by_id
            .insert(record.id.clone(), Arc::new(record.clone()));
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>> {
        Ok(self.read().by_id.get(id).cloned())
    }

    async fn find_by_digest(&self, digest: &str) -> Result<Option<Arc<KeyRecord>>> {
        let keys = self.read();
        Ok(keys
            .by_digest
            .get(digest)
            .and_then(|id| keys.by_id.get(id))
            .cloned())
    }

    async fn find_by_hint(&self, hint: &str) -> Result<Vec<Arc<KeyRecord>>> {
        let keys = self.read();
        Ok(keys
            .by_hint
            .get(hint)
            .into_iter()
            .flatten()
            .take(MAX_KEYS_PER_HINT)
            .filter_map(|id| keys.by_id.get(id).cloned())
            .collect())
    }

    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let keys = self.read();
        Ok(keys
            .order
            .iter()
            .filter_map(|id| keys.by_id.get(id))
            .filter(|r| filter.matches(r))
            .map(|r| KeyRecord::clone(r))
            .collect())
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        self.write().update(id, |r| {
            r.revoked_at.get_or_insert(at);
        })
    }

    async fn revoke_org(&self, org: &str, at: DateTime<Utc>) -> Result<Vec<String>> {
        let mut keys = self.write();
        let ids: Vec<String> = keys
            .by_id
            .values()
            .filter(|r| r.org.as_deref() == Some(org) && r.revoked_at.is_none())
            .map(|r| r.id.clone())
            .collect();
        for id in &ids {
            keys.update(id, |r| r.revoked_at = Some(at))?;
        }
        Ok(ids)
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        self.write().update(id, |r| r.disabled = disabled)
    }

    async fn replace_hash(&self, id: &str, old: &KeyHash, new: &KeyHash) -> Result<bool> {
        let mut keys = self.write();
        match keys.by_id.get(id) {
            Some(r) if r.hash == *old => {
                keys.update(id, |r| r.hash = new.clone())?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_use(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let mut keys = self.write();
        if keys
            .by_id
            .get(id)
            .is_some_and(|r| r.last_used_at.is_none_or(|t| t < at))
        {
            keys.update(id, |r| r.last_used_at = Some(at))?;
        }
        Ok(())
    }
}

impl MemoryStore {
    fn creds(
        &self,
    ) -> RwLockWriteGuard<'_, BTreeMap<(CredentialScope, Provider), SealedCredential>> {
        self.credentials.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl CredentialStore for MemoryStore {
    async fn put(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<()> {
        self.creds()
            .insert((scope.clone(), provider.clone()), sealed.clone());
        Ok(())
    }

    async fn get(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
    ) -> Result<Option<SealedCredential>> {
        let creds = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        Ok(creds.get(&(scope.clone(), provider.clone())).cloned())
    }

    async fn delete(&self, scope: &CredentialScope, provider: &Provider) -> Result<bool> {
        Ok(self
            .creds()
            .remove(&(scope.clone(), provider.clone()))
            .is_some())
    }

    async fn delete_all(&self, scope: &CredentialScope) -> Result<u64> {
        let mut creds = self.creds();
        let before = creds.len();
        creds.retain(|(s, _), _| s != scope);
        Ok((before - creds.len()) as u64)
    }

    async fn providers(&self, scope: &CredentialScope) -> Result<Vec<Provider>> {
        let creds = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        Ok(creds
            .keys()
            .filter(|(s, _)| s == scope)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn list(&self) -> Result<Vec<StoredCredential>> {
        let creds = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        Ok(creds
            .iter()
            .map(|((scope, provider), sealed)| StoredCredential {
                scope: scope.clone(),
                provider: provider.clone(),
                sealed: sealed.clone(),
            })
            .collect())
    }

    async fn replace(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        old: &SealedCredential,
        new: &SealedCredential,
    ) -> Result<bool> {
        let mut creds = self.creds();
        match creds.get_mut(&(scope.clone(), provider.clone())) {
            Some(current) if current == old => {
                *current = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A budget with the bounds of the period last asked about, so the hot path rarely redoes calendar arithmetic.
#[derive(Debug, Clone)]
struct BudgetEntry {
    budget: Budget,
    bounds: (DateTime<Utc>, DateTime<Utc>),
}

impl BudgetEntry {
    fn period_start(&mut self, at: DateTime<Utc>) -> i64 {
        if !(self.bounds.0 <= at && at < self.bounds.1) {
            self.bounds = self.budget.period.bounds(at, self.budget.tz);
        }
        self.bounds.0.timestamp_micros()
    }
}

#[derive(Debug)]
struct Held {
    amount: Decimal,
    expires_at: DateTime<Utc>,
    slots: Vec<(BudgetScope, i64)>,
}

#[derive(Debug, Default)]
pub(crate) struct LedgerState {
    events: Vec<UsageEvent>,
    by_request: HashMap<String, usize>,
    budgets: HashMap<BudgetScope, BudgetEntry>,
    spent: HashMap<(BudgetScope, i64), Decimal>,
    reserved: HashMap<(BudgetScope, i64), Decimal>,
    holds: HashMap<String, Held>,
    expiries: BTreeSet<(DateTime<Utc>, String)>,
    next_id: u64,
}

impl LedgerState {
    fn purge(&mut self, now: DateTime<Utc>) {
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            if let Some((_, id)) = self.expiries.pop_first() {
                self.drop_hold(&id);
            }
        }
    }

    fn drop_hold(&mut self, id: &str) -> bool {
        let Some(held) = self.holds.remove(id) else {
            return false;
        };
        self.expiries.remove(&(held.expires_at, id.to_owned()));
        for slot in held.slots {
            if let Some(r) = self.reserved.get_mut(&slot) {
                *r -= held.amount;
                if r.is_zero() {
                    self.reserved.remove(&slot);
                }
            }
        }
        true
    }

    fn record(&mut self, event: &UsageEvent) -> Recorded {
        if let Some(&i) = self.by_request.get(&event.request_id) {
            return Recorded {
                event_id: self.events[i].event_id.clone(),
                duplicate: true,
            };
        }
        for scope in BudgetScope::of_event(event) {
            if let Some(entry) = self.budgets.get_mut(&scope) {
                let start = entry.period_start(event.at);
                *self.spent.entry((scope, start)).or_default() += event.cost;
            }
        }
        self.by_request
            .insert(event.request_id.clone(), self.events.len());
        self.events.push(event.clone());
        Recorded {
            event_id: event.event_id.clone(),
            duplicate: false,
        }
    }

    fn standing(&mut self, scope: &BudgetScope, now: DateTime<Utc>) -> Option<(Standing, i64)> {
        let entry = self.budgets.get_mut(scope)?;
        let start = entry.period_start(now);
        let key = (scope.clone(), start);
        let standing = Standing {
            budget: entry.budget.clone(),
            spent: self.spent.get(&key).copied().unwrap_or_default(),
            reserved: self.reserved.get(&key).copied().unwrap_or_default(),
        };
        Some((standing, start))
    }
}

impl MemoryStore {
    fn ledger(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Ledger for MemoryStore {
    async fn record(&self, event: &UsageEvent) -> Result<Recorded> {
        Ok(self.ledger().record(event))
    }

    async fn record_batch(&self, events: &[UsageEvent]) -> Result<Vec<Recorded>> {
        let mut state = self.ledger();
        Ok(events.iter().map(|e| state.record(e)).collect())
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<UsageEvent>> {
        let state = self.ledger();
        let mut out: Vec<UsageEvent> = state
            .events
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.event_id.cmp(&b.event_id)));
        Ok(out)
    }

    async fn set_budget(&self, budget: &Budget) -> Result<()> {
        let mut state = self.ledger();
        let scope = budget.scope.clone();
        // Recount this scope's spend under the (possibly new) period and time zone.
        state.spent.retain(|(s, _), _| *s != scope);
        let mut entry = BudgetEntry {
            budget: budget.clone(),
            bounds: (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC),
        };
        let mut spent: HashMap<(BudgetScope, i64), Decimal> = HashMap::new();
        for e in state.events.iter().filter(|e| scope.covers(e)) {
            *spent
                .entry((scope.clone(), entry.period_start(e.at)))
                .or_default() += e.cost;
        }
        state.spent.extend(spent);
        state.budgets.insert(scope, entry);
        Ok(())
    }

    async fn budget(&self, scope: &BudgetScope) -> Result<Option<Budget>> {
        Ok(self.ledger().budgets.get(scope).map(|e| e.budget.clone()))
    }

    async fn budget_status(
        &self,
        scope: &BudgetScope,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetStatus>> {
        let mut state = self.ledger();
        state.purge(now);
        Ok(state
            .standing(scope, now)
            .map(|(s, _)| BudgetStatus::new(&s.budget, s.spent, s.reserved, now)))
    }

    async fn reserve(
        &self,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Reservation> {
        if amount.is_sign_negative() {
            return Err(Error::invalid("amount", "must not be negative"));
        }
        let mut state = self.ledger();
        state.purge(now);
        let mut standings = Vec::with_capacity(scopes.len());
        let mut slots = Vec::with_capacity(scopes.len());
        for scope in scopes {
            if slots.iter().any(|(s, _)| s == scope) {
                continue;
            }
            if let Some((standing, start)) = state.standing(scope, now) {
                standings.push(standing);
                slots.push((scope.clone(), start));
            }
        }
        admit(&standings, amount)?;
        state.next_id += 1;
        let id = format!("{}{}", self.reservation_prefix, state.next_id);
        for slot in &slots {
            *state.reserved.entry(slot.clone()).or_default() += amount;
        }
        let expires_at = now + ttl;
        state.expiries.insert((expires_at, id.clone()));
        let scopes = slots.iter().map(|(s, _)| s.clone()).collect();
        state.holds.insert(
            id.clone(),
            Held {
                amount,
                expires_at,
                slots,
            },
        );
        Ok(Reservation {
            id,
            amount,
            expires_at,
            scopes,
        })
    }

    async fn settle(
        &self,
        reservation_id: &str,
        event: &UsageEvent,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let mut state = self.ledger();
        state.purge(now);
        state.drop_hold(reservation_id);
        Ok(state.record(event))
    }

    async fn release(&self, reservation_id: &str) -> Result<bool> {
        Ok(self.ledger().drop_hold(reservation_id))
    }
}
