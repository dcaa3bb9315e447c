//! The Redis limiter against a real server: `KEYMETER_TEST_REDIS_URL` (`.ci/run` starts one); skipped, with the
//! reason printed, when it is unset.

use std::process::{Command, Stdio};
use std::sync::Arc;

use keymeter::limits::RateLimiter;
use keymeter::store::RedisLimiter;

fn url() -> Option<String> {
    match std::env::var("KEYMETER_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: KEYMETER_TEST_REDIS_URL is not set (see README: running the Redis tests)"
            );
            None
        }
    }
}

/// A limiter under a prefix of its own, so runs and tests never share buckets.
async fn limiter(url: &str) -> Arc<dyn RateLimiter> {
    let mut id = [0u8; 12];
    keymeter::random::fill_base62(&keymeter::random::OsRandom, &mut id).unwrap();
    let prefix = format!("keymeter-test:{}:", String::from_utf8_lossy(&id));
    Arc::new(
        RedisLimiter::connect(url)
            .await
            .unwrap()
            .with_prefix(prefix),
    )
}

/// The slot store's conformance suite: sorted sets judged by the server's clock.
mod slots {
    async fn store(url: &str) -> std::sync::Arc<dyn keymeter::limits::SlotStore> {
        let mut id = [0u8; 12];
        keymeter::random::fill_base62(&keymeter::random::OsRandom, &mut id).unwrap();
        let prefix = format!("keymeter-test:{}:", String::from_utf8_lossy(&id));
        std::sync::Arc::new(
            keymeter::store::RedisLimiter::connect(url)
                .await
                .unwrap()
                .with_prefix(prefix),
        )
    }
    macro_rules! fresh {
        () => {
            match super::url() {
                Some(url) => store(&url).await,
                None => return,
            }
        };
    }
    keymeter::slot_store_conformance!(fresh!());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_gives_a_request_back() {
    let Some(url) = url() else { return };
    keymeter::conformance::limits::refund_gives_a_request_back(limiter(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_none() {
    let Some(url) = url() else { return };
    keymeter::conformance::limits::all_or_none(limiter(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_admit_exactly_the_quota() {
    let Some(url) = url() else { return };
    keymeter::conformance::limits::concurrent_checks_admit_exactly_the_quota(limiter(&url).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_clock_decides_not_the_callers() {
    let Some(url) = url() else { return };
    let limiter = limiter(&url).await;
    let quota: keymeter::limits::Quota = "2/h".parse().unwrap();
    let charge = [keymeter::limits::Charge {
        bucket: "skew".into(),
        quota,
        cost: 1,
    }];
    // Callers an hour apart (skewed clocks) still share the server's one bucket.
    let now = chrono::Utc::now().timestamp_micros();
    assert!(limiter.check(&charge, now).await.unwrap().allowed);
    assert!(
        limiter
            .check(&charge, now + 3_600_000_000)
            .await
            .unwrap()
            .allowed
    );
    let refused = limiter.check(&charge, now - 3_600_000_000).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.tightest.unwrap().limit, 2);
    // Tokens into debt, then the pre-check refuses.
    let tokens: keymeter::limits::Quota = "100/h".parse().unwrap();
    let debt = [keymeter::limits::Charge {
        bucket: "debt".into(),
        quota: tokens,
        cost: 250,
    }];
    limiter.charge(&debt, 0).await.unwrap();
    let precheck = [keymeter::limits::Charge {
        cost: 0,
        ..debt[0].clone()
    }];
    let d = limiter.check(&precheck, 0).await.unwrap();
    assert!(!d.allowed);
    assert!(d.tightest.unwrap().retry_after_secs() > 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_an_error_not_an_answer() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisLimiter::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, keymeter::Error::Store { store: "redis", .. }),
        "{err}"
    );
    assert!(matches!(
        RedisLimiter::connect("not a url").await,
        Err(keymeter::Error::Config(_))
    ));
}

/// Thirty processes verify one key limited to 10/min at once, through Redis: exactly ten are admitted.
#[test]
fn thirty_processes_against_a_ten_per_minute_key_admit_exactly_ten() {
    let Some(url) = url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("keys.db").display());
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keymeter"));
        cmd.current_dir(dir.path())
            .env("KEYMETER_ENV", "development")
            .env_remove("KEYMETER_PEPPER")
            .env_remove("KEYMETER_MASTER_KEYS")
            .env("KEYMETER_LIMITER", &url)
            .args(["--store", &store, "--json"])
            .args(args);
        cmd
    };
    assert!(cli(&["init"]).output().unwrap().status.success());
    let out = cli(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--owner",
        "alice",
        "--rate-limit",
        "10/min",
    ])
    .output()
    .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let children: Vec<_> = (0..30)
        .map(|_| {
            let mut child = cli(&["keys", "verify"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(key.as_bytes())
                .unwrap();
            child
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        *codes
            .entry(v["code"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(codes.get("VALID"), Some(&10), "{codes:?}");
    assert_eq!(codes.get("RATE_LIMITED"), Some(&20), "{codes:?}");
}
