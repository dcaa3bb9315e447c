//! A bucket's slice as this instance holds it ([`Grant`]), what the store is owed ([`Owed`]), and the two calls
//! that talk to the store: leasing a slice and sending what is owed.

use crate::error::Result;
use crate::limits::{Charge, Quota};

use super::Shared;

/// A slice is at most this fraction of its quota; an instance holds at most two (the one it spends and the next),
/// so another instance is refused early by at most 1/16 of the quota.
const SLICE_DIVISOR: u64 = 32;

/// What the store is owed: token charges made here, units of ended windows, sends that failed.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub(super) charges: Vec<Charge>,
    /// When the earliest of `charges` was made: they are sent as of then, so a late send adds no debt.
    pub(super) charged_at: Option<i64>,
    pub(super) refunds: Vec<Charge>,
}

impl Owed {
    pub(super) fn charge(&mut self, c: Charge, at: i64) {
        self.charges.push(c);
        self.charged_at = Some(self.charged_at.map_or(at, |t| t.min(at)));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.charges.is_empty() && self.refunds.is_empty()
    }

    pub(super) fn append(&mut self, other: Owed) {
        let Owed {
            mut charges,
            charged_at,
            mut refunds,
        } = other;
        self.charges.append(&mut charges);
        self.refunds.append(&mut refunds);
        if let Some(at) = charged_at {
            self.charged_at = Some(self.charged_at.map_or(at, |t| t.min(at)));
        }
    }
}

/// This instance's slice of one bucket.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) quota: Quota,
    /// Units charged in the store and not used yet.
    pub(super) units: u64,
    /// The store's TAT after the last lease, counting `units`.
    pub(super) tat: i64,
    /// Tokens charged here since the last lease, not yet sent, and when the first of them was.
    pub(super) pending: u64,
    pub(super) pending_at: i64,
    /// The window's end: no unit is used at or after it.
    pub(super) until: i64,
    /// Units used since the last lease (the next slice's size), and when it was.
    pub(super) used: u64,
    pub(super) leased_at: i64,
    /// Whether checks take units from it (request limits) or only ask whether it is in debt (token limits).
    pub(super) takes_units: bool,
    /// A lease is in flight; none other starts.
    pub(super) refilling: bool,
    /// After a refused or failed lease, none other before this.
    pub(super) retry_at: i64,
}

impl Grant {
    pub(super) fn new(quota: Quota, now: i64, takes_units: bool) -> Self {
        Grant {
            quota,
            units: 0,
            tat: now,
            pending: 0,
            pending_at: now,
            until: 0,
            used: 0,
            leased_at: now,
            takes_units,
            refilling: false,
            retry_at: 0,
        }
    }

    pub(super) fn live(&self, now: i64) -> bool {
        now < self.until
    }

    /// The bucket's TAT as this instance sees it: the store's at the last lease, less the units not used, plus
    /// the tokens charged since.
    pub(super) fn seen_tat(&self) -> i64 {
        let t = self.quota.emission_micros();
        let units = i64::try_from(self.units).unwrap_or(i64::MAX);
        let pending = i64::try_from(self.pending).unwrap_or(i64::MAX);
        self.tat
            .saturating_sub(units.saturating_mul(t))
            .saturating_add(pending.saturating_mul(t))
    }

    /// The next slice: half a window of the traffic since the last lease, at least 1 and at most 1/32 of the
    /// quota for a request limit; none for a token limit. The next is leased when fewer units than that are
    /// left, half a window before they would run out, so a check rarely waits for one.
    pub(super) fn slice(&self, now: i64, window: i64) -> u64 {
        if !self.takes_units {
            return 0;
        }
        let cap = (self.quota.count / SLICE_DIVISOR).max(1);
        let elapsed = (now - self.leased_at).max(window / 8).max(1);
        let wanted = (u128::from(self.used) * (window / 2) as u128).div_ceil(elapsed as u128);
        u64::try_from(wanted).unwrap_or(u64::MAX).clamp(1, cap)
    }

    pub(super) fn wants_lease(&self, now: i64, window: i64) -> bool {
        !self.refilling
            && now >= self.retry_at
            && (self.until <= now + window / 2 || self.units < self.slice(now, window))
    }
}

impl Shared {
    /// Sends `out` and whatever was owed before: one store call for the charges (as of the earliest of them)
    /// and one for the refunds (as of `now`).
    pub(super) async fn send(&self, out: Owed, now: i64) -> Result<usize> {
        let mut all = std::mem::take(&mut *self.owed());
        all.append(out);
        let sent = all.charges.len();
        if !all.charges.is_empty()
            && let Err(e) = self
                .inner
                .charge(&all.charges, all.charged_at.unwrap_or(now))
                .await
        {
            self.owed().append(all);
            return Err(e);
        }
        if !all.refunds.is_empty()
            && let Err(e) = self.inner.refund(&all.refunds, now).await
        {
            self.owed().append(Owed {
                refunds: all.refunds,
                ..Owed::default()
            });
            return Err(e);
        }
        Ok(sent)
    }

    /// Leases a slice of each bucket, one store call each (after sending its pending tokens, so the answer
    /// counts them), then wakes the checks waiting for one.
    pub(super) async fn lease(&self, buckets: Vec<String>, now: i64) {
        for bucket in buckets {
            let (quota, size, pending, pending_at) = {
                let mut state = self.lock();
                let Some(g) = state.grants.get_mut(&bucket) else {
                    continue;
                };
                let size = g.slice(now, self.window);
                (g.quota, size, std::mem::take(&mut g.pending), g.pending_at)
            };
            if pending > 0
                && let Err(e) = self
                    .inner
                    .charge(&[charge(&bucket, quota, pending)], pending_at)
                    .await
            {
                tracing::debug!(error = %e, bucket, "token charges kept for the next sweep");
                self.owed()
                    .charge(charge(&bucket, quota, pending), pending_at);
            }
            let answer = self.inner.check(&[charge(&bucket, quota, size)], now).await;
            let mut state = self.lock();
            let Some(g) = state.grants.get_mut(&bucket).filter(|g| g.quota == quota) else {
                // Flushed meanwhile: what was leased goes back.
                if matches!(&answer, Ok(d) if d.allowed) && size > 0 {
                    self.owed().refunds.push(charge(&bucket, quota, size));
                }
                continue;
            };
            g.refilling = false;
            match answer {
                Ok(d) if d.allowed => {
                    g.units += size;
                    g.tat = d
                        .tightest
                        .map_or(now, |s| now.saturating_add(s.reset_micros));
                    g.until = now.saturating_add(self.window);
                    g.used = 0;
                    g.leased_at = now;
                }
                Ok(_) => g.retry_at = now.saturating_add(self.window / 4),
                Err(e) => {
                    // Checks fall back to the store, which reports its own failures.
                    tracing::debug!(error = %e, bucket, "could not lease rate-limit units");
                    g.retry_at = now.saturating_add(self.window / 4);
                }
            }
        }
        self.leased.notify_waiters();
    }
}

pub(super) fn charge(bucket: &str, quota: Quota, cost: u64) -> Charge {
    Charge {
        bucket: bucket.to_owned(),
        quota,
        cost,
    }
}
