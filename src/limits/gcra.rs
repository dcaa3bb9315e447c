//! The rule: GCRA (generic cell rate algorithm, the one `governor` uses) as pure functions of (state, now, cost).
//!
//! A bucket's whole state is its *theoretical arrival time* (TAT), in microseconds since the epoch: when the
//! bucket would be empty again if nothing more came. A unit costs the quota's emission interval `T = period /
//! count`; a request of cost `c` is admitted when `max(TAT, now) + c·T − period ≤ now`, so a full quota may arrive
//! at once (burst = the whole quota) and then one unit every `T`. No stored TAT, or one in the past, is a full
//! bucket. Backends only load and store TATs atomically; every decision is made here.

use crate::limits::quota::{Period, Quota};

/// One limit a check charges: which bucket, under which quota, how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The bucket's name, unique per scope, kind and quota (see [`crate::limits::bucket_name`]).
    pub bucket: String,
    /// The quota.
    pub quota: Quota,
    /// Units to take: 1 for a request, 0 for a token limit's pre-check, the tokens used for a token charge.
    pub cost: u64,
}

/// The numbers of one limit after a check (the fields of the IETF `RateLimit` header draft).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// The quota's count.
    pub limit: u64,
    /// The quota's period.
    pub period: Period,
    /// Units left now (after this check's charge, when it was admitted).
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_micros: i64,
    /// Microseconds until this check would be admitted; 0 when it was.
    pub retry_after_micros: i64,
}

impl LimitStatus {
    /// `retry_after` in whole seconds, rounded up (what a `Retry-After` header carries).
    pub fn retry_after_secs(&self) -> u64 {
        secs_up(self.retry_after_micros)
    }

    /// `reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        secs_up(self.reset_micros)
    }
}

fn secs_up(micros: i64) -> u64 {
    u64::try_from(micros.max(0)).map_or(0, |m| m.div_ceil(1_000_000))
}

/// The answer to a check of every limit that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether every limit admitted the request (and each was charged); when not, none was.
    pub allowed: bool,
    /// The tightest limit: when refused, the one to wait longest for; when admitted, the one with the fewest
    /// units left. `None` when no limit applied.
    pub tightest: Option<LimitStatus>,
}

impl Decision {
    /// A check with no limit to apply.
    pub const UNLIMITED: Decision = Decision {
        allowed: true,
        tightest: None,
    };
}

fn cost_micros(quota: &Quota, cost: u64) -> i64 {
    i64::try_from(cost)
        .unwrap_or(i64::MAX)
        .saturating_mul(quota.emission_micros())
}

/// Decides one bucket: whether `cost` units fit at `now`, the TAT to store if they do, and the limit's numbers.
pub fn decide(tat: Option<i64>, now: i64, quota: &Quota, cost: u64) -> (bool, i64, LimitStatus) {
    let period = quota.period.micros();
    let t = quota.emission_micros();
    let start = tat.map_or(now, |tat| tat.max(now));
    let new_tat = start.saturating_add(cost_micros(quota, cost));
    let allow_at = new_tat.saturating_sub(period);
    let remaining_at = |tat: i64| {
        let room = period.saturating_sub(tat.saturating_sub(now)).max(0);
        u64::try_from(room / t).unwrap_or(0).min(quota.count)
    };
    if allow_at <= now {
        let status = LimitStatus {
            limit: quota.count,
            period: quota.period,
            remaining: remaining_at(new_tat),
            reset_micros: new_tat - now,
            retry_after_micros: 0,
        };
        (true, new_tat, status)
    } else {
        let status = LimitStatus {
            limit: quota.count,
            period: quota.period,
            remaining: remaining_at(start),
            reset_micros: start - now,
            retry_after_micros: allow_at - now,
        };
        (false, start, status)
    }
}

/// Adds `cost` units whatever the bucket holds (a token charge after the response: the bucket may go into debt,
/// and the next check waits). Returns the TAT to store.
pub fn force(tat: Option<i64>, now: i64, quota: &Quota, cost: u64) -> i64 {
    tat.map_or(now, |tat| tat.max(now))
        .saturating_add(cost_micros(quota, cost))
}

/// Takes back `cost` units a check charged (a request a later step refused): the bucket's TAT moves back by their
/// time, never before `now` (a full bucket stays full). Returns the TAT to store.
pub fn refund(tat: Option<i64>, now: i64, quota: &Quota, cost: u64) -> i64 {
    tat.map_or(now, |tat| {
        tat.saturating_sub(cost_micros(quota, cost)).max(now)
    })
}

/// Decides every charge at once, all or none: `states[i]` is the stored TAT of `charges[i]`'s bucket. Returns the
/// decision and, when admitted, the TAT to store for each charge (in order); when refused, nothing is to be stored.
pub fn decide_all(states: &[Option<i64>], now: i64, charges: &[Charge]) -> (Decision, Vec<i64>) {
    let mut fold = Tightest::default();
    let mut tats = Vec::with_capacity(charges.len());
    for (charge, &tat) in charges.iter().zip(states) {
        let (ok, new_tat, status) = decide(tat, now, &charge.quota, charge.cost);
        tats.push(new_tat);
        fold.add(ok, status);
    }
    let decision = fold.decision();
    if !decision.allowed {
        tats.clear();
    }
    (decision, tats)
}

