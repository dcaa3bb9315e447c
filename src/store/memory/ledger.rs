//! [`Ledger`] in memory, behind one mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::error::{Error, Result};
use crate::ledger::lease::{Lease, LeaseAsk, drawn, grant};
use crate::ledger::{
    Budget, BudgetScope, BudgetStatus, Claim, EventFilter, Ledger, Recorded, Reservation, Standing,
    UsageEvent, admit,
};
use crate::store::memory::MemoryStore;

/// A budget, the bounds of the period last asked about (so the hot path rarely redoes calendar arithmetic), and
/// its spend and reservations by period start. Kept together so one lookup by scope reaches all of it.
#[derive(Debug, Clone)]
struct BudgetEntry {
    budget: Budget,
    /// Its alert marks, so a spend update that crosses none costs a comparison or two.
    marks: crate::alerts::Marks,
    bounds: (DateTime<Utc>, DateTime<Utc>),
    spent: BTreeMap<i64, Decimal>,
    reserved: BTreeMap<i64, Decimal>,
}

impl BudgetEntry {
    fn new(budget: Budget) -> Self {
        BudgetEntry {
            marks: crate::alerts::Marks::of(&budget),
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
    /// The request id it claims, if any.
    request: Option<Arc<str>>,
    /// The instance that renews it, if any.
    instance: Option<Arc<str>>,
    /// What to bill if it lapses unsettled.
    estimate: Option<Box<UsageEvent>>,
    /// The id its caller chose (a lease's, [`Ledger::lease`], or a carved draw's, [`Ledger::carve`]).
    name: Option<Arc<str>>,
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
    estimated: bool,
    estimated_first: bool,
    /// Most events carry none: no allocation then.
    tags: Box<[Arc<str>]>,
    end_user: Option<Arc<str>>,
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
            estimated: self.estimated,
            estimated_first: self.estimated_first,
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
            end_user: self.end_user.as_deref().map(str::to_owned),
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
    // Request ids of pruned events, with their event ids: a late resend stays a duplicate.
    pruned: HashMap<Arc<str>, Arc<str>>,
    names: std::collections::HashSet<Arc<str>>,
    budgets: Vec<BudgetEntry>,
    // Budget indices by scope id, one map per kind, so an event's three scopes are found without allocating.
    by_key: HashMap<String, usize>,
    by_owner: HashMap<String, usize>,
    by_org: HashMap<String, usize>,
    holds: HashMap<u64, Held>,
    // Request ids claimed by live holds.
    claims: HashMap<Arc<str>, u64>,
    // Holds whose ids their callers chose (leases, and holds carved from them), by id.
    named: HashMap<Arc<str>, u64>,
    expiries: BTreeSet<(DateTime<Utc>, u64)>,
    next_id: u64,
    // Under the ledger's lock, so a budget's alerts are written with the spend that crossed its marks.
    pub(super) outbox: super::outbox::OutboxState,
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

    /// Ends the lapsed holds: those with an estimate are billed it, the others freed. Returns how many were
    /// billed.
    fn purge(&mut self, now: DateTime<Utc>) -> u64 {
        let mut billed = 0;
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            if let Some(estimate) = self.take_hold(id).and_then(|held| held.estimate) {
                self.record(&estimate);
                billed += 1;
            }
        }
        billed
    }

    fn drop_hold(&mut self, id: u64) -> bool {
        self.take_hold(id).is_some()
    }

    fn take_hold(&mut self, id: u64) -> Option<Held> {
        let held = self.holds.remove(&id)?;
        self.expiries.remove(&(held.expires_at, id));
        if let Some(request) = &held.request {
            self.claims.remove(request);
        }
        if let Some(name) = &held.name {
            self.named.remove(name);
        }
        // A zero left in place is cheaper than freeing and re-allocating the entry on the next reserve.
        for &(i, start) in &held.slots {
            if let Some(r) = self.budgets[i].reserved.get_mut(&start) {
                *r -= held.amount;
            }
        }
        Some(held)
    }

    fn renew(&mut self, instance: &str, expires_at: DateTime<Utc>) -> u64 {
        let mut renewed = 0;
        for (&id, held) in &mut self.holds {
            if held.instance.as_deref() == Some(instance) {
                self.expiries.remove(&(held.expires_at, id));
                held.expires_at = expires_at;
                self.expiries.insert((expires_at, id));
                renewed += 1;
            }
        }
        renewed
    }

    /// Admits and holds `amount` against the budgets of `scopes` (after a purge), with `claim`.
    fn reserve(
        &mut self,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
        claim: Claim<'_>,
        prefix: &str,
    ) -> Result<Reservation> {
        let mut slots: Vec<(usize, i64)> = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let Some(i) = self.index(scope) else {
                continue;
            };
            if slots.iter().any(|(j, _)| *j == i) {
                continue;
            }
            slots.push((i, self.budgets[i].period_start(now)));
        }
        admit(
            slots
                .iter()
                .map(|&(i, start)| self.budgets[i].standing(start)),
            amount,
            now,
        )?;
        Ok(self.hold(slots, amount, now + ttl, claim, None, prefix))
    }

