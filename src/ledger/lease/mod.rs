//! Budget leases (DESIGN §14): an instance takes a slice of a budget's remaining room from the store in one
//! transaction and reserves against it in memory, so a hold drawn from a warm lease costs no database round trip.
//!
//! A lease is a reservation of its instance ([`Ledger::lease`](super::Ledger::lease) grows and shrinks it): the
//! store counts it as reserved like any other, the instance's heartbeat renews it
//! ([`Ledger::renew`](super::Ledger::renew)) and it lapses within the claim TTL of the instance's death, giving
//! its room back. A draw's id ([`draw_id`]) names its lease and amount, so the store's settle of the draw moves
//! the amount out of the lease as the cost goes into the spend, in one step: settled + reserved never counts a hold
//! twice nor misses one. [`Leases`] keeps, per set of scopes, the room leased and the part in use (holds drawn
//! and not yet settled or released).
//!
//! The window for new holds is short: a used lease is resized at least every [`LeaseConfig::window`] (so a budget
//! changed elsewhere is seen within it), refilled in the background at a low-water mark, and shrunk to what is
//! in use once traffic stops. When a lease cannot cover a hold even after a resize, [`Leases::draw`] answers
//! `None` and the caller asks the store for exact room ([`Ledger::reserve_claim`](super::Ledger::reserve_claim)):
//! a budget is never refused from an empty slice alone. The most it refuses early is the room other instances
//! hold in live windows.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::ledger::lease::{LeaseConfig, Leases};
//! use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, UsageEvent};
//! use keymeter::pricing::Usage;
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//! use rust_decimal::Decimal;
//!
//! let store = Arc::new(MemoryStore::new());
//! let alice = BudgetScope::Owner("alice".into());
//! store.set_budget(&Budget::new(alice.clone(), Decimal::new(10, 0), BudgetPeriod::Monthly)?).await?;
//! let leases = Leases::new(store.clone(), "gw-1", LeaseConfig::default());
//!
//! // The first draw leases room for eight such holds; the next seven cost no store call.
//! let draw = leases.draw(&[alice.clone()], Decimal::ONE).await.expect("room");
//! let now = chrono::Utc::now();
//! assert_eq!(store.budget_status(&alice, now).await?.unwrap().reserved, Decimal::new(8, 0));
//!
//! // Settled at 40 cents: the spend takes the cost and the lease gives up the dollar held for it.
//! let event = UsageEvent::new(Some("req-1"), now, "alice", "openai", "gpt-4o", Usage::default(),
//!                             Decimal::new(40, 2), &OsRandom)?;
//! store.settle(&draw.id, &event, now).await?;
//! leases.settled(&draw.id);
//! let status = store.budget_status(&alice, now).await?.unwrap();
//! assert_eq!((status.spent, status.reserved), (Decimal::new(40, 2), Decimal::new(7, 0)));
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

mod book;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

pub use book::{Draw, LeaseConfig, Leases};

use super::{BudgetScope, Standing};

/// What an instance asks of the store for one lease ([`Ledger::lease`](super::Ledger::lease)).
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    /// The lease's id, chosen by the instance ([`lease_id`]) and kept for as long as it leases these scopes.
    pub id: &'a str,
    /// The instance holding it (renews it with [`Ledger::renew`](super::Ledger::renew)).
    pub instance: &'a str,
    /// The budget scopes it holds room in.
    pub scopes: &'a [BudgetScope],
    /// How much the lease should grow (positive: granted as far as every budget has room) or shrink (negative:
    /// always done, down to nothing).
    pub change: Decimal,
}

/// What the store did with a lease ([`Ledger::lease`](super::Ledger::lease)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The change made: the growth granted (at most the growth asked) or the shrink done.
    pub change: Decimal,
    /// The room the lease holds now; `None` when no scope has a budget (then nothing is held, and nothing limits
    /// the draws).
    pub room: Option<Decimal>,
    /// When the lease stops covering new holds: the end of the earliest budget period it holds room in.
    pub until: DateTime<Utc>,
}

