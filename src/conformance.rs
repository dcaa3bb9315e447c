//! The conformance suite every backend passes (feature `test-suite`). Public, so third-party backends can run
//! it too:
//!
//! ```ignore
//! // in tests/my_store.rs; needs tokio (macros, rt-multi-thread) as a dev-dependency
//! keymeter::key_store_conformance!(std::sync::Arc::new(MyStore::connect().await));
//! ```
//!
//! Each check is also a public async function in [`keys`], taking the store as `Arc<dyn KeyStore>`, and panics
//! with a message on failure.

/// Generates one `#[tokio::test]` per [`keys`] check; `$make` is an expression (it may `.await`) giving a fresh
/// `Arc<dyn KeyStore>` (or a type that coerces to it) for each test.
#[macro_export]
macro_rules! key_store_conformance {
    ($make:expr) => {
        $crate::__key_store_tests!($make;
            create_and_get, duplicate_id, digest_lookup, hint_bound, list_filters, revoke, revoke_org,
            disable_enable, replace_hash, record_use, concurrent_create);
    };
}

/// Generates one `#[tokio::test]` per [`credentials`] check; `$make` gives a fresh
/// `Arc<dyn CredentialStore>`.
#[macro_export]
macro_rules! credential_store_conformance {
    ($make:expr) => {
        $crate::__credential_store_tests!($make;
            put_get_replace, scopes_are_separate, delete_and_delete_all, providers_and_list, compare_and_swap,
            concurrent_puts);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __credential_store_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::credentials::CredentialStore> = $make;
                $crate::conformance::credentials::$name(store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per [`ledger`] check; `$make` gives a fresh `Arc<dyn Ledger>`.
#[macro_export]
macro_rules! ledger_conformance {
    ($make:expr) => {
        $crate::__ledger_tests!($make;
            record_once, events_and_reports, budget_status_and_soft_limit, reserve_all_or_none,
            settle_and_release, reservations_expire, concurrent_reservations_never_overshoot,
            set_budget_counts_past_events);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __ledger_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let ledger: ::std::sync::Arc<dyn $crate::ledger::Ledger> = $make;
                $crate::conformance::ledger::$name(ledger).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __key_store_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::keys::KeyStore> = $make;
                $crate::conformance::keys::$name(store).await;
            }
        )*
    };
}

/// Checks of [`crate::keys::KeyStore`].
pub mod keys {
    use std::sync::Arc;

    use chrono::{DateTime, Duration, TimeZone, Utc};

    use crate::error::Error;
    use crate::keys::{
        KeyEnv, KeyFilter, KeyHash, KeyHasher, KeyLookup, KeyRecord, KeyStore, MAX_KEYS_PER_HINT,
        Pepper, PepperRing, RateLimit, Scope,
    };
    use crate::random::SeededRandom;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid date")
    }

    fn hasher() -> KeyHasher {
        let pepper = Pepper::generate("conformance", &SeededRandom::new(7)).expect("pepper");
        KeyHasher::new(PepperRing::new(vec![pepper]).expect("ring"))
    }

    /// A record with every field set, for id `id`.
    pub fn sample(id: &str) -> KeyRecord {
        KeyRecord {
            id: id.to_owned(),
            name: format!("key {id}"),
            owner: "alice".into(),
            org: Some("acme".into()),
            env: KeyEnv::Live,
            scopes: Scope::parse_list("read,files:*").expect("scopes"),
            hash: hasher().hash_hmac(id.as_bytes()),
            lookup: KeyLookup::Id,
            hint: format!("km_live_{}…abcd", &id[..id.len().min(4)]),
            created_at: t0(),
            expires_at: Some(t0() + Duration::days(30)),
            last_used_at: None,
            disabled: false,
            revoked_at: None,
            allowed_ips: crate::keys::record::parse_networks(["10.0.0.0/8", "2001:db8::/32"])
                .expect("nets"),
            rate_limit: Some("100/min".parse::<RateLimit>().expect("limit")),
            metadata: serde_json::json!({"team": "infra", "n": 1}),
        }
    }

    /// Create then get returns the same record, field for field.
    pub async fn create_and_get(store: Arc<dyn KeyStore>) {
        let record = sample("AAAAAAAAAAA1");
        store.create(&record).await.expect("create");
        let got = store
            .get("AAAAAAAAAAA1")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(*got, record);
        assert!(store.get("AAAAAAAAAAA2").await.expect("get").is_none());
        let mut minimal = sample("AAAAAAAAAAA3");
        minimal.org = None;
        minimal.expires_at = None;
        minimal.allowed_ips.clear();
        minimal.rate_limit = None;
        minimal.scopes.clear();
        minimal.metadata = serde_json::json!({});
        store.create(&minimal).await.expect("create minimal");
        assert_eq!(
            *store
                .get("AAAAAAAAAAA3")
                .await
                .expect("get")
                .expect("present"),
            minimal
        );
    }

    /// A second create with the same id fails with `AlreadyExists` and changes nothing.
    pub async fn duplicate_id(store: Arc<dyn KeyStore>) {
        let record = sample("BBBBBBBBBBB1");
        store.create(&record).await.expect("create");
        let mut other = sample("BBBBBBBBBBB1");
        other.owner = "mallory".into();
        let err = store.create(&other).await.expect_err("duplicate");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
        assert_eq!(
            store
                .get("BBBBBBBBBBB1")
                .await
                .expect("get")
                .expect("present")
                .owner,
            "alice"
        );
    }

    /// Imported digests are found by digest, and unique.
    pub async fn digest_lookup(store: Arc<dyn KeyStore>) {
        let hash = KeyHasher::sha256(b"sk-legacy-key-0001");
        let digest = hash.sha256_hex().expect("sha256").to_owned();
        let mut record = sample("CCCCCCCCCCC1");
        record.hash = hash.clone();
        record.lookup = KeyLookup::Digest(digest.clone());
        store.create(&record).await.expect("create");
        let found = store
            .find_by_digest(&digest)
            .await
            .expect("find")
            .expect("present");
        assert_eq!(found.id, "CCCCCCCCCCC1");
        assert!(
            store
                .find_by_digest(&"0".repeat(64))
                .await
                .expect("find")
                .is_none()
        );
        let mut dup = sample("CCCCCCCCCCC2");
        dup.hash = hash;
        dup.lookup = KeyLookup::Digest(digest);
        let err = store.create(&dup).await.expect_err("duplicate digest");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
        assert!(store.get("CCCCCCCCCCC2").await.expect("get").is_none());
    }

    /// At most `MAX_KEYS_PER_HINT` keys share a hint; the next create fails with `HintFull`.
    pub async fn hint_bound(store: Arc<dyn KeyStore>) {
        for i in 0..MAX_KEYS_PER_HINT {
            let mut record = sample(&format!("DDDDDDDDDDD{i}"));
            record.lookup = KeyLookup::Hint("sk-abcde".into());
            store.create(&record).await.expect("create");
        }
        let mut extra = sample("DDDDDDDDDDDX");
        extra.lookup = KeyLookup::Hint("sk-abcde".into());
        let err = store.create(&extra).await.expect_err("hint full");
        assert!(matches!(err, Error::HintFull { .. }), "{err:?}");
        let found = store.find_by_hint("sk-abcde").await.expect("find");
        assert_eq!(found.len(), MAX_KEYS_PER_HINT);
        assert!(
            store
                .find_by_hint("sk-zzzzz")
                .await
                .expect("find")
                .is_empty()
        );
    }

    /// `list` filters by owner and org, oldest first.
    pub async fn list_filters(store: Arc<dyn KeyStore>) {
        let mut a = sample("EEEEEEEEEEE1");
        a.created_at = t0();
        let mut b = sample("EEEEEEEEEEE2");
        b.owner = "bob".into();
        b.created_at = t0() + Duration::seconds(1);
        let mut c = sample("EEEEEEEEEEE3");
        c.org = None;
        c.created_at = t0() + Duration::seconds(2);
        for r in [&a, &b, &c] {
            store.create(r).await.expect("create");
        }
        let ids = |v: Vec<KeyRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let all = ids(store.list(&KeyFilter::default()).await.expect("list"));
        assert_eq!(all, ["EEEEEEEEEEE1", "EEEEEEEEEEE2", "EEEEEEEEEEE3"]);
        let alice = KeyFilter {
            owner: Some("alice".into()),
            org: None,
        };
        assert_eq!(
            ids(store.list(&alice).await.expect("list")),
            ["EEEEEEEEEEE1", "EEEEEEEEEEE3"]
        );
        let acme = KeyFilter {
            owner: None,
            org: Some("acme".into()),
        };
        assert_eq!(
            ids(store.list(&acme).await.expect("list")),
            ["EEEEEEEEEEE1", "EEEEEEEEEEE2"]
        );
        let both = KeyFilter {
            owner: Some("alice".into()),
            org: Some("acme".into()),
        };
        assert_eq!(
            ids(store.list(&both).await.expect("list")),
            ["EEEEEEEEEEE1"]
        );
    }

    /// Revoke keeps the first time; an unknown id is `NotFound`.
    pub async fn revoke(store: Arc<dyn KeyStore>) {
        store.create(&sample("FFFFFFFFFFF1")).await.expect("create");
        store.revoke("FFFFFFFFFFF1", t0()).await.expect("revoke");
        store
            .revoke("FFFFFFFFFFF1", t0() + Duration::hours(1))
            .await
            .expect("revoke again");
        let got = store
            .get("FFFFFFFFFFF1")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.revoked_at, Some(t0()));
        let err = store
            .revoke("FFFFFFFFFFF9", t0())
            .await
            .expect_err("unknown");
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    /// Revoking an org revokes its unrevoked keys only, and says which.
    pub async fn revoke_org(store: Arc<dyn KeyStore>) {
        let a = sample("GGGGGGGGGGG1");
        let b = sample("GGGGGGGGGGG2");
        let mut other = sample("GGGGGGGGGGG3");
        other.org = Some("globex".into());
        for r in [&a, &b, &other] {
            store.create(r).await.expect("create");
        }
        store.revoke("GGGGGGGGGGG2", t0()).await.expect("revoke");
        let later = t0() + Duration::hours(1);
        let mut ids = store.revoke_org("acme", later).await.expect("revoke org");
        ids.sort();
        assert_eq!(ids, ["GGGGGGGGGGG1"]);
        let get = |id: &'static str| {
            let store = store.clone();
            async move { store.get(id).await.expect("get").expect("present") }
        };
        assert_eq!(get("GGGGGGGGGGG1").await.revoked_at, Some(later));
        assert_eq!(get("GGGGGGGGGGG2").await.revoked_at, Some(t0()));
        assert_eq!(get("GGGGGGGGGGG3").await.revoked_at, None);
        assert!(
            store
                .revoke_org("nobody", later)
                .await
                .expect("revoke")
                .is_empty()
        );
    }

    /// Disable and enable toggle the flag; an unknown id is `NotFound`.
    pub async fn disable_enable(store: Arc<dyn KeyStore>) {
        store.create(&sample("HHHHHHHHHHH1")).await.expect("create");
        store
            .set_disabled("HHHHHHHHHHH1", true)
            .await
            .expect("disable");
        assert!(
            store
                .get("HHHHHHHHHHH1")
                .await
                .expect("get")
                .expect("present")
                .disabled
        );
        store
            .set_disabled("HHHHHHHHHHH1", false)
            .await
            .expect("enable");
        assert!(
            !store
                .get("HHHHHHHHHHH1")
                .await
                .expect("get")
                .expect("present")
                .disabled
        );
        let err = store
            .set_disabled("HHHHHHHHHHH9", true)
            .await
            .expect_err("unknown");
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    /// `replace_hash` is a compare-and-swap.
    pub async fn replace_hash(store: Arc<dyn KeyStore>) {
        let record = sample("IIIIIIIIIII1");
        store.create(&record).await.expect("create");
        let new = hasher().hash_hmac(b"new");
        let stale = KeyHash::parse(hasher().hash_hmac(b"stale").as_str()).expect("parse");
        assert!(
            !store
                .replace_hash("IIIIIIIIIII1", &stale, &new)
                .await
                .expect("cas")
        );
        assert!(
            store
                .replace_hash("IIIIIIIIIII1", &record.hash, &new)
                .await
                .expect("cas")
        );
        assert_eq!(
            store
                .get("IIIIIIIIIII1")
                .await
                .expect("get")
                .expect("present")
                .hash,
            new
        );
        assert!(
            !store
                .replace_hash("IIIIIIIIIII1", &record.hash, &new)
                .await
                .expect("cas")
        );
        assert!(
            !store
                .replace_hash("IIIIIIIIIII9", &record.hash, &new)
                .await
                .expect("cas")
        );
    }

    /// `record_use` only moves `last_used_at` forward.
    pub async fn record_use(store: Arc<dyn KeyStore>) {
        store.create(&sample("JJJJJJJJJJJ1")).await.expect("create");
        let later = t0() + Duration::minutes(5);
        store.record_use("JJJJJJJJJJJ1", later).await.expect("use");
        store
            .record_use("JJJJJJJJJJJ1", t0())
            .await
            .expect("use earlier");
        let got = store
            .get("JJJJJJJJJJJ1")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.last_used_at, Some(later));
        store
            .record_use("JJJJJJJJJJJ9", later)
            .await
            .expect("unknown id is not an error");
    }

    /// Concurrent creates: distinct ids all land; of racing creates with one id exactly one wins.
    pub async fn concurrent_create(store: Arc<dyn KeyStore>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .create(&sample(&format!("KKKKKKKKK{i:03}")))
                    .await
                    .is_ok()
            });
        }
        for _ in 0..16 {
            let store = store.clone();
            tasks.spawn(async move { store.create(&sample("KKKKKKKKKRACE")).await.is_ok() });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            ok += usize::from(r.expect("task"));
        }
        assert_eq!(
            ok, 65,
            "64 distinct ids plus exactly one winner of the race"
        );
        let all = store.list(&KeyFilter::default()).await.expect("list");
        assert_eq!(all.len(), 65);
    }
}

