//! Checks of [`crate::limits::LimitStore`] and [`crate::limits::RateLimiter`]. Time is the `now` each call is
//! given (microseconds), so the checks are exact; a limiter with its own clock (Redis) runs only the checks that
//! take no time travel ([`concurrent_checks_admit_exactly_the_quota`], [`all_or_none`],
//! [`refund_gives_a_request_back`]).

use std::sync::Arc;

use crate::error::Error;
use crate::limits::{
    BucketStore, Charge, LimitScope, LimitStore, Limits, LocalLimiter, Quota, RateLimiter,
};

const SECOND: i64 = 1_000_000;
// 2026-03-01T12:00:00Z in microseconds.
const T0: i64 = 1_772_366_400 * SECOND;

fn q(s: &str) -> Quota {
    s.parse().expect("quota")
}

fn charge(bucket: &str, quota: &str, cost: u64) -> Charge {
    Charge {
        bucket: bucket.to_owned(),
        quota: q(quota),
        cost,
    }
}

/// Limits (quotas and model allowlists) are set per scope, read back in the order asked, replaced, and cleared by
/// empty limits; bad input is refused and changes nothing.
pub async fn limits_set_replace_clear(store: Arc<dyn LimitStore>) {
    let key = LimitScope::Key("k1".into());
    let owner = LimitScope::Owner("alice".into());
    let org = LimitScope::Org("acme".into());
    let a = Limits {
        requests: vec![q("100/min"), q("1000/day")],
        tokens: vec![q("50000/h")],
        models: crate::keys::models::parse_rules("gpt-4o*,anthropic/*").expect("rules"),
        max_parallel: Some(4),
    };
    let b = Limits {
        requests: vec![q("10/s")],
        ..Limits::default()
    };
    // A scope with only an allowlist (or only a concurrency limit) keeps it.
    let only_parallel = Limits {
        max_parallel: Some(1),
        ..Limits::default()
    };
    store
        .set_limits(&LimitScope::Owner("parallel-only".into()), &only_parallel)
        .await
        .expect("set parallel only");
    assert_eq!(
        store
            .limits(&[LimitScope::Owner("parallel-only".into())])
            .await
            .expect("limits"),
        vec![only_parallel]
    );
    let only_models = Limits {
        models: crate::keys::models::parse_rules("openai/gpt-5*").expect("rules"),
        ..Limits::default()
    };
    store
        .set_limits(&LimitScope::Org("models-only".into()), &only_models)
        .await
        .expect("set models only");
    assert_eq!(
        store
            .limits(&[LimitScope::Org("models-only".into())])
            .await
            .expect("limits"),
        vec![only_models]
    );
    store.set_limits(&key, &a).await.expect("set key");
    store.set_limits(&org, &b).await.expect("set org");
    assert_eq!(
        store
            .limits(&[org.clone(), owner.clone(), key.clone()])
            .await
            .expect("limits"),
        vec![b.clone(), Limits::default(), a.clone()]
    );
    // An owner and a key may share an id without sharing limits.
    store
        .set_limits(&LimitScope::Owner("k1".into()), &b)
        .await
        .expect("set owner");
    assert_eq!(
        store
            .limits(std::slice::from_ref(&key))
            .await
            .expect("limits"),
        vec![a.clone()]
    );
    store.set_limits(&key, &b).await.expect("replace");
    assert_eq!(
        store
            .limits(std::slice::from_ref(&key))
            .await
            .expect("limits"),
        vec![b.clone()]
    );
    store
        .set_limits(&key, &Limits::default())
        .await
        .expect("clear");
    assert_eq!(
        store
            .limits(std::slice::from_ref(&key))
            .await
            .expect("limits"),
        vec![Limits::default()]
    );
    let too_many = Limits {
        requests: vec![q("1/s"); crate::limits::MAX_QUOTAS + 1],
        ..Limits::default()
    };
    let no_parallel = Limits {
        max_parallel: Some(0),
        ..Limits::default()
    };
    let too_many_models = Limits {
        models: vec!["gpt-4o".parse().expect("rule"); crate::keys::models::MAX_MODEL_RULES + 1],
        ..Limits::default()
    };
    for (scope, limits) in [
        (LimitScope::Org(String::new()), b.clone()),
        (LimitScope::Org("acme".into()), too_many),
        (LimitScope::Org("acme".into()), too_many_models),
        (LimitScope::Org("acme".into()), no_parallel),
    ] {
        let err = store
            .set_limits(&scope, &limits)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    }
    assert_eq!(store.limits(&[org]).await.expect("limits"), vec![b]);
}