    /// Holds `amount` in `slots` (admitted already) until `expires_at`, with `claim`.
    fn hold(
        &mut self,
        slots: Vec<(usize, i64)>,
        amount: Decimal,
        expires_at: DateTime<Utc>,
        claim: Claim<'_>,
        name: Option<&str>,
        prefix: &str,
    ) -> Reservation {
        for &(i, start) in &slots {
            *self.budgets[i].reserved.entry(start).or_default() += amount;
        }
        self.next_id += 1;
        let number = self.next_id;
        self.expiries.insert((expires_at, number));
        let scopes = slots
            .iter()
            .map(|&(i, _)| self.budgets[i].budget.scope.clone())
            .collect();
        let request: Option<Arc<str>> = claim.request_id.map(Arc::from);
        if let Some(r) = &request {
            self.claims.insert(r.clone(), number);
        }
        let instance = claim.instance.map(|i| self.intern(i));
        let name: Option<Arc<str>> = name.map(Arc::from);
        if let Some(id) = &name {
            self.named.insert(id.clone(), number);
        }
        self.holds.insert(
            number,
            Held {
                amount,
                expires_at,
                request,
                instance,
                estimate: claim.estimate.map(|e| Box::new(e.clone())),
                name,
                slots,
            },
        );
        Reservation {
            id: self
                .holds
                .get(&number)
                .and_then(|h| h.name.as_deref())
                .map_or_else(|| format!("{prefix}{number}"), str::to_owned),
            amount,
            expires_at,
            scopes,
        }
    }

    /// Grows or shrinks lease `ask.id` of `ask.instance` as the budgets allow ([`grant`]).
    fn lease(
        &mut self,
        ask: &LeaseAsk<'_>,
        now: DateTime<Utc>,
        ttl: Duration,
        prefix: &str,
    ) -> Result<Lease> {
        let mut held = Decimal::ZERO;
        if let Some(&n) = self.named.get(ask.id) {
            if self.holds.get(&n).and_then(|h| h.instance.as_deref()) != Some(ask.instance) {
                return Err(Error::invalid("lease id", "held by another instance"));
            }
            held = self.take_hold(n).map_or(Decimal::ZERO, |h| h.amount);
        }
        let mut slots: Vec<(usize, i64)> = Vec::with_capacity(ask.scopes.len());
        for scope in ask.scopes {
            let Some(i) = self.index(scope) else {
                continue;
            };
            if !slots.iter().any(|(j, _)| *j == i) {
                slots.push((i, self.budgets[i].period_start(now)));
            }
        }
        let lease = grant(
            slots
                .iter()
                .map(|&(i, start)| self.budgets[i].standing(start)),
            held,
            ask.change,
            now,
        );
        if let Some(room) = lease.room.filter(|r| *r > Decimal::ZERO) {
            let claim = Claim::default().instance(Some(ask.instance));
            self.hold(slots, room, now + ttl, claim, Some(ask.id), prefix);
        }
        Ok(lease)
    }

