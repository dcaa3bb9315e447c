//! Rate-limit checks (issue 12): one request charge against the in-memory limiter, ≤ 100 ns, beside a floor that
//! does the least any limiter must (one map lookup under a lock, the GCRA decision, one store), cycling over the
//! same 4,096 buckets with the same clock; and the same check against warm leased slices (`LeasedLimiter`, the
//! default on PostgreSQL). Run: `cargo bench --bench limits`.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use keymeter::limits::{Charge, Quota, RateLimiter, gcra};
use keymeter::store::MemoryStore;

const BUCKETS: usize = 4096;

/// The memory limiter never waits: poll its future once instead of entering a runtime.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory limiter never waits"),
    }
}

/// One request charge per bucket, under so large a quota that every check is admitted: the measured path stores
/// a new state every time.
fn charges() -> Vec<[Charge; 1]> {
    let quota: Quota = "1000000000000/s".parse().unwrap();
    (0..BUCKETS)
        .map(|i| {
            [Charge {
                bucket: format!("key:{i:012}:requests:{quota}"),
                quota,
                cost: 1,
            }]
        })
        .collect()
}

fn limits(c: &mut Criterion) {
    let charges = charges();
    let limiter = MemoryStore::new();
    // The same fast hasher the memory limiter uses (bucket names are keymeter's own).
    let floor: Mutex<HashMap<String, i64, foldhash::fast::RandomState>> =
        Mutex::new(HashMap::default());
    let now = 1_772_366_400_000_000i64;
    for c in &charges {
        assert!(ready(limiter.check(c, now)).unwrap().allowed);
        floor.lock().unwrap().insert(c[0].bucket.clone(), now);
    }
    let mut group = c.benchmark_group("limits");
    let mut i = 0;
    group.bench_function("floor", |b| {
        b.iter(|| {
            i = (i + 1) % BUCKETS;
            let c = &black_box(&charges[i])[0];
            let mut map = floor.lock().unwrap();
            let (ok, tat, status) =
                gcra::decide(map.get(&c.bucket).copied(), now, &c.quota, c.cost);
            if ok && let Some(slot) = map.get_mut(&c.bucket) {
                *slot = tat;
            }
            (ok, status)
        })
    });
    let mut i = 0;
    group.bench_function("check_memory", |b| {
        b.iter(|| {
            i = (i + 1) % BUCKETS;
            ready(limiter.check(black_box(&charges[i]), now)).unwrap()
        })
    });
    // Leased slices (DESIGN §14), warm: the check the verifier makes first (`check_now`) answers from this
    // process's slices while the next ones are leased on the runtime's thread; a check that finds its slice
    // empty (the next still in flight) takes the async path, as the verifier would.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let leased = keymeter::limits::LeasedLimiter::new(std::sync::Arc::new(MemoryStore::new()));
    for _ in 0..64 {
        for c in &charges {
            assert!(rt.block_on(leased.check(c, now)).unwrap().allowed);
        }
    }
    let mut i = 0;
    group.bench_function("check_leased_warm", |b| {
        b.iter(|| {
            i = (i + 1) % BUCKETS;
            let c = black_box(&charges[i]);
            match leased.check_now(c, now) {
                Some(decision) => decision.unwrap(),
                None => rt.block_on(leased.check(c, now)).unwrap(),
            }
        })
    });
    group.finish();
    redis_check(c);
}

/// One check through Redis on loopback (one script call: one round trip), when `KEYMETER_TEST_REDIS_URL` names a
/// server; skipped otherwise.
#[cfg(feature = "redis")]
fn redis_check(c: &mut Criterion) {
    let Ok(url) = std::env::var("KEYMETER_TEST_REDIS_URL") else {
        eprintln!("limits/check_redis skipped: KEYMETER_TEST_REDIS_URL is not set");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limiter = rt
        .block_on(keymeter::store::RedisLimiter::connect(&url))
        .unwrap()
        .with_prefix("keymeter-bench:");
    let charges = charges();
    let mut group = c.benchmark_group("limits");
    let mut i = 0;
    group.bench_function("check_redis", |b| {
        b.iter(|| {
            i = (i + 1) % BUCKETS;
            rt.block_on(limiter.check(black_box(&charges[i]), 0))
                .unwrap()
        })
    });
    group.finish();
}

#[cfg(not(feature = "redis"))]
fn redis_check(_: &mut Criterion) {}

criterion_group!(benches, limits);
criterion_main!(benches);