/// A refund gives a charged request back (the next check is admitted), all the charges of it; a refund to a full
/// bucket leaves it full (never more than the quota). Needs no time travel.
pub async fn refund_gives_a_request_back(limiter: Arc<dyn RateLimiter>) {
    let c = [
        charge("conf:refund", "2/min", 1),
        charge("conf:refund-b", "100/min", 1),
    ];
    for _ in 0..2 {
        assert!(limiter.check(&c, T0).await.expect("check").allowed);
    }
    assert!(!limiter.check(&c, T0).await.expect("check").allowed);
    limiter.refund(&c, T0).await.expect("refund");
    let again = limiter.check(&c, T0).await.expect("check");
    assert!(again.allowed, "the refunded request's room came back");
    assert!(!limiter.check(&c, T0).await.expect("check").allowed);
    // A bucket never charged stays full after a refund: a quota's burst, not more.
    let fresh = [charge("conf:refund-fresh", "2/min", 1)];
    limiter.refund(&fresh, T0).await.expect("refund");
    for _ in 0..2 {
        assert!(limiter.check(&fresh, T0).await.expect("check").allowed);
    }
    assert!(!limiter.check(&fresh, T0).await.expect("check").allowed);
}

/// A quota admits its whole burst at once, then refuses with the exact wait, then admits one more per interval.
pub async fn burst_then_one_per_interval(limiter: Arc<dyn RateLimiter>) {
    let c = [charge("conf:burst", "5/min", 1)];
    for i in 0..5u64 {
        let d = limiter.check(&c, T0).await.expect("check");
        assert!(d.allowed, "request {i}");
        assert_eq!(d.tightest.expect("status").remaining, 4 - i);
    }
    let refused = limiter.check(&c, T0).await.expect("check");
    assert!(!refused.allowed);
    let status = refused.tightest.expect("status");
    assert_eq!(
        (status.limit, status.remaining, status.retry_after_micros),
        (5, 0, 12 * SECOND)
    );
    assert!(
        !limiter
            .check(&c, T0 + 12 * SECOND - 1)
            .await
            .expect("check")
            .allowed
    );
    assert!(
        limiter
            .check(&c, T0 + 12 * SECOND)
            .await
            .expect("check")
            .allowed
    );
    assert!(
        !limiter
            .check(&c, T0 + 12 * SECOND)
            .await
            .expect("check")
            .allowed
    );
    // Idle long enough, the bucket is full again: 5 more, not more.
    let later = T0 + 3600 * SECOND;
    for _ in 0..5 {
        assert!(limiter.check(&c, later).await.expect("check").allowed);
    }
    assert!(!limiter.check(&c, later).await.expect("check").allowed);
}

/// A check that one limit refuses charges none of the others.
pub async fn all_or_none(limiter: Arc<dyn RateLimiter>) {
    let roomy = charge("conf:roomy", "3/h", 1);
    let tight = charge("conf:tight", "1/h", 1);
    assert!(
        limiter
            .check(std::slice::from_ref(&tight), T0)
            .await
            .expect("check")
            .allowed
    );
    for _ in 0..5 {
        let d = limiter
            .check(&[roomy.clone(), tight.clone()], T0)
            .await
            .expect("check");
        assert!(!d.allowed);
        assert_eq!(
            d.tightest.expect("status").limit,
            1,
            "the refusing limit is the tightest"
        );
    }
    // The refusals took nothing from the roomy limit: its three are all there.
    for _ in 0..3 {
        assert!(
            limiter
                .check(std::slice::from_ref(&roomy), T0)
                .await
                .expect("check")
                .allowed
        );
    }
    assert!(!limiter.check(&[roomy], T0).await.expect("check").allowed);
}

/// Tokens charged after a response may put a bucket in debt; the pre-check (cost 0) then waits it out.
pub async fn token_debt_delays_the_next_request(limiter: Arc<dyn RateLimiter>) {
    let precheck = [charge("conf:tokens", "1000/min", 0)];
    assert!(limiter.check(&precheck, T0).await.expect("check").allowed);
    limiter
        .charge(&[charge("conf:tokens", "1000/min", 3000)], T0)
        .await
        .expect("charge");
    let d = limiter.check(&precheck, T0).await.expect("check");
    assert!(!d.allowed);
    assert_eq!(d.tightest.expect("status").retry_after_micros, 120 * SECOND);
    assert!(
        limiter
            .check(&precheck, T0 + 120 * SECOND)
            .await
            .expect("check")
            .allowed
    );
}