    /// Moves draw `id`'s amount out of its lease into a hold of its own billed `estimate` if it lapses.
    fn carve(
        &mut self,
        id: &str,
        estimate: &UsageEvent,
        instance: &str,
        expires_at: DateTime<Utc>,
        prefix: &str,
    ) -> bool {
        let Some((lease, amount)) = drawn(id) else {
            return false;
        };
        let request = estimate.request_id.as_str();
        if self.by_request.contains_key(request)
            || self.pruned.contains_key(request)
            || self.claims.contains_key(request)
            || self.named.contains_key(id)
        {
            return false;
        }
        let Some(slots) = self
            .named
            .get(lease)
            .and_then(|n| self.holds.get(n))
            .filter(|h| h.instance.as_deref() == Some(instance))
            .map(|h| h.slots.clone())
        else {
            return false;
        };
        self.shrink_lease(lease, amount);
        let claim = Claim::request(request)
            .instance(Some(instance))
            .estimate(estimate);
        self.hold(slots, amount, expires_at, claim, Some(id), prefix);
        true
    }

    /// Ends the hold `id` names when it is a carved draw (whose lease then keeps its room); whether it was.
    fn end_named(&mut self, id: &str) -> bool {
        match self.named.get(id) {
            Some(&n) if drawn(id).is_some() => self.drop_hold(n),
            _ => false,
        }
    }

    /// Takes a settled draw's `amount` out of lease `lease` (what the draw held there).
    fn shrink_lease(&mut self, lease: &str, amount: Decimal) {
        let Some(&n) = self.named.get(lease) else {
            return;
        };
        let Some(held) = self.holds.get_mut(&n) else {
            return;
        };
        let by = amount.min(held.amount);
        held.amount -= by;
        for &(i, start) in &held.slots {
            if let Some(r) = self.budgets[i].reserved.get_mut(&start) {
                *r -= by;
            }
        }
    }

    /// Adds `amount` to budget `b`'s spend in the period of `at`, alerting the marks it crosses (at `now`).
    fn add_spend(&mut self, b: usize, at: DateTime<Utc>, amount: Decimal, now: DateTime<Utc>) {
        let entry = &mut self.budgets[b];
        let start = entry.period_start(at);
        let spent = entry.spent.entry(start).or_default();
        let before = *spent;
        *spent += amount;
        let after = *spent;
        if entry.marks.crossed(before, after)
            && let Some(start) = DateTime::from_timestamp_micros(start)
        {
            let alerts =
                crate::alerts::Alert::budget_crossings(&entry.budget, start, before, after, now);
            self.outbox.insert(&alerts);
        }
    }

    fn record(&mut self, event: &UsageEvent) -> Recorded {
        if let Some(event_id) = self.pruned.get(event.request_id.as_str()) {
            return Recorded {
                event_id: event_id.to_string(),
                duplicate: true,
                replaced: false,
            };
        }
        if let Some(&i) = self.by_request.get(event.request_id.as_str()) {
            let stored = self.events[i / EVENT_CHUNK][i % EVENT_CHUNK].to_event();
            if !stored.is_replaced_by(event) {
                return Recorded {
                    event_id: stored.event_id,
                    duplicate: true,
                    replaced: false,
                };
            }
            let replaced = stored.replaced_by(event);
            let delta = replaced.cost - stored.cost;
            for b in self.event_budgets(&stored).into_iter().flatten() {
                self.add_spend(b, stored.at, delta, event.at);
            }
            let slot = &mut self.events[i / EVENT_CHUNK][i % EVENT_CHUNK];
            slot.usage = replaced.usage;
            slot.cost = replaced.cost;
            slot.credential_source = replaced.credential_source;
            slot.estimated = false;
            slot.estimated_first = true;
            return Recorded {
                event_id: stored.event_id,
                duplicate: false,
                replaced: true,
            };
        }
        for i in self.event_budgets(event).into_iter().flatten() {
            self.add_spend(i, event.at, event.cost, event.at);
        }
        let stored = StoredEvent {
            event_id: event.event_id.as_str().into(),
            request_id: Arc::from(event.request_id.as_str()),
            at: event.at,
            key_id: event.key_id.as_deref().map(|k| self.intern(k)),
            owner: self.intern(&event.owner),
            org: event.org.as_deref().map(|o| self.intern(o)),
            provider: self.intern(&event.provider),
            model: self.intern(&event.model),
            usage: event.usage,
            cost: event.cost,
            credential_source: event.credential_source,
            estimated: event.estimated,
            estimated_first: event.estimated_first,
            tags: event.tags.iter().map(|t| self.intern(t)).collect(),
            end_user: event.end_user.as_deref().map(|u| self.intern(u)),
        };
        self.push(stored);
        Recorded {
            event_id: event.event_id.clone(),
            duplicate: false,
            replaced: false,
        }
    }