/// Checks of [`crate::credentials::CredentialStore`].
pub mod credentials {
    use std::sync::Arc;

    use crate::credentials::{
        CredentialScope, CredentialStore, MasterKey, MasterKeyRing, Provider, SealedCredential,
        Vault,
    };
    use crate::random::SeededRandom;

    fn vault() -> Vault {
        let key = MasterKey::generate("conformance", &SeededRandom::new(3)).expect("key");
        Vault::new(MasterKeyRing::new(vec![key]).expect("ring"))
            .with_random(Arc::new(SeededRandom::new(4)))
    }

    fn user(name: &str) -> CredentialScope {
        CredentialScope::user(name).expect("owner")
    }

    fn seal(scope: &CredentialScope, provider: &Provider, text: &str) -> SealedCredential {
        vault().seal(scope, provider, text).expect("seal")
    }

    /// Put, get and put again (replace) round-trip the sealed value exactly.
    pub async fn put_get_replace(store: Arc<dyn CredentialStore>) {
        let (alice, p) = (user("alice"), Provider::anthropic());
        assert!(store.get(&alice, &p).await.expect("get").is_none());
        let first = seal(&alice, &p, "sk-ant-first");
        store.put(&alice, &p, &first).await.expect("put");
        assert_eq!(store.get(&alice, &p).await.expect("get"), Some(first));
        let second = seal(&alice, &p, "sk-ant-second");
        store.put(&alice, &p, &second).await.expect("put again");
        assert_eq!(store.get(&alice, &p).await.expect("get"), Some(second));
    }

