//! Checks of [`crate::keys::KeyStore`].

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::error::Error;
use crate::keys::{
    KeyEnv, KeyFilter, KeyHash, KeyHasher, KeyLookup, KeyRecord, KeyStore, MAX_KEYS_PER_HINT,
    Pepper, PepperRing, PreviousSecret, RateLimit, Scope,
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
        allowed_models: crate::keys::models::parse_rules("gpt-4o*,anthropic/*").expect("rules"),
        metadata: serde_json::json!({"team": "infra", "n": 1}),
        tags: vec!["infra".into(), "ci".into()],
        previous: Some(PreviousSecret {
            hash: hasher().hash_hmac(b"the secret before"),
            valid_until: t0() + Duration::hours(24),
        }),
        created_by: Some("CREATOR00001".into()),
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
    // An answer without waiting, where the backend gives one, is the answer `get` gives.
    if let Some(now) = store.get_now("AAAAAAAAAAA1", Utc::now().timestamp_micros()) {
        assert_eq!(now.as_deref(), Some(&record));
    }
    if let Some(now) = store.get_now("AAAAAAAAAAA2", Utc::now().timestamp_micros()) {
        assert!(now.is_none());
    }
    let mut minimal = sample("AAAAAAAAAAA3");
    minimal.org = None;
    minimal.expires_at = None;
    minimal.allowed_ips.clear();
    minimal.rate_limit = None;
    minimal.scopes.clear();
    minimal.metadata = serde_json::json!({});
    minimal.previous = None;
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
    let alice = KeyFilter::new().owner("alice");
    assert_eq!(
        ids(store.list(&alice).await.expect("list")),
        ["EEEEEEEEEEE1", "EEEEEEEEEEE3"]
    );
    let acme = KeyFilter::new().org("acme");
    assert_eq!(
        ids(store.list(&acme).await.expect("list")),
        ["EEEEEEEEEEE1", "EEEEEEEEEEE2"]
    );
    let both = KeyFilter::new().owner("alice").org("acme");
    // A limit keeps the oldest.
    assert_eq!(
        ids(store
            .list(&KeyFilter::new().owner("alice").limit(1))
            .await
            .expect("list")),
        ["EEEEEEEEEEE1"]
    );
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

/// Revoking a key revokes the live keys it created (`created_by`), keeps an earlier revocation's time, and leaves
/// other keys alone.
pub async fn revoke_takes_created(store: Arc<dyn KeyStore>) {
    let mut creator = sample("CCCCCCCCCCC1");
    creator.created_by = None;
    let mut made = sample("CCCCCCCCCCC2");
    made.created_by = Some(creator.id.clone());
    let mut made_revoked = sample("CCCCCCCCCCC3");
    made_revoked.created_by = Some(creator.id.clone());
    let mut other = sample("CCCCCCCCCCC4");
    other.created_by = Some("CCCCCCCCCCC9".into());
    for r in [&creator, &made, &made_revoked, &other] {
        store.create(r).await.expect("create");
    }
    store
        .revoke(&made_revoked.id, t0())
        .await
        .expect("revoke one");
    let later = t0() + Duration::hours(2);
    store
        .revoke(&creator.id, later)
        .await
        .expect("revoke creator");
    let revoked_at = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .get(id)
                .await
                .expect("get")
                .expect("present")
                .revoked_at
        }
    };
    assert_eq!(revoked_at("CCCCCCCCCCC1").await, Some(later));
    assert_eq!(
        revoked_at("CCCCCCCCCCC2").await,
        Some(later),
        "a created key goes with its creator"
    );
    assert_eq!(
        revoked_at("CCCCCCCCCCC3").await,
        Some(t0()),
        "an earlier revocation keeps its time"
    );
    assert_eq!(
        revoked_at("CCCCCCCCCCC4").await,
        None,
        "another creator's key stays"
    );
    let got = store
        .get("CCCCCCCCCCC2")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.created_by.as_deref(), Some("CCCCCCCCCCC1"));
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