/// Folds the answers of one check's limits, in order, into its [`Decision`]: admitted when every limit admitted,
/// and the tightest limit as [`Decision::tightest`] says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tightest {
    allowed: bool,
    tightest: Option<LimitStatus>,
}

impl Default for Tightest {
    fn default() -> Self {
        Tightest {
            allowed: true,
            tightest: None,
        }
    }
}

impl Tightest {
    /// Adds one limit's answer.
    pub(crate) fn add(&mut self, ok: bool, status: LimitStatus) {
        // `allowed` still says whether every earlier limit admitted.
        let tighter = match self.tightest {
            None => true,
            Some(t) => match (ok, self.allowed) {
                (false, true) => true,
                (false, false) => status.retry_after_micros > t.retry_after_micros,
                (true, false) => false,
                (true, true) => (status.remaining, status.limit) < (t.remaining, t.limit),
            },
        };
        if tighter {
            self.tightest = Some(status);
        }
        self.allowed &= ok;
    }

    /// Adds another check's decision (its tightest limit stands for all of its limits).
    pub(crate) fn merge(&mut self, other: Decision) {
        match other.tightest {
            Some(status) => self.add(other.allowed, status),
            None => self.allowed &= other.allowed,
        }
    }

    /// The decision.
    pub(crate) fn decision(self) -> Decision {
        Decision {
            allowed: self.allowed,
            tightest: self.tightest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn q(s: &str) -> Quota {
        s.parse().unwrap()
    }

    #[test]
    fn burst_is_the_whole_quota_then_one_per_interval() {
        let quota = q("100/min");
        let mut tat = None;
        for i in 0..100 {
            let (ok, new, status) = decide(tat, 0, &quota, 1);
            assert!(ok, "request {i}");
            assert_eq!(status.remaining, 99 - i);
            tat = Some(new);
        }
        let (ok, _, status) = decide(tat, 0, &quota, 1);
        assert!(!ok);
        assert_eq!((status.remaining, status.retry_after_micros), (0, 600_000));
        assert_eq!(status.reset_micros, 60 * S);
        // 0.6 s later one more fits, and only one.
        let (ok, new, _) = decide(tat, 600_000, &quota, 1);
        assert!(ok);
        assert!(!decide(Some(new), 600_000, &quota, 1).0);
    }

    #[test]
    fn a_bucket_refills_and_never_holds_more_than_its_quota() {
        let quota = q("10/s");
        let (_, tat, _) = decide(None, 0, &quota, 10);
        // Long idle: full again, but still only 10.
        let (ok, _, status) = decide(Some(tat), 100 * S, &quota, 10);
        assert!(ok);
        assert_eq!(status.remaining, 0);
        assert!(!decide(Some(tat), 100 * S, &quota, 11).0);
    }

    #[test]
    fn tokens_go_into_debt_and_the_next_precheck_waits() {
        let quota = q("1000/min");
        // 3000 tokens used at once: two minutes of debt beyond the burst.
        let tat = force(None, 0, &quota, 3000);
        let (ok, _, status) = decide(Some(tat), 0, &quota, 0);
        assert!(!ok);
        assert_eq!(status.retry_after_micros, 120 * S);
        assert!(decide(Some(tat), 120 * S, &quota, 0).0);
    }

    #[test]
    fn all_or_none_and_the_tightest_limit() {
        let charges = [
            Charge {
                bucket: "a".into(),
                quota: q("5/s"),
                cost: 1,
            },
            Charge {
                bucket: "b".into(),
                quota: q("2/min"),
                cost: 1,
            },
        ];
        let (d, tats) = decide_all(&[None, None], 0, &charges);
        assert!(d.allowed);
        assert_eq!(d.tightest.unwrap().limit, 2);
        assert_eq!(d.tightest.unwrap().remaining, 1);
        let (d, tats) = decide_all(&[Some(tats[0]), Some(tats[1])], 0, &charges);
        assert!(d.allowed);
        let (d, none) = decide_all(&[Some(tats[0]), Some(tats[1])], 0, &charges);
        assert!(!d.allowed && none.is_empty());
        let t = d.tightest.unwrap();
        assert_eq!((t.limit, t.retry_after_micros), (2, 30 * S));
        assert_eq!(t.retry_after_secs(), 30);
    }

    #[test]
    fn uneven_intervals_never_admit_more_than_the_quota() {
        let quota = q("7/min");
        let mut tat = None;
        let mut admitted = 0;
        for _ in 0..20 {
            let (ok, new, _) = decide(tat, 0, &quota, 1);
            if ok {
                admitted += 1;
                tat = Some(new);
            }
        }
        assert_eq!(admitted, 7);
    }
}