    /// A user's key, another user's key and the system key are separate.
    pub async fn scopes_are_separate(store: Arc<dyn CredentialStore>) {
        let p = Provider::openai();
        let (a, b) = (user("alice"), user("bob"));
        let sa = seal(&a, &p, "a");
        let ss = seal(&CredentialScope::System, &p, "s");
        store.put(&a, &p, &sa).await.expect("put");
        store
            .put(&CredentialScope::System, &p, &ss)
            .await
            .expect("put");
        assert_eq!(store.get(&a, &p).await.expect("get"), Some(sa));
        assert_eq!(
            store.get(&CredentialScope::System, &p).await.expect("get"),
            Some(ss)
        );
        assert!(store.get(&b, &p).await.expect("get").is_none());
        assert!(
            store
                .get(&a, &Provider::google())
                .await
                .expect("get")
                .is_none()
        );
        // An owner literally named like the system scope is still a user.
        assert!(store.get(&user("system"), &p).await.expect("get").is_none());
    }

    /// Delete one provider, then all of an owner's keys; others stay.
    pub async fn delete_and_delete_all(store: Arc<dyn CredentialStore>) {
        let a = user("alice");
        for p in Provider::built_in() {
            store.put(&a, &p, &seal(&a, &p, "k")).await.expect("put");
        }
        let bob = user("bob");
        store
            .put(
                &bob,
                &Provider::openai(),
                &seal(&bob, &Provider::openai(), "k"),
            )
            .await
            .expect("put");
        assert!(store.delete(&a, &Provider::google()).await.expect("delete"));
        assert!(
            !store
                .delete(&a, &Provider::google())
                .await
                .expect("delete again")
        );
        assert_eq!(store.delete_all(&a).await.expect("delete all"), 2);
        assert!(store.providers(&a).await.expect("providers").is_empty());
        assert_eq!(
            store.providers(&bob).await.expect("providers"),
            [Provider::openai()]
        );
    }

