//! The hot verify path against its floor: a bare HMAC-SHA-256 of the same token plus one `HashMap` lookup.
//!
//! Targets (issue #2): in-memory verify of a valid generated key ≤ 1.5× the floor; malformed-token rejection
//! ≤ 100 ns. Run: `cargo bench --bench verify`.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use keymeter::keys::{
    KeyHasher, KeyIssuer, NewKey, Pepper, PepperRing, Requirement, Scope, ScopeRequirement,
    VerdictCode, Verifier, VerifierConfig,
};
use keymeter::random::SeededRandom;
use keymeter::store::MemoryStore;
use secrecy::ExposeSecret;
use sha2::Sha256;

const KEYS: usize = 100_000;

/// Polls a future that never waits (the memory store answers at once) without a runtime's overhead.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

fn verify(c: &mut Criterion) {
    let pepper_bytes = [7u8; 32];
    let pepper = Pepper::new("p1", secrecy::SecretBox::new(Box::new(pepper_bytes))).unwrap();
    let hasher = Arc::new(KeyHasher::new(PepperRing::new(vec![pepper]).unwrap()));
    let store = Arc::new(MemoryStore::new());
    let issuer =
        KeyIssuer::new(store.clone(), hasher.clone()).with_random(Arc::new(SeededRandom::new(3)));
    let read = Scope::parse_list("read").unwrap();
    let mut tokens = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let issued =
            ready(issuer.issue(NewKey::new(format!("k{i}"), "bench").scopes(read.clone())))
                .unwrap();
        tokens.push(issued);
    }
    let verifier = Verifier::new(store.clone(), hasher.clone(), VerifierConfig::default()).unwrap();
    let token = tokens[KEYS / 2].token.expose_secret().to_owned();
    let need_read = Requirement::new().scopes(ScopeRequirement::all(["read"]).unwrap());
    assert_eq!(
        ready(verifier.verify(&token, &need_read)).unwrap().code(),
        VerdictCode::Valid
    );

    let mut group = c.benchmark_group("verify");

    // The floor: what any correct verify must at least do.
    let index: HashMap<String, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.record.id.clone(), i))
        .collect();
    let id = tokens[KEYS / 2].record.id.clone();
    group.bench_function("floor_hmac_plus_hashmap", |b| {
        b.iter(|| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&pepper_bytes).unwrap();
            mac.update(black_box(token.as_bytes()));
            let digest = mac.finalize().into_bytes();
            (black_box(digest), index.get(black_box(id.as_str())))
        })
    });

    group.bench_function("valid_generated_key_100k", |b| {
        b.iter(|| ready(verifier.verify(black_box(&token), &need_read)).unwrap())
    });

    let mut typo = token.clone();
    typo.replace_range(30..31, if &token[30..31] == "A" { "B" } else { "A" });
    assert_eq!(
        ready(verifier.verify(&typo, &need_read)).unwrap().code(),
        VerdictCode::Malformed
    );
    group.bench_function("malformed_token", |b| {
        b.iter(|| ready(verifier.verify(black_box(&typo), &need_read)).unwrap())
    });

    let (_, unknown) =
        keymeter::keys::token::generate("km", keymeter::keys::KeyEnv::Live, &SeededRandom::new(77))
            .unwrap();
    let unknown = unknown.expose_secret().to_owned();
    assert_eq!(
        ready(verifier.verify(&unknown, &need_read)).unwrap().code(),
        VerdictCode::NotFound
    );
    group.bench_function("unknown_id", |b| {
        b.iter(|| ready(verifier.verify(black_box(&unknown), &need_read)).unwrap())
    });

    // An admin-chosen key under Argon2id (default parameters m=19456, t=2, p=1), cold and cached.
    let secret = "admin-chosen-passphrase-42";
    let argon = hasher.hash_argon2(secret.as_bytes()).unwrap();
    ready(issuer.import(
        NewKey::new("argon", "bench").scopes(read.clone()),
        argon.as_str(),
        Some(&secret[..8]),
    ))
    .unwrap();
    let cold = Verifier::new(
        store.clone(),
        hasher.clone(),
        VerifierConfig {
            cache_capacity: 0,
            ..VerifierConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        ready(cold.verify(secret, &need_read)).unwrap().code(),
        VerdictCode::Valid
    );
    group.sample_size(10);
    group.bench_function("argon2id_cold", |b| {
        b.iter(|| ready(cold.verify(black_box(secret), &need_read)).unwrap())
    });
    group.sample_size(100);
    assert_eq!(
        ready(verifier.verify(secret, &need_read)).unwrap().code(),
        VerdictCode::Valid
    );
    group.bench_function("argon2id_cached", |b| {
        b.iter(|| ready(verifier.verify(black_box(secret), &need_read)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
