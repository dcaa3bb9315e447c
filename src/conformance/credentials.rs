//! Checks of [`crate::credentials::CredentialStore`].

use std::sync::Arc;

use crate::credentials::{
    CachedCredentialStore, CredentialScope, CredentialStore, MasterKey, MasterKeyRing, Provider,
    SealedCredential, Vault,
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
    // A blank owner or one with a control character is refused before anything is stored.
    for bad in ["", "  ", "eve\u{1b}[2J"] {
        let scope = CredentialScope::User(bad.to_owned());
        let sealed = seal(&alice, &p, "sk-ant-x");
        let err = store
            .put(&scope, &p, &sealed)
            .await
            .expect_err("invalid owner");
        assert!(matches!(err, crate::Error::InvalidInput { .. }), "{err}");
    }
    assert_eq!(store.list().await.expect("list").len(), 1);
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

/// A store that keeps a [`CredentialStore::credential_version`] moves it with every write (put, replace, delete,
/// delete all) and with none of the reads; a store that keeps none says `None` every time.
pub async fn version_moves_with_every_write(store: Arc<dyn CredentialStore>) {
    let Some(mut last) = store.credential_version().await.expect("version") else {
        assert_eq!(store.credential_version().await.expect("version"), None);
        return;
    };
    let alice = user("alice");
    let openai = Provider::openai();
    fn moved(last: &mut i64, now: Option<i64>, what: &str) {
        let now = now.expect("still kept");
        assert_ne!(now, *last, "{what} did not move the version");
        *last = now;
    }
    let first = seal(&alice, &openai, "sk-proj-version-000000000000000000000000");
    store.put(&alice, &openai, &first).await.expect("put");
    moved(
        &mut last,
        store.credential_version().await.expect("v"),
        "put",
    );
    let second = seal(&alice, &openai, "sk-proj-version-111111111111111111111111");
    assert!(
        store
            .replace(&alice, &openai, &first, &second)
            .await
            .expect("replace")
    );
    moved(
        &mut last,
        store.credential_version().await.expect("v"),
        "replace",
    );
    store.get(&alice, &openai).await.expect("get");
    store.providers(&alice).await.expect("providers");
    store.list().await.expect("list");
    assert_eq!(
        store.credential_version().await.expect("v"),
        Some(last),
        "a read moved it"
    );
    assert!(store.delete(&alice, &openai).await.expect("delete"));
    moved(
        &mut last,
        store.credential_version().await.expect("v"),
        "delete",
    );
    store.put(&alice, &openai, &first).await.expect("put");
    moved(
        &mut last,
        store.credential_version().await.expect("v"),
        "put",
    );
    assert_eq!(store.delete_all(&alice).await.expect("delete all"), 1);
    moved(
        &mut last,
        store.credential_version().await.expect("v"),
        "delete all",
    );
}

/// A [`CachedCredentialStore`] in front of the store answers what was written through it at once, and what was
/// written to the store beside it (another process) once a second has passed.
pub async fn a_cache_sees_every_write(store: Arc<dyn CredentialStore>) {
    use crate::clock::ManualClock;
    use chrono::{Duration, TimeZone, Utc};

    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap(),
    ));
    let cache = CachedCredentialStore::new(store.clone()).with_clock(clock.clone());
    let bob = user("bob");
    let openai = Provider::openai();
    assert_eq!(cache.get(&bob, &openai).await.expect("get"), None);
    assert_eq!(
        cache
            .get(&CredentialScope::System, &openai)
            .await
            .expect("get"),
        None
    );
    let through = seal(&bob, &openai, "sk-proj-through-00000000000000000000000");
    cache.put(&bob, &openai, &through).await.expect("put");
    assert_eq!(
        cache.get(&bob, &openai).await.expect("get"),
        Some(through.clone())
    );
    // Beside the cache: the system key appears and bob's changes.
    let system = seal(
        &CredentialScope::System,
        &openai,
        "sk-proj-system-0000000000000000000000000",
    );
    store
        .put(&CredentialScope::System, &openai, &system)
        .await
        .expect("put");
    let beside = seal(&bob, &openai, "sk-proj-beside-00000000000000000000000000");
    assert!(
        store
            .replace(&bob, &openai, &through, &beside)
            .await
            .expect("replace")
    );
    clock.advance(Duration::seconds(1));
    assert_eq!(
        cache
            .get(&CredentialScope::System, &openai)
            .await
            .expect("get"),
        Some(system)
    );
    assert_eq!(cache.get(&bob, &openai).await.expect("get"), Some(beside));
    assert!(store.delete(&bob, &openai).await.expect("delete"));
    clock.advance(Duration::seconds(1));
    assert_eq!(cache.get(&bob, &openai).await.expect("get"), None);
}