    /// `providers` is sorted per scope; `list` returns everything with its place.
    pub async fn providers_and_list(store: Arc<dyn CredentialStore>) {
        let a = user("alice");
        let custom = Provider::new("mistral").expect("provider");
        for p in [custom.clone(), Provider::anthropic()] {
            store.put(&a, &p, &seal(&a, &p, "k")).await.expect("put");
        }
        store
            .put(
                &CredentialScope::System,
                &Provider::openai(),
                &seal(&CredentialScope::System, &Provider::openai(), "k"),
            )
            .await
            .expect("put");
        assert_eq!(
            store.providers(&a).await.expect("providers"),
            [Provider::anthropic(), custom.clone()]
        );
        let all = store.list().await.expect("list");
        assert_eq!(all.len(), 3);
        assert!(
            all.iter()
                .any(|c| c.scope == CredentialScope::System && c.provider == Provider::openai())
        );
        assert!(all.iter().any(|c| c.scope == a && c.provider == custom));
    }

    /// `replace` swaps only when the stored value is still the old one.
    pub async fn compare_and_swap(store: Arc<dyn CredentialStore>) {
        let (a, p) = (user("alice"), Provider::anthropic());
        let old = seal(&a, &p, "old");
        let new = seal(&a, &p, "new");
        let other = seal(&a, &p, "other");
        assert!(
            !store
                .replace(&a, &p, &old, &new)
                .await
                .expect("cas on nothing")
        );
        store.put(&a, &p, &old).await.expect("put");
        assert!(
            !store
                .replace(&a, &p, &other, &new)
                .await
                .expect("stale cas")
        );
        assert!(store.replace(&a, &p, &old, &new).await.expect("cas"));
        assert_eq!(store.get(&a, &p).await.expect("get"), Some(new));
    }

