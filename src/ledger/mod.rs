//! The ledger: usage events recorded once, spend reports, and budgets enforced by reserve → settle / release.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use chrono::{Duration, Utc};
//! use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, UsageEvent};
//! use keymeter::pricing::Usage;
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//! use rust_decimal::Decimal;
//!
//! let ledger = MemoryStore::new();
//! let alice = BudgetScope::Owner("alice".into());
//! ledger.set_budget(&Budget::new(alice.clone(), Decimal::new(100, 2), BudgetPeriod::Monthly)?).await?;
//!
//! let now = Utc::now();
//! let hold = ledger.reserve(&[alice.clone()], Decimal::new(60, 2), now, Duration::minutes(5)).await?;
//! // A second request cannot reserve past the $1.00 limit while the first is in flight.
//! assert!(ledger.reserve(&[alice.clone()], Decimal::new(50, 2), now, Duration::minutes(5)).await.is_err());
//! let event = UsageEvent::new(Some("req-1"), now, "alice", "openai", "gpt-4o", Usage::default(),
//!                             Decimal::new(42, 2), &OsRandom)?;
//! ledger.settle(&hold.id, &event, now).await?;
//! let status = ledger.budget_status(&alice, now).await?.unwrap();
//! assert_eq!((status.spent, status.reserved, status.remaining), (Decimal::new(42, 2), Decimal::ZERO, Decimal::new(58, 2)));
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

pub mod budget;
pub mod event;
pub mod journal;
pub mod lease;
pub mod meter;
pub mod period;
pub mod report;
pub mod transfer;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

pub use budget::{Budget, BudgetScope, BudgetStatus, Reservation, parse_amount, parse_thresholds};
pub use event::{EventCursor, EventFilter, Recorded, UsageEvent};
pub use meter::{Hold, Meter, Metered, MeteredRequest, Payer, ReportedUsage, Unsettled};
pub use period::BudgetPeriod;
pub use report::{Estimated, GroupBy, Report, ReportGroup, aggregate};

use crate::error::{Error, Result};