/// Concurrent checks against one bucket admit exactly its quota.
pub async fn concurrent_checks_admit_exactly_the_quota(limiter: Arc<dyn RateLimiter>) {
    let c = Arc::new([charge("conf:concurrent", "10/min", 1)]);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let limiter = limiter.clone();
            let c = c.clone();
            tokio::spawn(async move { limiter.check(&c[..], T0).await.expect("check").allowed })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.expect("task") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}

/// Bucket states are saved in one call, replaced by a later save, and read back only while live (TAT after the
/// time asked).
pub async fn bucket_states_round_trip(store: Arc<dyn BucketStore>) {
    assert!(store.bucket_states(T0).await.expect("none yet").is_empty());
    store.save_bucket_states(&[]).await.expect("empty save");
    let states = [
        ("key:a:requests:10/min".to_owned(), T0 + 6 * SECOND),
        ("key:b:requests:10/min".to_owned(), T0 - SECOND),
        ("owner:c:tokens:1000/h".to_owned(), T0 + 3600 * SECOND),
    ];
    store.save_bucket_states(&states).await.expect("save");
    let mut live = store.bucket_states(T0).await.expect("states");
    live.sort();
    assert_eq!(live, vec![states[0].clone(), states[2].clone()]);
    // A later save replaces (a refund may lower a TAT), and states are many per call.
    let many: Vec<(String, i64)> = (0..1200)
        .map(|i| (format!("key:k{i}:requests:5/s"), T0 + i64::from(i) + 1))
        .chain([("key:a:requests:10/min".to_owned(), T0 + SECOND)])
        .collect();
    store.save_bucket_states(&many).await.expect("save many");
    let live = store.bucket_states(T0).await.expect("states");
    assert_eq!(live.len(), 1202);
    assert!(live.contains(&("key:a:requests:10/min".to_owned(), T0 + SECOND)));
    assert!(live.contains(&("key:k1199:requests:5/s".to_owned(), T0 + 1200)));
    assert_eq!(
        store
            .bucket_states(T0 + 3600 * SECOND)
            .await
            .expect("later"),
        vec![]
    );
}

/// A [`LocalLimiter`] on the store writes what it charged when flushed, only what changed, and a new one opened
/// on the store (a restart) refuses what the first had used up; a failed check writes nothing.
pub async fn local_limiter_survives_a_restart(store: Arc<dyn BucketStore>) {
    let first = LocalLimiter::open(store.clone(), T0).await.expect("open");
    let two = [charge("key:r:requests:2/min", "2/min", 1)];
    let other = [charge("key:s:requests:5/min", "5/min", 1)];
    assert!(first.check(&two, T0).await.expect("1").allowed);
    assert!(first.check(&two, T0).await.expect("2").allowed);
    assert!(!first.check(&two, T0).await.expect("3").allowed);
    assert_eq!(first.flush().await.expect("flush"), 1);
    assert_eq!(first.flush().await.expect("nothing new"), 0);
    assert!(first.check(&other, T0).await.expect("other").allowed);
    first
        .charge(&[charge("key:r:tokens:100/min", "100/min", 150)], T0)
        .await
        .expect("token debt");
    RateLimiter::flush(&first).await.expect("flush");
    drop(first);

    let second = LocalLimiter::open(store.clone(), T0 + SECOND)
        .await
        .expect("reopen");
    assert!(
        !second
            .check(&two, T0 + SECOND)
            .await
            .expect("still spent")
            .allowed
    );
    // One of five spent, four left.
    for i in 0..4 {
        assert!(
            second
                .check(&other, T0 + SECOND)
                .await
                .expect("left")
                .allowed,
            "request {i}"
        );
    }
    assert!(
        !second
            .check(&other, T0 + SECOND)
            .await
            .expect("five")
            .allowed
    );
    // The token bucket is in debt: a zero-cost pre-check is refused.
    assert!(
        !second
            .check(&[charge("key:r:tokens:100/min", "100/min", 0)], T0 + SECOND)
            .await
            .expect("debt")
            .allowed
    );
    // Half a minute later one of the two requests is back.
    assert!(
        second
            .check(&two, T0 + 31 * SECOND)
            .await
            .expect("back")
            .allowed
    );
}