    /// Concurrent puts for many owners all land, each in its own place.
    pub async fn concurrent_puts(store: Arc<dyn CredentialStore>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let store = store.clone();
            tasks.spawn(async move {
                let owner = user(&format!("owner-{i}"));
                let sealed = seal(&owner, &Provider::openai(), &format!("key-{i}"));
                store
                    .put(&owner, &Provider::openai(), &sealed)
                    .await
                    .expect("put");
                (owner, sealed)
            });
        }
        let mut written = Vec::new();
        while let Some(r) = tasks.join_next().await {
            written.push(r.expect("task"));
        }
        for (owner, sealed) in written {
            assert_eq!(
                store.get(&owner, &Provider::openai()).await.expect("get"),
                Some(sealed)
            );
        }
        assert_eq!(store.list().await.expect("list").len(), 50);
    }
}

/// Checks of [`crate::ledger::Ledger`].
pub mod ledger {
    use std::sync::Arc;

    use chrono::{DateTime, Duration, TimeZone, Utc};
    use rust_decimal::Decimal;

    use crate::error::Error;
    use crate::ledger::{
        Budget, BudgetPeriod, BudgetScope, EventFilter, GroupBy, Ledger, UsageEvent,
    };
    use crate::pricing::Usage;
    use crate::random::SeededRandom;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
            .single()
            .expect("valid date")
    }

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    /// An event of `cost` for `owner` (org `acme`, key `k1`) at `at`.
    pub fn event(request: &str, owner: &str, cost: &str, at: DateTime<Utc>) -> UsageEvent {
        let usage = Usage {
            input: 100,
            cache_read: 20,
            output: 10,
            reasoning: 5,
            ..Usage::default()
        };
        let seed = request
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        UsageEvent::new(
            Some(request),
            at,
            owner,
            "openai",
            "gpt-4o",
            usage,
            d(cost),
            &SeededRandom::new(seed),
        )
        .expect("event")
        .org("acme")
        .key_id("k1")
    }

    /// The same request id twice is one event, and says so.
    pub async fn record_once(ledger: Arc<dyn Ledger>) {
        let first = ledger
            .record(&event("r1", "alice", "0.10", t0()))
            .await
            .expect("record");
        assert!(!first.duplicate);
        let mut retry = event("r1", "alice", "0.10", t0());
        retry.event_id = "ev_other".into();
        let second = ledger.record(&retry).await.expect("record again");
        assert!(second.duplicate);
        assert_eq!(second.event_id, first.event_id);
        let batch = ledger
            .record_batch(&[
                event("r2", "alice", "0.2", t0()),
                event("r1", "alice", "0.1", t0()),
            ])
            .await
            .expect("batch");
        assert_eq!(
            batch.iter().map(|r| r.duplicate).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(
            ledger
                .events(&EventFilter::default())
                .await
                .expect("events")
                .len(),
            2
        );
    }

    /// Filters and grouped reports, exact to the last digit.
    pub async fn events_and_reports(ledger: Arc<dyn Ledger>) {
        let day2 = t0() + Duration::days(1);
        let mut other = event("r3", "bob", "0.000001", day2);
        other.org = None;
        other.key_id = None;
        other.model = "claude-sonnet-4-5".into();
        ledger
            .record_batch(&[
                event("r1", "alice", "0.1", t0()),
                event("r2", "alice", "0.2", day2),
                other,
            ])
            .await
            .expect("batch");
        let alice = EventFilter {
            owner: Some("alice".into()),
            ..EventFilter::default()
        };
        assert_eq!(ledger.events(&alice).await.expect("events").len(), 2);
        let window = EventFilter {
            since: Some(day2),
            ..EventFilter::default()
        };
        assert_eq!(ledger.events(&window).await.expect("events").len(), 2);
        let until = EventFilter {
            until: Some(day2),
            ..EventFilter::default()
        };
        assert_eq!(ledger.events(&until).await.expect("events").len(), 1);

        let by_owner = ledger
            .report(&EventFilter::default(), GroupBy::Owner, chrono_tz::UTC)
            .await
            .expect("report");
        assert_eq!(by_owner.total, d("0.300001"));
        assert_eq!(by_owner.groups[0].key, "alice");
        assert_eq!(
            (by_owner.groups[0].cost, by_owner.groups[0].events),
            (d("0.3"), 2)
        );
        assert_eq!(
            (
                by_owner.groups[0].input_tokens,
                by_owner.groups[0].output_tokens
            ),
            (240, 30)
        );
        let by_org = ledger
            .report(&EventFilter::default(), GroupBy::Org, chrono_tz::UTC)
            .await
            .expect("report");
        assert_eq!(
            by_org
                .groups
                .iter()
                .map(|g| g.key.as_str())
                .collect::<Vec<_>>(),
            ["(none)", "acme"]
        );
        let by_day = ledger
            .report(&EventFilter::default(), GroupBy::Day, chrono_tz::UTC)
            .await
            .expect("report");
        assert_eq!(
            by_day
                .groups
                .iter()
                .map(|g| g.key.as_str())
                .collect::<Vec<_>>(),
            ["2026-03-10", "2026-03-11"]
        );
        let by_model = ledger
            .report(&EventFilter::default(), GroupBy::Model, chrono_tz::UTC)
            .await
            .expect("report");
        assert_eq!(by_model.groups.len(), 2);
    }

    /// Status reports spend, reservations, what remains, and the soft limit.
    pub async fn budget_status_and_soft_limit(ledger: Arc<dyn Ledger>) {
        let alice = BudgetScope::Owner("alice".into());
        assert!(
            ledger
                .budget_status(&alice, t0())
                .await
                .expect("status")
                .is_none()
        );
        let budget = Budget::new(alice.clone(), d("1.00"), BudgetPeriod::Daily)
            .expect("budget")
            .soft_limit(d("0.5"))
            .expect("soft");
        ledger.set_budget(&budget).await.expect("set");
        assert_eq!(ledger.budget(&alice).await.expect("get"), Some(budget));
        ledger
            .record(&event("r1", "alice", "0.30", t0()))
            .await
            .expect("record");
        let hold = ledger
            .reserve(
                std::slice::from_ref(&alice),
                d("0.25"),
                t0(),
                Duration::minutes(5),
            )
            .await
            .expect("reserve");
        let s = ledger
            .budget_status(&alice, t0())
            .await
            .expect("status")
            .expect("budget");
        assert_eq!(
            (s.limit, s.spent, s.reserved, s.remaining),
            (d("1"), d("0.3"), d("0.25"), d("0.45"))
        );
        assert!(s.soft_exceeded);
        assert_eq!(
            s.period_start,
            Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0)
                .single()
                .expect("date")
        );
        ledger.release(&hold.id).await.expect("release");
        let s = ledger
            .budget_status(&alice, t0())
            .await
            .expect("status")
            .expect("budget");
        assert!(!s.soft_exceeded);
        // The next day starts afresh.
        let s = ledger
            .budget_status(&alice, t0() + Duration::days(1))
            .await
            .expect("status")
            .expect("budget");
        assert_eq!(s.spent, Decimal::ZERO);
    }

    /// A reservation over several budgets takes all or none.
    pub async fn reserve_all_or_none(ledger: Arc<dyn Ledger>) {
        let key = BudgetScope::Key("k1".into());
        let org = BudgetScope::Org("acme".into());
        ledger
            .set_budget(&Budget::new(key.clone(), d("10"), BudgetPeriod::Total).expect("b"))
            .await
            .expect("set");
        ledger
            .set_budget(&Budget::new(org.clone(), d("1"), BudgetPeriod::Monthly).expect("b"))
            .await
            .expect("set");
        let both = [
            key.clone(),
            org.clone(),
            BudgetScope::Owner("no-budget".into()),
        ];
        let ok = ledger
            .reserve(&both, d("0.6"), t0(), Duration::minutes(1))
            .await
            .expect("reserve");
        assert_eq!(ok.scopes, [key.clone(), org.clone()]);
        match ledger
            .reserve(&both, d("0.5"), t0(), Duration::minutes(1))
            .await
        {
            Err(Error::BudgetExceeded {
                scope,
                limit,
                spent,
                reserved,
            }) => {
                assert_eq!(
                    (scope.as_str(), limit, spent, reserved),
                    ("org:acme", d("1"), Decimal::ZERO, d("0.6"))
                );
            }
            other => panic!("expected BudgetExceeded, got {other:?}"),
        }
        // The key budget was not touched by the refused reservation.
        let s = ledger
            .budget_status(&key, t0())
            .await
            .expect("status")
            .expect("budget");
        assert_eq!(s.reserved, d("0.6"));
        // Exactly up to the limit is allowed.
        ledger
            .reserve(&both, d("0.4"), t0(), Duration::minutes(1))
            .await
            .expect("fits exactly");
        assert!(
            ledger
                .reserve(&both, d("0.000001"), t0(), Duration::minutes(1))
                .await
                .is_err()
        );
    }

    /// Settle swaps the reservation for the actual cost; release frees it.
    pub async fn settle_and_release(ledger: Arc<dyn Ledger>) {
        let alice = BudgetScope::Owner("alice".into());
        ledger
            .set_budget(&Budget::new(alice.clone(), d("1"), BudgetPeriod::Monthly).expect("b"))
            .await
            .expect("set");
        let hold = ledger
            .reserve(
                std::slice::from_ref(&alice),
                d("0.9"),
                t0(),
                Duration::minutes(5),
            )
            .await
            .expect("reserve");
        let recorded = ledger
            .settle(&hold.id, &event("r1", "alice", "0.35", t0()), t0())
            .await
            .expect("settle");
        assert!(!recorded.duplicate);
        let s = ledger
            .budget_status(&alice, t0())
            .await
            .expect("status")
            .expect("budget");
        assert_eq!((s.spent, s.reserved), (d("0.35"), Decimal::ZERO));
        // Settling again (a retry) counts once.
        assert!(
            ledger
                .settle(&hold.id, &event("r1", "alice", "0.35", t0()), t0())
                .await
                .expect("settle")
                .duplicate
        );
        let hold = ledger
            .reserve(
                std::slice::from_ref(&alice),
                d("0.65"),
                t0(),
                Duration::minutes(5),
            )
            .await
            .expect("reserve");
        assert!(ledger.release(&hold.id).await.expect("release"));
        assert!(!ledger.release(&hold.id).await.expect("release again"));
        let s = ledger
            .budget_status(&alice, t0())
            .await
            .expect("status")
            .expect("budget");
        assert_eq!(
            (s.spent, s.reserved, s.remaining),
            (d("0.35"), Decimal::ZERO, d("0.65"))
        );
    }

    /// An abandoned reservation stops counting at its deadline.
    pub async fn reservations_expire(ledger: Arc<dyn Ledger>) {
        let alice = BudgetScope::Owner("alice".into());
        ledger
            .set_budget(&Budget::new(alice.clone(), d("1"), BudgetPeriod::Monthly).expect("b"))
            .await
            .expect("set");
        ledger
            .reserve(
                std::slice::from_ref(&alice),
                d("1"),
                t0(),
                Duration::seconds(30),
            )
            .await
            .expect("reserve");
        assert!(
            ledger
                .reserve(
                    std::slice::from_ref(&alice),
                    d("0.01"),
                    t0() + Duration::seconds(29),
                    Duration::seconds(30)
                )
                .await
                .is_err()
        );
        let later = t0() + Duration::seconds(30);
        assert_eq!(
            ledger
                .budget_status(&alice, later)
                .await
                .expect("status")
                .expect("b")
                .reserved,
            Decimal::ZERO
        );
        ledger
            .reserve(
                std::slice::from_ref(&alice),
                d("1"),
                later,
                Duration::seconds(30),
            )
            .await
            .expect("room again");
    }

    /// 64 concurrent tasks reserving and settling never take spend plus reservations past the limit.
    pub async fn concurrent_reservations_never_overshoot(ledger: Arc<dyn Ledger>) {
        let alice = BudgetScope::Owner("alice".into());
        let limit = d("1.00");
        ledger
            .set_budget(&Budget::new(alice.clone(), limit, BudgetPeriod::Monthly).expect("b"))
            .await
            .expect("set");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let ledger = ledger.clone();
            let alice = alice.clone();
            tasks.spawn(async move {
                let mut admitted = 0u32;
                for round in 0..3u32 {
                    // Worst case 0.05; actual cost a little less, varying.
                    match ledger
                        .reserve(
                            std::slice::from_ref(&alice),
                            d("0.05"),
                            t0(),
                            Duration::minutes(5),
                        )
                        .await
                    {
                        Ok(hold) => {
                            let status = ledger
                                .budget_status(&alice, t0())
                                .await
                                .expect("status")
                                .expect("budget");
                            assert!(
                                status.spent + status.reserved <= status.limit,
                                "overshoot: {status:?}"
                            );
                            let actual = Decimal::new(i64::from(30 + (i + round) % 20), 3);
                            let req = format!("req-{i}-{round}");
                            ledger
                                .settle(
                                    &hold.id,
                                    &event(&req, "alice", &actual.to_string(), t0()),
                                    t0(),
                                )
                                .await
                                .expect("settle");
                            admitted += 1;
                        }
                        Err(Error::BudgetExceeded { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    tokio::task::yield_now().await;
                }
                admitted
            });
        }
        let mut admitted = 0;
        while let Some(r) = tasks.join_next().await {
            admitted += r.expect("task");
        }
        let s = ledger
            .budget_status(&alice, t0())
            .await
            .expect("status")
            .expect("budget");
        assert!(s.spent <= limit, "spent {} over {limit}", s.spent);
        assert_eq!(s.reserved, Decimal::ZERO);
        let events = ledger
            .events(&EventFilter::default())
            .await
            .expect("events");
        assert_eq!(events.len() as u32, admitted);
        assert_eq!(events.iter().map(|e| e.cost).sum::<Decimal>(), s.spent);
        assert!(
            admitted >= 20,
            "only {admitted} admitted: the limit should allow at least 20 reservations of 0.05"
        );
    }

    /// Setting a budget counts spend already recorded in its period (and re-counts on a change of period).
    pub async fn set_budget_counts_past_events(ledger: Arc<dyn Ledger>) {
        ledger
            .record(&event("r1", "alice", "0.4", t0() - Duration::days(20)))
            .await
            .expect("record");
        ledger
            .record(&event("r2", "alice", "0.1", t0()))
            .await
            .expect("record");
        let alice = BudgetScope::Owner("alice".into());
        ledger
            .set_budget(&Budget::new(alice.clone(), d("1"), BudgetPeriod::Monthly).expect("b"))
            .await
            .expect("set");
        assert_eq!(
            ledger
                .budget_status(&alice, t0())
                .await
                .expect("s")
                .expect("b")
                .spent,
            d("0.1")
        );
        ledger
            .set_budget(&Budget::new(alice.clone(), d("1"), BudgetPeriod::Total).expect("b"))
            .await
            .expect("set");
        assert_eq!(
            ledger
                .budget_status(&alice, t0())
                .await
                .expect("s")
                .expect("b")
                .spent,
            d("0.5")
        );
        ledger
            .record(&event("r3", "alice", "0.25", t0()))
            .await
            .expect("record");
        assert_eq!(
            ledger
                .budget_status(&alice, t0())
                .await
                .expect("s")
                .expect("b")
                .spent,
            d("0.75")
        );
    }
}
