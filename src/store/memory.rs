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

/// A budget, the bounds of the period last asked about (so the hot path rarely redoes calendar arithmetic), and
/// its spend and reservations by period start. Kept together so one lookup by scope reaches all of it.
#[derive(Debug, Clone)]
struct BudgetEntry {
    budget: Budget,
    bounds: (DateTime<Utc>, DateTime<Utc>),
    spent: BTreeMap<i64, Decimal>,
    reserved: BTreeMap<i64, Decimal>,
}

impl BudgetEntry {
    fn new(budget: Budget) -> Self {
        BudgetEntry {
            budget,
            bounds: (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC),
            spent: BTreeMap::new(),
            reserved: BTreeMap::new(),
        }
    }

    fn period_start(&mut self, at: DateTime<Utc>) -> i64 {
        if !(self.bounds.0 <= at && at < self.bounds.1) {
            self.bounds = self.budget.period.bounds(at, self.budget.tz);
        }
        self.bounds.0.timestamp_micros()
    }

    fn standing(&self, start: i64) -> Standing<'_> {
        Standing {
            budget: &self.budget,
            spent: self.spent.get(&start).copied().unwrap_or_default(),
            reserved: self.reserved.get(&start).copied().unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
struct Held {
    amount: Decimal,
    expires_at: DateTime<Utc>,
    /// (index into `LedgerState::budgets`, period start).
    slots: Vec<(usize, i64)>,
}

/// An event as the log keeps it: the names that repeat across events (owner, org, key, provider, model) are
/// shared, and the request id is shared with the index, so recording allocates for the two ids only.
#[derive(Debug)]
struct StoredEvent {
    event_id: Box<str>,
    request_id: Arc<str>,
    at: DateTime<Utc>,
    key_id: Option<Arc<str>>,
    owner: Arc<str>,
    org: Option<Arc<str>>,
    provider: Arc<str>,
    model: Arc<str>,
    usage: crate::pricing::Usage,
    cost: Decimal,
    credential_source: Option<crate::credentials::CredentialSource>,
}

impl StoredEvent {
    fn to_event(&self) -> UsageEvent {
        UsageEvent {
            event_id: self.event_id.to_string(),
            request_id: self.request_id.to_string(),
            at: self.at,
            key_id: self.key_id.as_deref().map(str::to_owned),
            owner: self.owner.to_string(),
            org: self.org.as_deref().map(str::to_owned),
            provider: self.provider.to_string(),
            model: self.model.to_string(),
            usage: self.usage,
            cost: self.cost,
            credential_source: self.credential_source,
        }
    }
}

/// The in-memory ledger, behind one mutex: a reservation over several budgets is all-or-none by construction.
#[derive(Debug, Default)]
pub(crate) struct LedgerState {
    // Fixed-size chunks: the log grows without ever copying what it holds (one big Vec would move every
    // event on each doubling, a latency spike on the settle path).
    events: Vec<Vec<StoredEvent>>,
    len: usize,
    by_request: HashMap<Arc<str>, usize>,
    names: std::collections::HashSet<Arc<str>>,
    budgets: Vec<BudgetEntry>,
    // Budget indices by scope id, one map per kind, so an event's three scopes are found without allocating.
    by_key: HashMap<String, usize>,
    by_owner: HashMap<String, usize>,
    by_org: HashMap<String, usize>,
    holds: HashMap<u64, Held>,
    expiries: BTreeSet<(DateTime<Utc>, u64)>,
    next_id: u64,
}

const EVENT_CHUNK: usize = 4096;

impl LedgerState {
    fn all_events(&self) -> impl Iterator<Item = &StoredEvent> {
        self.events.iter().flatten()
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(shared.clone());
        shared
    }

    fn index(&self, scope: &BudgetScope) -> Option<usize> {
        match scope {
            BudgetScope::Key(k) => self.by_key.get(k.as_str()),
            BudgetScope::Owner(o) => self.by_owner.get(o.as_str()),
            BudgetScope::Org(o) => self.by_org.get(o.as_str()),
        }
        .copied()
    }

    fn event_budgets(&self, e: &UsageEvent) -> [Option<usize>; 3] {
        [
            e.key_id
                .as_deref()
                .and_then(|k| self.by_key.get(k))
                .copied(),
            self.by_owner.get(e.owner.as_str()).copied(),
            e.org.as_deref().and_then(|o| self.by_org.get(o)).copied(),
        ]
    }

    fn purge(&mut self, now: DateTime<Utc>) {
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.drop_hold(id);
        }
    }

    fn drop_hold(&mut self, id: u64) -> bool {
        let Some(held) = self.holds.remove(&id) else {
            return false;
        };
        self.expiries.remove(&(held.expires_at, id));
        // A zero left in place is cheaper than freeing and re-allocating the entry on the next reserve.
        for (i, start) in held.slots {
            if let Some(r) = self.budgets[i].reserved.get_mut(&start) {
                *r -= held.amount;
            }
        }
        true
    }

    fn record(&mut self, event: &UsageEvent) -> Recorded {
        if let Some(&i) = self.by_request.get(event.request_id.as_str()) {
            return Recorded {
                event_id: self.events[i / EVENT_CHUNK][i % EVENT_CHUNK]
                    .event_id
                    .to_string(),
                duplicate: true,
            };
        }
        for i in self.event_budgets(event).into_iter().flatten() {
            let entry = &mut self.budgets[i];
            let start = entry.period_start(event.at);
            *entry.spent.entry(start).or_default() += event.cost;
        }
        let request_id: Arc<str> = Arc::from(event.request_id.as_str());
        self.by_request.insert(request_id.clone(), self.len);
        let stored = StoredEvent {
            event_id: event.event_id.as_str().into(),
            request_id,
            at: event.at,
            key_id: event.key_id.as_deref().map(|k| self.intern(k)),
            owner: self.intern(&event.owner),
            org: event.org.as_deref().map(|o| self.intern(o)),
            provider: self.intern(&event.provider),
            model: self.intern(&event.model),
            usage: event.usage,
            cost: event.cost,
            credential_source: event.credential_source,
        };
        if self.len.is_multiple_of(EVENT_CHUNK) {
            self.events.push(Vec::with_capacity(EVENT_CHUNK));
        }
        if let Some(chunk) = self.events.last_mut() {
            chunk.push(stored);
        }
        self.len += 1;
        Recorded {
            event_id: event.event_id.clone(),
            duplicate: false,
        }
    }
}

impl MemoryStore {
    fn ledger(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counter inside a reservation id this store made.
    fn hold_number(&self, reservation_id: &str) -> Option<u64> {
        reservation_id
            .strip_prefix(self.reservation_prefix.as_str())?
            .parse()
            .ok()
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
            .all_events()
            .map(StoredEvent::to_event)
            .filter(|e| filter.matches(e))
            .collect();
        out.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.event_id.cmp(&b.event_id)));
        Ok(out)
    }