/// Usage events and budgets. Object safe: `Arc<dyn Ledger>` works. Every call that must be atomic on a shared
/// database is one call: record (idempotent), reserve (all budgets or none), settle (release and record).
#[async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Records an event once: a second event with the same request id adds nothing and says `duplicate`.
    ///
    /// # Errors
    /// Backend failures.
    async fn record(&self, event: &UsageEvent) -> Result<Recorded>;

    /// Records many events in one transaction (each idempotent as in [`Ledger::record`]).
    ///
    /// # Errors
    /// Backend failures; nothing of the batch is stored then.
    async fn record_batch(&self, events: &[UsageEvent]) -> Result<Vec<Recorded>>;

    /// The events passing `filter`, oldest first.
    ///
    /// # Errors
    /// Backend failures.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<UsageEvent>>;

    /// The stored event of `request_id`, if any (none once pruned).
    ///
    /// # Errors
    /// Backend failures.
    async fn event(&self, request_id: &str) -> Result<Option<UsageEvent>> {
        Ok(self
            .events(&EventFilter::default())
            .await?
            .into_iter()
            .find(|e| e.request_id == request_id))
    }

    /// Up to `limit` events passing `filter` that come after `after` in the order of [`Ledger::events`]
    /// (oldest first, then by event id): pages for streaming every event with bounded memory.
    ///
    /// # Errors
    /// Backend failures.
    async fn events_after(
        &self,
        filter: &EventFilter,
        after: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>> {
        Ok(self
            .events(filter)
            .await?
            .into_iter()
            .filter(|e| after.is_none_or(|c| c.precedes(e)))
            .take(limit)
            .collect())
    }

    /// Deletes the events from before `before`, returning how many. Budgets' spend is kept (it is never
    /// recounted from events), and a pruned event's request id stays recorded: a late resend is a duplicate.
    ///
    /// # Errors
    /// Backend failures; nothing is pruned then.
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Spend and tokens of the events passing `filter`, grouped by `by` (calendar groups in `tz`).
    ///
    /// # Errors
    /// Backend failures.
    async fn report(&self, filter: &EventFilter, by: GroupBy, tz: Tz) -> Result<Report> {
        Ok(aggregate(&self.events(filter).await?, by, tz))
    }

    /// Sets (or replaces) the budget of a scope. A new budget, or one whose period or time zone changes, counts
    /// its spend from the events stored; a budget whose limits alone change keeps its spend.
    ///
    /// # Errors
    /// Backend failures.
    async fn set_budget(&self, budget: &Budget) -> Result<()>;

    /// Removes the budget of `scope`, and its spend counters with it: requests are no longer held to it, and a
    /// budget set for the scope later counts its spend from the events stored then (events pruned before no
    /// longer count). Holds already taken stay until settled or released. Whether there was one.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_budget(&self, scope: &BudgetScope) -> Result<bool>;

    /// The budget of `scope`, if any.
    ///
    /// # Errors
    /// Backend failures.
    async fn budget(&self, scope: &BudgetScope) -> Result<Option<Budget>>;

    /// Where the budget of `scope` stands at `now` (expired reservations no longer count).
    ///
    /// # Errors
    /// Backend failures.
    async fn budget_status(
        &self,
        scope: &BudgetScope,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetStatus>>;

    /// Reserves `amount` against the budgets of every scope in `scopes` that has one, atomically: all or none,
    /// and keeps `claim` with the reservation in the same step:
    /// - its request id, if any: while the reservation lives no other reservation can claim the id, and an id
    ///   already recorded (or pruned) is refused; releasing the reservation (or its expiry) frees the id, settling
    ///   it records the id's event;
    /// - the instance whose journal holds it, which renews it ([`Ledger::renew`]);
    /// - the event billed if it lapses unsettled ([`Ledger::sweep`]).
    ///
    /// The reservation expires at `now + ttl` unless settled, released or renewed first. The one reservation
    /// method a backend implements; [`Ledger::reserve`] and [`Ledger::reserve_request`] are this with less.
    ///
    /// # Errors
    /// [`Error::BudgetExceeded`] for the first budget that would go over, [`Error::DuplicateRequest`] when the
    /// id is held or recorded (nothing is reserved then); backend failures.
    async fn reserve_claim(
        &self,
        claim: Claim<'_>,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Reservation>;

    /// [`Ledger::reserve_claim`] with no claim beyond the amount.
    ///
    /// # Errors
    /// As [`Ledger::reserve_claim`].
    async fn reserve(
        &self,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Reservation> {
        self.reserve_claim(Claim::default(), scopes, amount, now, ttl)
            .await
    }

    /// [`Ledger::reserve_claim`] claiming `request_id`.
    ///
    /// # Errors
    /// As [`Ledger::reserve_claim`].
    async fn reserve_request(
        &self,
        request_id: &str,
        scopes: &[BudgetScope],
        amount: Decimal,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Reservation> {
        self.reserve_claim(Claim::request(request_id), scopes, amount, now, ttl)
            .await
    }

    /// Renews every reservation `instance` holds to expire `ttl` after now by the store's clock (PostgreSQL's
    /// own; the caller's `now` on the embedded backends, which share the caller's machine); returns how many.
    /// A live instance calls it every few seconds, so its claims never lapse while it lives and lapse within
    /// `ttl` of its death. The default renews nothing.
    ///
    /// # Errors
    /// Backend failures.
    async fn renew(&self, instance: &str, now: DateTime<Utc>, ttl: Duration) -> Result<u64> {
        let _ = (instance, now, ttl);
        Ok(0)
    }

    /// The safety net: bills each lapsed reservation that carries an estimate ([`Claim::estimate`]) as that
    /// `estimated` event (once: a request id already recorded adds nothing) and frees the lapsed ones without
    /// one, which were never sent. Never deletes a claim unbilled. Returns how many it billed. Reserves and
    /// settles sweep too; a service calls this now and then so an idle store sweeps as well. The default does
    /// nothing.
    ///
    /// # Errors
    /// Backend failures.
    async fn sweep(&self, now: DateTime<Utc>) -> Result<u64> {
        let _ = now;
        Ok(0)
    }

    /// Ends a reservation and records the request's actual event, atomically. The actual cost may be lower or
    /// higher than reserved: it is what was spent. An expired or unknown reservation still records the event.
    ///
    /// # Errors
    /// Backend failures.
    async fn settle(
        &self,
        reservation_id: &str,
        event: &UsageEvent,
        now: DateTime<Utc>,
    ) -> Result<Recorded>;

    /// Settles many reservations, each as [`Ledger::settle`] would (an event per reservation, idempotent by
    /// request id), in one atomic step on every bundled backend: what a journal's drain writes, so the store
    /// commits once per batch rather than once per request. The default settles them one by one.
    ///
    /// # Errors
    /// As [`Ledger::settle`]; on the bundled backends nothing of the batch is written then.
    async fn settle_batch(
        &self,
        settles: &[(&str, &UsageEvent)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>> {
        let mut out = Vec::with_capacity(settles.len());
        for (reservation_id, event) in settles {
            out.push(self.settle(reservation_id, event, now).await?);
        }
        Ok(out)
    }

    /// Leases budget room to an instance (DESIGN §14, [`lease`]), atomically: ends the lease `ask.replaces` (if
    /// the instance still holds it), then reserves `ask.keep` (whatever the budgets say: holds drawn from the old
    /// lease and not yet ended) plus as much of `ask.want` as every budget of `ask.scopes` has room for
    /// ([`lease::grant`]), as a reservation of `ask.instance` without a request id or estimate: renewed with the
    /// instance's other claims ([`Ledger::renew`]), freed if it lapses. No reservation is written when no scope
    /// has a budget, or when there is nothing to hold. The default refuses: such a ledger is only reserved
    /// against request by request.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad ask; backend failures (nothing changes then).
    async fn lease(
        &self,
        ask: lease::LeaseAsk<'_>,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<lease::Lease> {
        let _ = (ask, now, ttl);
        Err(Error::Config(
            "this ledger does not lease budget room".to_owned(),
        ))
    }

    /// Carves holds drawn from leases ([`lease::draw_id`]) out of them, atomically: each becomes a reservation of
    /// its own under its draw id — its amount moved from its lease (room the lease held, so nothing is admitted
    /// again), claiming its estimate's request id, held by `instance` and billed its estimate if it lapses
    /// ([`Ledger::sweep`]) — as the per-request reservations of [`Ledger::reserve_claim`] are. What a journal's
    /// heartbeat writes for the holds still open, so a machine lost with its journal has them billed. A draw
    /// whose request id is recorded or claimed already, or whose lease is gone, is left (`false`). A later
    /// settle of a carved draw ends its reservation and leaves the lease alone. The default carves nothing.
    ///
    /// # Errors
    /// Backend failures (nothing is carved then).
    async fn carve(
        &self,
        holds: &[(&str, &UsageEvent)],
        instance: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Vec<bool>> {
        let _ = (instance, now, ttl);
        Ok(vec![false; holds.len()])
    }

    /// Ends the leases ([`Ledger::lease`]) that earlier runs of `instance` left behind — those of claimants
    /// `{instance}.…` other than `current` (the naming of [`journal::Journal::claimant`]) — so their room is back
    /// at once rather than when they lapse. A restarted instance calls it once its journal's replay is in the
    /// store (the replay's settles and bills are what those leases held room for). Returns how many it ended.
    /// The default ends none (they lapse).
    ///
    /// # Errors
    /// Backend failures.
    async fn end_leases(&self, instance: &str, current: &str) -> Result<u64> {
        let _ = (instance, current);
        Ok(0)
    }

    /// Frees a reservation; returns whether it was still held.
    ///
    /// # Errors
    /// Backend failures.
    async fn release(&self, reservation_id: &str) -> Result<bool>;
}

/// What a reservation claims beside its amount ([`Ledger::reserve_claim`]).
///
/// ```
/// use keymeter::ledger::Claim;
///
/// let claim = Claim::request("req-7").instance(Some("gw-1"));
/// assert_eq!((claim.request_id, claim.instance), (Some("req-7"), Some("gw-1")));
/// assert!(claim.estimate.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    /// The caller's request id, claimed with the reservation (see [`Ledger::reserve_request`]).
    pub request_id: Option<&'a str>,
    /// The instance whose journal holds the reservation and renews it ([`Ledger::renew`]).
    pub instance: Option<&'a str>,
    /// The event the store bills if the reservation lapses unsettled ([`Ledger::sweep`]): the request at its
    /// reservation, marked `estimated`.
    pub estimate: Option<&'a UsageEvent>,
}

impl<'a> Claim<'a> {
    /// A claim of `request_id`.
    pub fn request(request_id: &'a str) -> Self {
        Claim {
            request_id: Some(request_id),
            ..Claim::default()
        }
    }

    /// Held by `instance`.
    #[must_use]
    pub fn instance(mut self, instance: Option<&'a str>) -> Self {
        self.instance = instance;
        self
    }

    /// Billed as `estimate` if it lapses.
    #[must_use]
    pub fn estimate(mut self, estimate: &'a UsageEvent) -> Self {
        self.estimate = Some(estimate);
        self
    }
}

/// One budget's standing, as a backend reads it inside its atomic step.
#[derive(Debug, Clone)]
pub struct Standing<'a> {
    /// The budget.
    pub budget: &'a Budget,
    /// Settled spend in the period containing the reservation time.
    pub spent: Decimal,
    /// Live reservations in that period.
    pub reserved: Decimal,
}

/// The admission rule every backend applies: each budget must have room for `amount` at `at`. Pure.
///
/// # Errors
/// [`Error::BudgetExceeded`] for the first budget without room, with its numbers and when its period ends.
pub fn admit<'a>(
    standings: impl IntoIterator<Item = Standing<'a>>,
    amount: Decimal,
    at: DateTime<Utc>,
) -> Result<()> {
    for s in standings {
        if s.spent + s.reserved + amount > s.budget.limit {
            return Err(Error::BudgetExceeded {
                scope: s.budget.scope.to_string(),
                limit: s.budget.limit,
                spent: s.spent,
                reserved: s.reserved,
                requested: amount,
                period_end: s.budget.period.bounds(at, s.budget.tz).1,
            });
        }
    }
    Ok(())
}

/// Checks a batch of settles' events as every backend does before writing any of them.
///
/// # Errors
/// The first invalid event's error.
pub fn validate_settles(settles: &[(&str, &UsageEvent)]) -> Result<()> {
    settles.iter().try_for_each(|(_, event)| event.validate())
}

/// Checks a claim as every backend does before reserving: a well-formed request id and instance, an estimate
/// that is itself a valid event.
///
/// # Errors
/// [`Error::InvalidInput`]; the estimate's own errors.
pub fn validate_claim(claim: &Claim<'_>) -> Result<()> {
    if let Some(id) = claim.request_id {
        crate::validate::name("request id", id)?;
    }
    if let Some(instance) = claim.instance {
        crate::validate::name("instance", instance)?;
    }
    if let Some(estimate) = claim.estimate {
        estimate.validate()?;
    }
    Ok(())
}

/// Checks a reservation's arguments as every backend does first: valid scopes, an amount that is not negative,
/// a positive time to live.
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn validate_reservation(scopes: &[BudgetScope], amount: Decimal, ttl: Duration) -> Result<()> {
    for scope in scopes {
        scope.validate()?;
    }
    crate::validate::amount("amount", amount)?;
    crate::validate::positive("reservation ttl", ttl)
}

/// A fresh reservation id.
pub(crate) fn reservation_id(random: &dyn crate::random::RandomSource) -> Result<String> {
    let mut id = [0u8; 16];
    crate::random::fill_base62(random, &mut id)?;
    Ok(format!(
        "rsv_{}",
        id.iter().map(|&b| char::from(b)).collect::<String>()
    ))
}

/// A backend's page of events selected by the indexed fields of a filter (never by a tag or an end user): what
/// [`attributed`] pages through.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) trait EventPages: Sync {
    fn events_page(
        &self,
        f: &EventFilter,
        after: Option<&EventCursor>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<UsageEvent>>> + Send;
}

/// The page of events after `after` that `f` selects, at most `limit`, from `store`'s pages: a filter on a tag
/// or an end user reads the pages of the rest of the filter and keeps what matches, so paging stays exact.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) async fn attributed(
    store: &impl EventPages,
    f: &EventFilter,
    after: Option<&EventCursor>,
    limit: usize,
) -> Result<Vec<UsageEvent>> {
    if !f.by_attribution() {
        return store.events_page(f, after, limit).await;
    }
    const PAGE: usize = 1000;
    let base = f.without_attribution();
    let mut cursor = after.cloned();
    let mut out = Vec::new();
    loop {
        let read = store.events_page(&base, cursor.as_ref(), PAGE).await?;
        let last = read.len() < PAGE;
        cursor = read.last().map(EventCursor::after);
        for e in read {
            if out.len() == limit {
                return Ok(out);
            }
            if f.matches(&e) {
                out.push(e);
            }
        }
        if last || out.len() == limit {
            return Ok(out);
        }
    }
}
