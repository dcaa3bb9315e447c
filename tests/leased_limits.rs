//! Leased request quotas (DESIGN §14): instances sharing rate limits through the store admit from slices in memory,
//! never more than a quota together, and ask the store a fraction of the time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use keymeter::limits::{Charge, Decision, LeasedLimiter, Quota, RateLimiter};
use keymeter::store::MemoryStore;

#[cfg(feature = "postgres")]
#[path = "common/mod.rs"]
mod common;

const SECOND: i64 = 1_000_000;
const T0: i64 = 1_772_366_400 * SECOND;

fn charge(bucket: &str, quota: &str, cost: u64) -> Charge {
    Charge {
        bucket: bucket.into(),
        quota: quota.parse::<Quota>().expect("quota"),
        cost,
    }
}

/// A limiter that counts the calls it passes on.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn RateLimiter>,
    checks: AtomicUsize,
    charges: AtomicUsize,
    refunds: AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<dyn RateLimiter>) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            checks: AtomicUsize::new(0),
            charges: AtomicUsize::new(0),
            refunds: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl RateLimiter for Counting {
    async fn check(&self, charges: &[Charge], now: i64) -> keymeter::Result<Decision> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.inner.check(charges, now).await
    }

    async fn charge(&self, charges: &[Charge], now: i64) -> keymeter::Result<()> {
        self.charges.fetch_add(1, Ordering::Relaxed);
        self.inner.charge(charges, now).await
    }

    async fn refund(&self, charges: &[Charge], now: i64) -> keymeter::Result<()> {
        self.refunds.fetch_add(1, Ordering::Relaxed);
        self.inner.refund(charges, now).await
    }
}

/// 32 tasks on each of two instances check one quota at one instant until it is spent; returns what each
/// instance admitted.
async fn two_instances_spend(
    a: Arc<dyn RateLimiter>,
    b: Arc<dyn RateLimiter>,
    quota: &str,
) -> [u64; 2] {
    let c = Arc::new([charge("key:shared:requests", quota, 1)]);
    let mut tasks = Vec::new();
    for (i, limiter) in [a, b].into_iter().enumerate() {
        for _ in 0..32 {
            let (limiter, c) = (limiter.clone(), c.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                let mut refused = 0;
                // Past the quota each task sees a few refusals in a row before it stops (and at most 200
                // checks, so a limiter that never refuses fails the count, not the test's time).
                let mut left = 200;
                while refused < 3 && left > 0 {
                    left -= 1;
                    if limiter.check(&c[..], T0).await.expect("check").allowed {
                        admitted += 1;
                        refused = 0;
                    } else {
                        refused += 1;
                    }
                }
                (i, admitted)
            }));
        }
    }
    let mut admitted = [0u64; 2];
    for t in tasks {
        let (i, n) = t.await.expect("task");
        admitted[i] += n;
    }
    admitted
}

/// What the store still admits of `quota` at `T0`, asked one unit at a time.
async fn room_left(store: &dyn RateLimiter, quota: &str) -> u64 {
    let c = [charge("key:shared:requests", quota, 1)];
    let mut room = 0;
    while store.check(&c, T0).await.expect("check").allowed {
        room += 1;
    }
    room
}