    async fn set_budget(&self, budget: &Budget) -> Result<()> {
        let mut state = self.ledger();
        let scope = &budget.scope;
        let mut entry = BudgetEntry::new(budget.clone());
        // Count this scope's spend under the (possibly new) period and time zone.
        for e in state.all_events().map(StoredEvent::to_event).filter(|e| scope.covers(e)) {
            let start = entry.period_start(e.at);
            *entry.spent.entry(start).or_default() += e.cost;
        }
        match state.index(scope) {
            Some(i) => {
                // Live reservations keep their holds; they were taken under the old period's starts.
                entry.reserved = std::mem::take(&mut state.budgets[i].reserved);
                state.budgets[i] = entry;
            }
            None => {
                let i = state.budgets.len();
                state.budgets.push(entry);
                let id = scope.id().to_owned();
                match scope {
                    BudgetScope::Key(_) => state.by_key.insert(id, i),
                    BudgetScope::Owner(_) => state.by_owner.insert(id, i),
                    BudgetScope::Org(_) => state.by_org.insert(id, i),
                };
            }
        }
        Ok(())
    }

    async fn budget(&self, scope: &BudgetScope) -> Result<Option<Budget>> {
        let state = self.ledger();
        Ok(state.index(scope).map(|i| state.budgets[i].budget.clone()))
    }

    async fn budget_status(
        &self,
        scope: &BudgetScope,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetStatus>> {
        let mut state = self.ledger();
        state.purge(now);
        let Some(i) = state.index(scope) else {
            return Ok(None);
        };
        let start = state.budgets[i].period_start(now);
        let s = state.budgets[i].standing(start);
        Ok(Some(BudgetStatus::new(s.budget, s.spent, s.reserved, now)))
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
        let mut slots: Vec<(usize, i64)> = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let Some(i) = state.index(scope) else {
                continue;
            };
            if slots.iter().any(|(j, _)| *j == i) {
                continue;
            }
            slots.push((i, state.budgets[i].period_start(now)));
        }
        admit(slots.iter().map(|&(i, start)| state.budgets[i].standing(start)), amount)?;
        for &(i, start) in &slots {
            *state.budgets[i].reserved.entry(start).or_default() += amount;
        }
        state.next_id += 1;
        let number = state.next_id;
        let expires_at = now + ttl;
        state.expiries.insert((expires_at, number));
        let scopes = slots
            .iter()
            .map(|&(i, _)| state.budgets[i].budget.scope.clone())
            .collect();
        state.holds.insert(
            number,
            Held {
                amount,
                expires_at,
                slots,
            },
        );
        Ok(Reservation {
            id: format!("{}{number}", self.reservation_prefix),
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
        let number = self.hold_number(reservation_id);
        let mut state = self.ledger();
        state.purge(now);
        if let Some(n) = number {
            state.drop_hold(n);
        }
        Ok(state.record(event))
    }

    async fn release(&self, reservation_id: &str) -> Result<bool> {
        let Some(n) = self.hold_number(reservation_id) else {
            return Ok(false);
        };
        Ok(self.ledger().drop_hold(n))
    }
}