    /// Appends `stored` to the log and indexes its request id.
    fn push(&mut self, stored: StoredEvent) {
        self.by_request.insert(stored.request_id.clone(), self.len);
        if self.len.is_multiple_of(EVENT_CHUNK) {
            self.events.push(Vec::with_capacity(EVENT_CHUNK));
        }
        if let Some(chunk) = self.events.last_mut() {
            chunk.push(stored);
        }
        self.len += 1;
    }
}

impl MemoryStore {
    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, LedgerState> {
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
        event.validate()?;
        Ok(self.ledger().record(event))
    }

    async fn record_batch(&self, events: &[UsageEvent]) -> Result<Vec<Recorded>> {
        events.iter().try_for_each(UsageEvent::validate)?;
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

    async fn event(&self, request_id: &str) -> Result<Option<UsageEvent>> {
        let state = self.ledger();
        Ok(state
            .by_request
            .get(request_id)
            .map(|&i| state.events[i / EVENT_CHUNK][i % EVENT_CHUNK].to_event()))
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut state = self.ledger();
        let old = std::mem::take(&mut state.events);
        state.len = 0;
        state.by_request.clear();
        let mut pruned = 0;
        for stored in old.into_iter().flatten() {
            if stored.at < before {
                state
                    .pruned
                    .insert(stored.request_id, Arc::from(stored.event_id));
                pruned += 1;
            } else {
                state.push(stored);
            }
        }
        Ok(pruned)
    }

    async fn set_budget(&self, budget: &Budget) -> Result<()> {
        budget.validate()?;
        let mut state = self.ledger();
        let scope = &budget.scope;
        if let Some(i) = state.index(scope) {
            let entry = &mut state.budgets[i];
            if entry.budget.period == budget.period && entry.budget.tz == budget.tz {
                // Same periods: the spend stands as counted (pruned events included).
                entry.budget = budget.clone();
                entry.marks = crate::alerts::Marks::of(budget);
                return Ok(());
            }
        }
        let mut entry = BudgetEntry::new(budget.clone());
        // Count this scope's spend under the (possibly new) period and time zone.
        for e in state
            .all_events()
            .map(StoredEvent::to_event)
            .filter(|e| scope.covers(e))
        {
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

    async fn delete_budget(&self, scope: &BudgetScope) -> Result<bool> {
        let mut state = self.ledger();
        let id = scope.id();
        // Out of the index: no request meets it again. The entry stays behind, unreachable, so the holds that
        // refer to it by position keep working until they end.
        let removed = match scope {
            BudgetScope::Key(_) => state.by_key.remove(id),
            BudgetScope::Owner(_) => state.by_owner.remove(id),
            BudgetScope::Org(_) => state.by_org.remove(id),
        };
        Ok(removed.is_some())
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

    async fn reserve_claim(
        &self,
        claim: Claim<'_>,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Reservation> {
        crate::ledger::validate_reservation(scopes, amount, ttl)?;
        crate::ledger::validate_claim(&claim)?;
        let mut state = self.ledger();
        state.purge(now);
        if let Some(request_id) = claim.request_id {
            let taken = |event_id: Option<String>, cost: Option<Decimal>| Error::DuplicateRequest {
                request_id: request_id.to_owned(),
                event_id,
                cost,
            };
            if let Some(event_id) = state.pruned.get(request_id) {
                return Err(taken(Some(event_id.to_string()), None));
            }
            if let Some(&i) = state.by_request.get(request_id) {
                let e = &state.events[i / EVENT_CHUNK][i % EVENT_CHUNK];
                return Err(taken(Some(e.event_id.to_string()), Some(e.cost)));
            }
            if state.claims.contains_key(request_id) {
                return Err(taken(None, None));
            }
        }
        state.reserve(scopes, amount, now, ttl, claim, &self.reservation_prefix)
    }

    async fn renew(&self, instance: &str, now: DateTime<Utc>, ttl: Duration) -> Result<u64> {
        Ok(self.ledger().renew(instance, now + ttl))
    }

    async fn sweep(&self, now: DateTime<Utc>) -> Result<u64> {
        Ok(self.ledger().purge(now))
    }

    async fn settle(
        &self,
        reservation_id: &str,
        event: &UsageEvent,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        event.validate()?;
        let number = self.hold_number(reservation_id);
        let mut state = self.ledger();
        state.purge(now);
        if let Some(n) = number {
            state.drop_hold(n);
        }
        let carved = state.end_named(reservation_id);
        let recorded = state.record(event);
        if let Some((lease, amount)) = drawn(reservation_id)
            && !recorded.duplicate
            && !carved
        {
            state.shrink_lease(lease, amount);
        }
        Ok(recorded)
    }

    async fn settle_batch(
        &self,
        settles: &[(&str, &UsageEvent)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>> {
        crate::ledger::validate_settles(settles)?;
        let numbers: Vec<Option<u64>> =
            settles.iter().map(|(id, _)| self.hold_number(id)).collect();
        let mut state = self.ledger();
        state.purge(now);
        let mut out = Vec::with_capacity(settles.len());
        for ((id, event), number) in settles.iter().zip(numbers) {
            if let Some(n) = number {
                state.drop_hold(n);
            }
            let carved = state.end_named(id);
            let recorded = state.record(event);
            if let Some((lease, amount)) = drawn(id)
                && !recorded.duplicate
                && !carved
            {
                state.shrink_lease(lease, amount);
            }
            out.push(recorded);
        }
        Ok(out)
    }

    async fn lease(&self, ask: LeaseAsk<'_>, now: DateTime<Utc>, ttl: Duration) -> Result<Lease> {
        crate::ledger::lease::validate(&ask)?;
        crate::validate::positive("lease ttl", ttl)?;
        let mut state = self.ledger();
        state.purge(now);
        state.lease(&ask, now, ttl, &self.reservation_prefix)
    }

    async fn carve(
        &self,
        holds: &[(&str, &UsageEvent)],
        instance: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Vec<bool>> {
        crate::ledger::lease::validate_carve(holds, instance, ttl)?;
        let mut state = self.ledger();
        state.purge(now);
        Ok(holds
            .iter()
            .map(|(id, estimate)| {
                state.carve(id, estimate, instance, now + ttl, &self.reservation_prefix)
            })
            .collect())
    }

    async fn end_leases(&self, instance: &str, current: &str) -> Result<u64> {
        let earlier = format!("{instance}.");
        let mut state = self.ledger();
        let leases: Vec<u64> = state
            .holds
            .iter()
            .filter(|(_, h)| {
                h.request.is_none()
                    && h.estimate.is_none()
                    && h.instance
                        .as_deref()
                        .is_some_and(|i| i.starts_with(&earlier) && i != current)
            })
            .map(|(&n, _)| n)
            .collect();
        for &n in &leases {
            state.drop_hold(n);
        }
        Ok(leases.len() as u64)
    }

    async fn release(&self, reservation_id: &str) -> Result<bool> {
        let Some(n) = self.hold_number(reservation_id) else {
            return Ok(self.ledger().end_named(reservation_id));
        };
        Ok(self.ledger().drop_hold(n))
    }
}
