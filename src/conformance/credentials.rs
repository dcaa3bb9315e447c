//! Checks of [`crate::credentials::CredentialStore`].

use std::sync::Arc;

use crate::credentials::{
    CredentialScope, CredentialStore, MasterKey, MasterKeyRing, Provider, SealedCredential, Vault,
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
