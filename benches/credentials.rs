//! Resolving a user's provider key, decryption included. Target (issue #3): ≤ 2 µs from memory. On SQLite
//! (feature `sqlite`): a point read per resolve, and the same through `CachedCredentialStore` (DESIGN §14: no
//! store round trip when warm), whose floor is the in-memory store's resolve of the same key.
//! Run: `cargo bench --bench credentials`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use keymeter::credentials::{
    CachedCredentialStore, CredentialResolver, CredentialScope, CredentialStore, MasterKey,
    MasterKeyRing, Provider, Vault, set_key,
};
use keymeter::env::Environment;
use keymeter::random::SeededRandom;
use keymeter::store::MemoryStore;

/// Polls `f` once and, if it waits (a SQLite read handed to the pool), finishes it on `rt`: a path that never
/// waits pays no runtime hand-off, as the in-memory floor does not.
fn run<F: Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => rt.block_on(f),
    }
}

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

/// 1,000 users' keys and a system key, sealed into `store`.
fn fill(rt: &tokio::runtime::Runtime, store: &dyn CredentialStore, vault: &Vault) {
    let anthropic = Provider::anthropic();
    for i in 0..1_000 {
        let owner = CredentialScope::user(&format!("user-{i}")).unwrap();
        let key = format!(
            "sk-ant-api03-user{i:04}-abcdefghijklmnopqrstuvwxyz0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ-abcdefgh"
        );
        rt.block_on(set_key(store, vault, &owner, &anthropic, &key))
            .unwrap();
    }
    rt.block_on(set_key(
        store,
        vault,
        &CredentialScope::System,
        &anthropic,
        "sk-ant-api03-system-0000000000000000000000",
    ))
    .unwrap();
}

fn credentials(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let vault = Arc::new(Vault::new(
        MasterKeyRing::new(vec![
            MasterKey::generate("k1", &SeededRandom::new(1)).unwrap(),
        ])
        .unwrap(),
    ));
    let anthropic = Provider::anthropic();
    fill(&rt, &*store, &vault);
    let resolver = CredentialResolver::new(store, vault.clone(), Environment::Production);
    let mut group = c.benchmark_group("credentials");
    group.bench_function("resolve_user_key_memory", |b| {
        b.iter(|| ready(resolver.resolve(black_box("user-500"), &anthropic)).unwrap())
    });
    group.bench_function("resolve_system_fallback_memory", |b| {
        b.iter(|| ready(resolver.resolve(black_box("nobody"), &anthropic)).unwrap())
    });
    #[cfg(feature = "sqlite")]
    {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let sqlite: Arc<dyn CredentialStore> = Arc::new(
            rt.block_on(keymeter::store::SqliteStore::connect(&url))
                .unwrap(),
        );
        fill(&rt, &*sqlite, &vault);
        let bare = CredentialResolver::new(sqlite.clone(), vault.clone(), Environment::Production);
        let cached = CredentialResolver::new(
            Arc::new(CachedCredentialStore::new(sqlite)),
            vault.clone(),
            Environment::Production,
        );
        // Interleaved with the floor: the in-memory resolve of the same key.
        group.bench_function("resolve_user_key_sqlite", |b| {
            b.iter(|| run(&rt, bare.resolve(black_box("user-500"), &anthropic)).unwrap())
        });
        group.bench_function("resolve_user_key_sqlite_cached", |b| {
            b.iter(|| run(&rt, cached.resolve(black_box("user-500"), &anthropic)).unwrap())
        });
        group.bench_function("resolve_user_key_memory_floor", |b| {
            b.iter(|| ready(resolver.resolve(black_box("user-500"), &anthropic)).unwrap())
        });
        group.bench_function("resolve_system_fallback_sqlite_cached", |b| {
            b.iter(|| run(&rt, cached.resolve(black_box("nobody"), &anthropic)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, credentials);
criterion_main!(benches);