/// `update` changes the fields its patch names and nothing else, answers the record as stored, refuses bad values
/// (changing nothing) and unknown ids.
pub async fn update(store: Arc<dyn KeyStore>) {
    let before = sample("UUUUUUUUUUU1");
    store.create(&before).await.expect("create");
    let patch = crate::keys::KeyPatch {
        name: Some("renamed".into()),
        scopes: Some(Scope::parse_list("llm:chat").expect("scopes")),
        allowed_ips: Some(Vec::new()),
        allowed_models: Some(crate::keys::models::parse_rules("google/*").expect("rules")),
        metadata: Some(serde_json::json!({"team": "ml"})),
        expires_at: Some(None),
        disabled: Some(true),
        tags: Some(vec!["ml".into()]),
    };
    let changed = store.update("UUUUUUUUUUU1", &patch).await.expect("update");
    let got = store
        .get("UUUUUUUUUUU1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(*changed, *got, "the answer is the stored record");
    let mut expected = before.clone();
    expected.name = "renamed".into();
    expected.scopes = Scope::parse_list("llm:chat").expect("scopes");
    expected.allowed_ips = Vec::new();
    expected.allowed_models = crate::keys::models::parse_rules("google/*").expect("rules");
    expected.metadata = serde_json::json!({"team": "ml"});
    expected.expires_at = None;
    expected.disabled = true;
    expected.tags = vec!["ml".into()];
    assert_eq!(*got, expected, "every other field as it was");
    // One field only: the rest stays.
    let later = t0() + Duration::days(7);
    let one = crate::keys::KeyPatch {
        expires_at: Some(Some(later)),
        ..Default::default()
    };
    let changed = store.update("UUUUUUUUUUU1", &one).await.expect("update");
    expected.expires_at = Some(later);
    assert_eq!(*changed, expected);
    for bad in [
        crate::keys::KeyPatch {
            name: Some(String::new()),
            ..Default::default()
        },
        crate::keys::KeyPatch {
            metadata: Some(serde_json::json!(["not", "an", "object"])),
            ..Default::default()
        },
        crate::keys::KeyPatch {
            metadata: Some(serde_json::json!({"big": "x".repeat(5000)})),
            ..Default::default()
        },
    ] {
        let err = store
            .update("UUUUUUUUUUU1", &bad)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    }
    assert_eq!(
        *store
            .get("UUUUUUUUUUU1")
            .await
            .expect("get")
            .expect("present"),
        expected
    );
    let err = store
        .update("UUUUUUUUUUU9", &one)
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// `replace_hash` is a compare-and-swap.
pub async fn replace_hash(store: Arc<dyn KeyStore>) {
    let record = sample("IIIIIIIIIII1");
    store.create(&record).await.expect("create");
    let new = hasher().hash_hmac(b"new");
    let stale = KeyHash::from_str(hasher().hash_hmac(b"stale").as_str()).expect("parse");
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

/// `rotate` swaps the hash in one step, keeps the old one (only the last) until the grace ends, and refuses
/// unknown, revoked and imported keys without changing them.
pub async fn rotate(store: Arc<dyn KeyStore>) {
    let mut record = sample("RRRRRRRRRRR1");
    record.previous = None;
    store.create(&record).await.expect("create");
    let second = hasher().hash_hmac(b"second");
    let until = t0() + Duration::hours(24);
    store
        .rotate("RRRRRRRRRRR1", &second, Some(until))
        .await
        .expect("rotate");
    let got = store
        .get("RRRRRRRRRRR1")
        .await
        .expect("get")
        .expect("present");
    let mut expected = record.clone();
    expected.hash = second.clone();
    expected.previous = Some(PreviousSecret {
        hash: record.hash.clone(),
        valid_until: until,
    });
    assert_eq!(
        *got, expected,
        "only the hash and the previous secret change"
    );
    // Rotating again keeps only the latest previous secret; no grace keeps none.
    let third = hasher().hash_hmac(b"third");
    store
        .rotate("RRRRRRRRRRR1", &third, Some(until + Duration::hours(1)))
        .await
        .expect("rotate again");
    let got = store
        .get("RRRRRRRRRRR1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (got.hash.clone(), got.previous.clone()),
        (
            third.clone(),
            Some(PreviousSecret {
                hash: second,
                valid_until: until + Duration::hours(1)
            })
        )
    );
    let fourth = hasher().hash_hmac(b"fourth");
    store
        .rotate("RRRRRRRRRRR1", &fourth, None)
        .await
        .expect("rotate without grace");
    let got = store
        .get("RRRRRRRRRRR1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (got.hash.clone(), got.previous.clone()),
        (fourth.clone(), None)
    );

    let err = store
        .rotate("RRRRRRRRRRR9", &fourth, None)
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");

    let mut revoked = sample("RRRRRRRRRRR2");
    revoked.previous = None;
    store.create(&revoked).await.expect("create");
    store.revoke("RRRRRRRRRRR2", t0()).await.expect("revoke");
    let err = store
        .rotate("RRRRRRRRRRR2", &fourth, Some(until))
        .await
        .expect_err("revoked");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let got = store
        .get("RRRRRRRRRRR2")
        .await
        .expect("get")
        .expect("present");
    assert_eq!((&got.hash, &got.previous), (&revoked.hash, &None));

    let mut imported = sample("RRRRRRRRRRR3");
    imported.previous = None;
    imported.hash = KeyHasher::sha256(b"an imported key");
    imported.lookup = KeyLookup::Digest(imported.hash.sha256_hex().expect("sha256").to_owned());
    store.create(&imported).await.expect("create");
    let err = store
        .rotate("RRRRRRRRRRR3", &fourth, None)
        .await
        .expect_err("imported");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
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