/// The grant rule every backend applies inside its atomic step: `standings` are the lease's budgets as they
/// stand without the lease, which held `held` until now; the answer is the change made and the room held after.
/// Growth is granted as far as every budget has room after `held`; a shrink is done down to nothing. Pure.
///
/// ```
/// use keymeter::ledger::lease::grant;
/// use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Standing};
/// use rust_decimal::Decimal;
///
/// let budget = Budget::new(BudgetScope::Owner("alice".into()), Decimal::new(10, 0), BudgetPeriod::Total).unwrap();
/// let standing = Standing { budget: &budget, spent: Decimal::new(6, 0), reserved: Decimal::ZERO };
/// let lease = grant([standing], Decimal::ONE, Decimal::new(5, 0), chrono::Utc::now());
/// // 10 - 6 = 4 left beside the lease's 1: it grows by 3 of the 5 asked, to 4.
/// assert_eq!((lease.change, lease.room), (Decimal::new(3, 0), Some(Decimal::new(4, 0))));
/// ```
pub fn grant<'a>(
    standings: impl IntoIterator<Item = Standing<'a>>,
    held: Decimal,
    change: Decimal,
    at: DateTime<Utc>,
) -> Lease {
    let mut left: Option<Decimal> = None;
    let mut until = DateTime::<Utc>::MAX_UTC;
    for s in standings {
        let room = (s.budget.limit - s.spent - s.reserved - held).max(Decimal::ZERO);
        left = Some(left.map_or(room, |l| l.min(room)));
        until = until.min(s.budget.period.bounds(at, s.budget.tz).1);
    }
    let Some(left) = left else {
        return Lease {
            change,
            room: None,
            until,
        };
    };
    let change = if change > Decimal::ZERO {
        change.min(left)
    } else {
        change.max(-held)
    };
    Lease {
        change,
        room: Some(held + change),
        until,
    }
}

/// A lease's id for `instance`'s `n`th set of scopes in one run (`run` a fresh random mark): what
/// [`LeaseAsk::id`] takes.
pub fn lease_id(run: &str, n: usize) -> String {
    format!("{LEASE_PREFIX}{run}_{n}")
}

const LEASE_PREFIX: &str = "lse_";

/// The id of a hold of `amount` drawn from lease `lease` ([`Leases::draw`]), numbered `n`: the store's settle
/// of it shrinks the lease by `amount` ([`drawn`]).
pub fn draw_id(lease: &str, amount: Decimal, n: u64) -> String {
    format!("{lease}/{amount}/{n}")
}

/// The lease and amount of a draw id ([`draw_id`]); `None` for any other reservation id. What a backend's
/// settle reads: the settled hold's amount leaves its lease in the settle's own step, as its cost enters the
/// spend, so settled + reserved never counts a hold twice.
///
/// ```
/// use keymeter::ledger::lease::{draw_id, drawn};
/// use rust_decimal::Decimal;
///
/// let id = draw_id("lse_x_0", Decimal::new(5, 2), 7);
/// assert_eq!(drawn(&id), Some(("lse_x_0", Decimal::new(5, 2))));
/// assert_eq!(drawn("rsv_abc"), None);
/// ```
pub fn drawn(reservation_id: &str) -> Option<(&str, Decimal)> {
    if !reservation_id.starts_with(LEASE_PREFIX) {
        return None;
    }
    let mut parts = reservation_id.split('/');
    let (lease, amount, n) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || n.parse::<u64>().is_err() {
        return None;
    }
    let amount: Decimal = amount.parse().ok()?;
    (amount >= Decimal::ZERO).then_some((lease, amount))
}

/// Checks a lease ask as every backend does first.
///
/// # Errors
/// [`crate::Error::InvalidInput`].
pub fn validate(ask: &LeaseAsk<'_>) -> crate::Result<()> {
    for scope in ask.scopes {
        scope.validate()?;
    }
    crate::validate::name("lease id", ask.id)?;
    crate::validate::name("instance", ask.instance)?;
    crate::validate::amount("lease change", ask.change.abs())
}

/// Checks a carving's arguments as every backend does first ([`Ledger::carve`](super::Ledger::carve)): the
/// instance's name, a positive time to live, estimates that are valid events.
///
/// # Errors
/// [`crate::Error::InvalidInput`]; an estimate's own errors.
pub fn validate_carve(
    holds: &[(&str, &super::UsageEvent)],
    instance: &str,
    ttl: chrono::Duration,
) -> crate::Result<()> {
    crate::validate::name("instance", instance)?;
    crate::validate::positive("claim ttl", ttl)?;
    holds
        .iter()
        .try_for_each(|(_, estimate)| estimate.validate())
}
