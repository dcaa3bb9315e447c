//! Bucket states in process memory: shards of `bucket → TAT` so that checks of different keys do not wait for one
//! lock. The in-memory store keeps its buckets here, and so does [`LocalLimiter`](crate::limits::LocalLimiter),
//! which also reads the states changed since its last write to the store (each state's `dirty` flag).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use crate::limits::{Charge, Decision, Quota, gcra};

const SHARDS: usize = 16;
// Past this many states a shard drops the full buckets (their TAT has passed: the same as no state) that are
// not waiting to be written.
const PRUNE_AT: usize = 4096;

/// One bucket: its theoretical arrival time, and whether it changed since the states were last taken.
#[derive(Debug, Clone, Copy)]
struct State {
    tat: i64,
    dirty: bool,
}

/// Bucket names are built by keymeter from stored scopes, never taken from a request: a fast hasher is safe.
type Shard = HashMap<String, State, foldhash::fast::RandomState>;
/// The locked shards of one check, in shard order.
type Locked<'a> = Vec<(usize, MutexGuard<'a, Shard>)>;

/// A change to a bucket whatever it holds: [`gcra::force`] or [`gcra::refund`].
pub(crate) type Rule = fn(Option<i64>, i64, &Quota, u64) -> i64;

/// Sharded bucket states.
#[derive(Debug, Default)]
pub(crate) struct Buckets {
    shards: [Mutex<Shard>; SHARDS],
}

impl Buckets {
    fn shard_of(bucket: &str) -> usize {
        // A fixed hasher: the same bucket always lands in the same shard.
        (foldhash::fast::FixedState::with_seed(0x6b6d).hash_one(bucket) as usize) % SHARDS
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a half-made decision: states are written after deciding.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks every shard the charges touch, in shard order (so two checks never wait for each other in a
    /// cycle), and returns the guards with each charge's shard.
    fn lock(&self, charges: &[Charge]) -> (Locked<'_>, Vec<usize>) {
        let of: Vec<usize> = charges.iter().map(|c| Self::shard_of(&c.bucket)).collect();
        let mut order = of.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order.into_iter().map(|i| (i, self.shard(i))).collect();
        (guards, of)
    }

    /// Admits the request if every charge fits, charging them all; otherwise charges none.
    pub(crate) fn check(&self, charges: &[Charge], now: i64) -> Decision {
        if charges.is_empty() {
            return Decision::UNLIMITED;
        }
        // The common case, one limit (a key's own): one shard, no allocation.
        if let [c] = charges {
            let mut map = self.shard(Self::shard_of(&c.bucket));
            let (allowed, tat, status) =
                gcra::decide(tat_of(&map, &c.bucket), now, &c.quota, c.cost);
            if allowed {
                put(&mut map, &c.bucket, tat, now);
            }
            return Decision {
                allowed,
                tightest: Some(status),
            };
        }
        let (mut guards, of) = self.lock(charges);
        let states: Vec<Option<i64>> = charges
            .iter()
            .zip(&of)
            .map(|(c, &shard)| tat_of(guard_for(&mut guards, shard), &c.bucket))
            .collect();
        let (decision, tats) = gcra::decide_all(&states, now, charges);
        for ((c, &shard), tat) in charges.iter().zip(&of).zip(tats) {
            put(guard_for(&mut guards, shard), &c.bucket, tat, now);
        }
        decision
    }

    /// Applies `rule` to every charge's bucket, whatever it holds.
    pub(crate) fn apply(&self, charges: &[Charge], now: i64, rule: Rule) {
        if charges.is_empty() {
            return;
        }
        let (mut guards, of) = self.lock(charges);
        for (c, &shard) in charges.iter().zip(&of) {
            let map = guard_for(&mut guards, shard);
            let tat = rule(tat_of(map, &c.bucket), now, &c.quota, c.cost);
            put(map, &c.bucket, tat, now);
        }
    }

    /// Sets states read from elsewhere (a store at start) without marking them changed; a state already here
    /// is kept (it is newer).
    pub(crate) fn restore(&self, states: impl IntoIterator<Item = (String, i64)>) {
        for (bucket, tat) in states {
            self.shard(Self::shard_of(&bucket))
                .entry(bucket)
                .or_insert(State { tat, dirty: false });
        }
    }

    /// Overwrites states with `states` (what a store of them is told to keep), marking them unchanged.
    pub(crate) fn overwrite(&self, states: &[(String, i64)]) {
        for (bucket, tat) in states {
            self.shard(Self::shard_of(bucket)).insert(
                bucket.clone(),
                State {
                    tat: *tat,
                    dirty: false,
                },
            );
        }
    }

    /// The states whose TAT is after `now` (the others are full buckets: the same as no state).
    pub(crate) fn live(&self, now: i64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let map = self.shard(i);
            out.extend(
                map.iter()
                    .filter(|(_, s)| s.tat > now)
                    .map(|(b, s)| (b.clone(), s.tat)),
            );
        }
        out
    }

    /// The states changed since the last call, marked unchanged now.
    pub(crate) fn take_changed(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let mut map = self.shard(i);
            for (bucket, state) in map.iter_mut().filter(|(_, s)| s.dirty) {
                state.dirty = false;
                out.push((bucket.clone(), state.tat));
            }
        }
        out
    }

    /// Marks `states` changed again (a write of them failed), unless they changed since.
    pub(crate) fn mark_changed(&self, states: &[(String, i64)]) {
        for (bucket, tat) in states {
            if let Some(state) = self.shard(Self::shard_of(bucket)).get_mut(bucket.as_str())
                && state.tat == *tat
            {
                state.dirty = true;
            }
        }
    }
}

fn guard_for<'a>(guards: &'a mut Locked<'_>, shard: usize) -> &'a mut Shard {
    let i = guards.partition_point(|(s, _)| *s < shard);
    &mut guards[i].1
}

fn tat_of(map: &Shard, bucket: &str) -> Option<i64> {
    map.get(bucket).map(|s| s.tat)
}

fn put(map: &mut Shard, bucket: &str, tat: i64, now: i64) {
    match map.get_mut(bucket) {
        Some(state) => {
            state.dirty |= state.tat != tat;
            state.tat = tat;
        }
        None => {
            if map.len() >= PRUNE_AT {
                map.retain(|_, s| s.tat > now || s.dirty);
            }
            map.insert(bucket.to_owned(), State { tat, dirty: true });
        }
    }
}