async fn never_more_than_the_quota(store_a: Arc<dyn RateLimiter>, store_b: Arc<dyn RateLimiter>) {
    let quota = "2000/h";
    let a = Arc::new(LeasedLimiter::new(store_a.clone()));
    let b = Arc::new(LeasedLimiter::new(store_b));
    let [in_a, in_b] = two_instances_spend(a.clone(), b.clone(), quota).await;
    let total = in_a + in_b;
    println!("admitted {in_a} + {in_b} = {total} of 2000");
    assert!(total <= 2000, "admitted {total} past a quota of 2000");
    // Each task stopped only after refusals, so neither instance kept units it could have used: the early
    // refusals are at most the slices the other held (1/16 of the quota each: two slices of 1/32), and here
    // none.
    assert!(
        total >= 2000 - 2 * (2000 / 16),
        "admitted only {total} of 2000"
    );
    a.flush().await.expect("flush");
    b.flush().await.expect("flush");
    // What the instances did not use is back in the store, and nothing more.
    assert_eq!(room_left(&*store_a, quota).await, 2000 - total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_memory_never_admit_more_than_the_quota() {
    let store = Arc::new(MemoryStore::new());
    never_more_than_the_quota(store.clone(), store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_never_admit_more_than_the_quota() {
    let Some(url) = common::pg_schema_url(module_path!()).await else {
        return;
    };
    // Two pools, as two processes would have.
    let a = keymeter::store::PostgresStore::connect(&url)
        .await
        .expect("connect");
    let b = keymeter::store::PostgresStore::connect(&url)
        .await
        .expect("connect");
    never_more_than_the_quota(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_asks_the_store_for_a_fraction_of_its_checks() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let limiter = LeasedLimiter::new(store.clone());
    let c = [charge("key:busy:requests", "1000000/min", 1)];
    // 1,000 requests a second for two seconds.
    for i in 0..2000 {
        let now = T0 + i * 1_000;
        let d = limiter.check(&c, now).await.expect("check");
        assert!(d.allowed);
        tokio::task::yield_now().await;
    }
    let calls = store.checks.load(Ordering::Relaxed);
    println!("2000 checks, {calls} store calls");
    assert!(calls <= 100, "{calls} store calls for 2000 checks");
    // The metrics' count: the checks that asked the store are the misses.
    let lookups = limiter.lookups();
    assert_eq!(lookups.hits() + lookups.misses(), 2000);
    println!("{} hits, {} misses", lookups.hits(), lookups.misses());
    assert!(lookups.misses() <= 50, "{} misses", lookups.misses());
}

/// Admits `c` at `now` until refused three times in a row (at most 5,000 checks); returns how many.
async fn admit_all(limiter: &dyn RateLimiter, c: &[Charge], now: i64) -> u64 {
    let (mut admitted, mut refused, mut left) = (0, 0, 5000);
    while refused < 3 && left > 0 {
        left -= 1;
        if limiter.check(c, now).await.expect("check").allowed {
            admitted += 1;
            refused = 0;
        } else {
            refused += 1;
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_held_unused_come_back_when_the_window_ends() {
    let store = Arc::new(MemoryStore::new());
    let c = [charge("key:shared:requests", "64/h", 1)];
    let a = LeasedLimiter::new(store.clone());
    let b = LeasedLimiter::new(store.clone());
    for _ in 0..10 {
        assert!(a.check(&c, T0).await.expect("check").allowed);
    }
    // The slices a's traffic asked for land in the background (the last may still be in flight when one has).
    let mut held = 0;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let now_held = a.leased_units(&c[0].bucket, T0);
        if now_held > 0 && now_held == held {
            break;
        }
        held = now_held;
    }
    assert!(
        (1..=4).contains(&held),
        "a holds at most two slices of 1/32: {held}"
    );
    // b is refused early by exactly what a holds…
    assert_eq!(admit_all(&b, &c, T0).await, 64 - 10 - held);
    // …until a's window ends and its sweep gives them back (64/h refills one unit per 56.25 s: none in 2 s).
    let later = T0 + 2 * SECOND;
    a.sweep(later).await.expect("sweep");
    assert_eq!(a.leased_units(&c[0].bucket, later), 0);
    assert_eq!(admit_all(&b, &c, later).await, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_charges_reach_the_store_in_one_call_per_sweep() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let limiter = LeasedLimiter::new(store.clone());
    // 600/min: a token costs 0.1 s of the bucket.
    let precheck = [charge("key:t:tokens", "600/min", 0)];
    assert!(limiter.check(&precheck, T0).await.expect("check").allowed);
    // The pre-check's slice (no units: a token limit only asks whether the bucket is in debt) lands.
    for _ in 0..200 {
        if store.checks.load(Ordering::Relaxed) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let before = store.charges.load(Ordering::Relaxed);
    for _ in 0..100 {
        limiter
            .charge(&[charge("key:t:tokens", "600/min", 10)], T0)
            .await
            .expect("charge");
    }
    assert_eq!(
        store.charges.load(Ordering::Relaxed),
        before,
        "no store call per charge"
    );
    // This instance already counts them: 1,000 tokens are 100 s, 40 s past the burst.
    let d = limiter.check(&precheck, T0).await.expect("check");
    assert!(!d.allowed);
    assert_eq!(d.tightest.expect("status").retry_after_micros, 40 * SECOND);
    assert_eq!(limiter.sweep(T0).await.expect("sweep"), 1);
    assert_eq!(store.charges.load(Ordering::Relaxed), before + 1);
    // And so does the store, as of when they were made.
    let d = store.check(&precheck, T0).await.expect("check");
    assert_eq!(d.tightest.expect("status").retry_after_micros, 40 * SECOND);
}

const CHILD_STORE: &str = "KEYMETER_LEASED_CHILD_STORE";
const KILLED_QUOTA: &str = "1600/h";
const KILLED_BUCKET: &str = "key:killed:requests";

/// Waits until the units `limiter` holds of `bucket` stop changing (a lease in flight has landed); returns them.
async fn settled_units(limiter: &LeasedLimiter, bucket: &str) -> u64 {
    let mut held = u64::MAX;
    for _ in 0..250 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let now_held = limiter.leased_units(bucket, T0);
        if now_held > 0 && now_held == held {
            break;
        }
        held = now_held;
    }
    held
}

/// Runs only as a child of `a_killed_instance_strands_at_most_its_slices`: spends part of a quota through leased
/// slices, prints what it admitted and holds, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_child() {
    let Ok(url) = std::env::var(CHILD_STORE) else {
        return;
    };
    let store = keymeter::store::connect(&url).await.expect("connect");
    let limiter = LeasedLimiter::new(store);
    let c = [charge(KILLED_BUCKET, KILLED_QUOTA, 1)];
    let mut admitted = 0;
    for _ in 0..300 {
        if limiter.check(&c, T0).await.expect("check").allowed {
            admitted += 1;
        }
    }
    let held = settled_units(&limiter, KILLED_BUCKET).await;
    println!("\nHELD {admitted} {held}");
    use std::io::Write;
    std::io::stdout().flush().expect("flush");
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
}

/// A process killed (`kill -9`) while it holds slices strands at most two slices (1/16 of the quota): the bucket
/// counts them spent, nothing more, and refills them at the quota's rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_strands_at_most_its_slices() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("leased.db").display());
    let store = keymeter::store::connect(&url).await.expect("connect");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["leased_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_STORE, &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("HELD ") {
                let _ = tx.send(rest.to_owned());
                return;
            }
        }
    });
    let said = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the child says what it holds");
    // SIGKILL: nothing of the child's runs after this, its units are never given back.
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let numbers: Vec<u64> = said
        .split(' ')
        .map(|n| n.parse().expect("number"))
        .collect();
    let (admitted, held) = (numbers[0], numbers[1]);
    println!("the child admitted {admitted} and held {held} when killed");
    assert_eq!(admitted, 300, "a roomy quota admits all the child's checks");
    assert!(
        (1..=1600 / 16).contains(&held),
        "the child held {held}: at most two slices of 1/32"
    );
    let c = [charge(KILLED_BUCKET, KILLED_QUOTA, 1)];
    // The store admits exactly what the child neither used nor stranded…
    assert_eq!(admit_all(&*store, &c, T0).await, 1600 - admitted - held);
    // …and the stranded units come back as the bucket refills (1600/h: one every 2.25 s).
    let back = T0 + i64::try_from(held).expect("held") * 2_250_000;
    assert_eq!(admit_all(&*store, &c, back).await, held);
}

/// Passes calls on, except that a lease of `blocked` (a check of more than one unit) never answers.
#[derive(Debug)]
struct LeaseNeverLands {
    inner: Arc<dyn RateLimiter>,
    blocked: String,
}

#[async_trait]
impl RateLimiter for LeaseNeverLands {
    async fn check(&self, charges: &[Charge], now: i64) -> keymeter::Result<Decision> {
        if charges
            .iter()
            .any(|c| c.bucket == self.blocked && c.cost > 1)
        {
            std::future::pending::<()>().await;
        }
        self.inner.check(charges, now).await
    }

    async fn charge(&self, charges: &[Charge], now: i64) -> keymeter::Result<()> {
        self.inner.charge(charges, now).await
    }

    async fn refund(&self, charges: &[Charge], now: i64) -> keymeter::Result<()> {
        self.inner.refund(charges, now).await
    }
}

/// Token charges held in an ended slice reach the store even when the check that ends it waits for a lease of
/// another bucket: the store then refuses the debt they made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_slices_tokens_are_not_lost_while_a_check_waits_for_a_lease() {
    let store = Arc::new(MemoryStore::new());
    let window = std::time::Duration::from_millis(100);
    let limiter = LeasedLimiter::with_window(
        Arc::new(LeaseNeverLands {
            inner: store.clone(),
            blocked: "key:r:requests".into(),
        }),
        window,
    );
    let tokens = charge("key:t:tokens", "1000/min", 0);
    let request = charge("key:r:requests", "1000000/min", 1);
    assert!(
        limiter
            .check(std::slice::from_ref(&tokens), T0)
            .await
            .expect("check")
            .allowed
    );
    // The token slice lands (no units, the bucket's state); 3,000 tokens are charged into it, not yet sent.
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if limiter
            .check_now(std::slice::from_ref(&tokens), T0)
            .is_some()
        {
            break;
        }
    }
    limiter
        .charge(&[charge("key:t:tokens", "1000/min", 3000)], T0)
        .await
        .expect("charge");
    // The request bucket's lease is asked for and never lands.
    assert!(
        limiter
            .check(std::slice::from_ref(&request), T0)
            .await
            .expect("check")
            .allowed
    );
    // Later, past the token slice's window: the check ends it, waits for the request lease, then asks the store,
    // which has the 3,000 tokens: two minutes of debt less the one second passed.
    let later = T0 + SECOND;
    let d = limiter
        .check(&[tokens, request], later)
        .await
        .expect("check");
    assert!(!d.allowed, "the tokens of the ended slice count");
    assert_eq!(d.tightest.expect("status").retry_after_micros, 119 * SECOND);
}
