//! Resolving a user's provider key from the in-memory store, decryption included. Target (issue #3): ≤ 2 µs.
//! Run: `cargo bench --bench credentials`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use keymeter::credentials::{
    CredentialResolver, CredentialScope, MasterKey, MasterKeyRing, Provider, Vault, set_key,
};
use keymeter::env::Environment;
use keymeter::random::SeededRandom;
use keymeter::store::MemoryStore;

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

fn credentials(c: &mut Criterion) {
    let store = Arc::new(MemoryStore::new());
    let vault = Arc::new(Vault::new(
        MasterKeyRing::new(vec![
            MasterKey::generate("k1", &SeededRandom::new(1)).unwrap(),
        ])
        .unwrap(),
    ));
    let anthropic = Provider::anthropic();
    for i in 0..1_000 {
        let owner = CredentialScope::user(&format!("user-{i}")).unwrap();
        let key = format!(
            "sk-ant-api03-user{i:04}-abcdefghijklmnopqrstuvwxyz0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ-abcdefgh"
        );
        ready(set_key(&*store, &vault, &owner, &anthropic, &key)).unwrap();
    }
    ready(set_key(
        &*store,
        &vault,
        &CredentialScope::System,
        &anthropic,
        "sk-ant-api03-system-0000000000000000000000",
    ))
    .unwrap();
    let resolver = CredentialResolver::new(store, vault, Environment::Production);
    let mut group = c.benchmark_group("credentials");
    group.bench_function("resolve_user_key_memory", |b| {
        b.iter(|| ready(resolver.resolve(black_box("user-500"), &anthropic)).unwrap())
    });
    group.bench_function("resolve_system_fallback_memory", |b| {
        b.iter(|| ready(resolver.resolve(black_box("nobody"), &anthropic)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, credentials);
criterion_main!(benches);
