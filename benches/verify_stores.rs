//! Verify on the database backends, cold (every verify reads the store) and hot (a [`CachedKeyStore`] in front,
//! evicted by the store's change feed), beside the floors of issue #11:
//!
//! - hot: ≤ 1.5× `memory_floor`, the in-memory floor of `benches/verify.rs` (shape, checksum, one map lookup,
//!   keyed HMAC, compare, status checks) over the same keys; a hot verify that needs no wait is polled without a
//!   runtime, as the floor runs;
//! - cold SQLite: ≤ 3× `sqlite_floor`, a bare `rusqlite` prepared-statement point read of the same row (every key
//!   column) plus the keyed HMAC and compare, on the same database file and the same tokens.
//!
//! PostgreSQL runs when `KEYMETER_TEST_PG_URL` is set (a schema of its own, dropped after). Every case cycles over
//! the same 4,096 of 10,000 keys. Run: `cargo bench --bench verify_stores`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common/pg.rs"]
mod pg;
#[path = "common/verify_floor.rs"]
mod verify_floor;
use hmac::{Hmac, KeyInit, Mac};
use keymeter::keys::{
    CachedKeyStore, IssuedKey, KeyHasher, KeyIssuer, KeyStore, NewKey, Pepper, PepperRing,
    Requirement, Scope, ScopeRequirement, VerdictCode, Verifier, VerifierConfig,
};
use keymeter::random::SeededRandom;
use keymeter::store::Store;
use secrecy::ExposeSecret;
use sha2::Sha256;

const KEYS: usize = 10_000;
const CYCLE: usize = 4096;
const PEPPER: [u8; 32] = [7u8; 32];

fn hasher() -> Arc<KeyHasher> {
    let pepper = Pepper::new("p1", secrecy::SecretBox::new(Box::new(PEPPER))).unwrap();
    Arc::new(KeyHasher::new(PepperRing::new(vec![pepper]).unwrap()))
}

/// Runs `f` to completion: polled once without a runtime (a hot verify never waits), on `rt` if it must wait.
fn run<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => rt.block_on(f),
    }
}

/// Issues the keys into `store`; returns them and the cycle of tokens verified.
fn fill(rt: &tokio::runtime::Runtime, store: Arc<dyn Store>) -> (Vec<IssuedKey>, Vec<String>) {
    let issuer = KeyIssuer::new(store, hasher()).with_random(Arc::new(SeededRandom::new(11)));
    let read = Scope::parse_list("read").unwrap();
    let issued: Vec<IssuedKey> = (0..KEYS)
        .map(|i| {
            let new = NewKey::new(format!("k{i}"), "bench").scopes(read.clone());
            rt.block_on(issuer.issue(new)).unwrap()
        })
        .collect();
    let cycle = (0..CYCLE)
        .map(|i| issued[i * (KEYS / CYCLE)].token.expose_secret().to_owned())
        .collect();
    (issued, cycle)
}

/// The in-memory floor over the same keys and cycle.
fn memory_floor(c: &mut Criterion, issued: &[IssuedKey], cycle: &[String]) {
    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&PEPPER).unwrap();
    let index = verify_floor::index(&mac, issued);
    for token in cycle {
        assert!(verify_floor::verify(token, &mac, &index, "read"));
    }
    // The same records in the in-memory store: what the verifier itself costs beside the floor.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let memory = Arc::new(keymeter::store::MemoryStore::new());
    for k in issued {
        rt.block_on(memory.create(&k.record)).unwrap();
    }
    let verifier = Verifier::new(memory, hasher(), VerifierConfig::default()).unwrap();
    let need = Requirement::new().scopes(ScopeRequirement::all(["read"]).unwrap());
    let mut group = c.benchmark_group("verify_stores");
    let mut i = 0;
    group.bench_function("memory_floor", |b| {
        b.iter(|| {
            i = (i + 1) % CYCLE;
            verify_floor::verify(black_box(&cycle[i]), &mac, &index, "read")
        })
    });
    let mut i = 0;
    group.bench_function("memory", |b| {
        b.iter(|| {
            i = (i + 1) % CYCLE;
            run(&rt, verifier.verify(black_box(&cycle[i]), &need)).unwrap()
        })
    });
    group.finish();
}

/// The cold and hot cases of one backend.
fn cold_and_hot(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: Arc<dyn Store>,
    cycle: &[String],
) {
    let need = Requirement::new().scopes(ScopeRequirement::all(["read"]).unwrap());
    let cold = Verifier::new(store.clone(), hasher(), VerifierConfig::default()).unwrap();
    let feed = rt.block_on(store.key_changes()).unwrap();
    let cache: Arc<dyn KeyStore> = Arc::new(CachedKeyStore::new(store.clone(), feed, KEYS));
    let hot = Verifier::new(cache, hasher(), VerifierConfig::default()).unwrap();
    for token in cycle {
        assert_eq!(
            rt.block_on(hot.verify(token, &need)).unwrap().code(),
            VerdictCode::Valid
        );
    }
    let mut group = c.benchmark_group("verify_stores");
    let mut i = 0;
    group.bench_function(format!("{name}_cold"), |b| {
        b.iter(|| {
            i = (i + 1) % CYCLE;
            rt.block_on(cold.verify(black_box(&cycle[i]), &need))
                .unwrap()
        })
    });
    // The hot path's once-a-second poll of the feed needs the runtime's context (its I/O is driven by block_on).
    let _context = rt.enter();
    let mut i = 0;
    group.bench_function(format!("{name}_hot"), |b| {
        b.iter(|| {
            i = (i + 1) % CYCLE;
            run(rt, hot.verify(black_box(&cycle[i]), &need)).unwrap()
        })
    });
    group.finish();
}

/// The cold SQLite floor: a prepared point read of the key's row with rusqlite, then HMAC and compare.
fn sqlite_floor(c: &mut Criterion, path: &std::path::Path, cycle: &[String]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&PEPPER).unwrap();
    let mut select = conn
        .prepare(
            "SELECT id, name, owner, org, env, scopes, hash, lookup_kind, lookup_value, hint, created_at, \
             expires_at, last_used_at, disabled, revoked_at, allowed_ips, rate_limit, metadata, previous_hash, \
             previous_valid_until FROM keymeter_api_keys WHERE id = ?1",
        )
        .unwrap();
    // The id is the token's third `_`-separated part; the stored hash's digest is its last `$` part (base64).
    let mut floor = |token: &str| -> bool {
        let id = token.split('_').nth(2).unwrap_or("");
        let hash: String = select
            .query_row([id], |row| {
                let _: Option<String> = row.get(3)?;
                let _: String = row.get(5)?;
                let _: Option<i64> = row.get(11)?;
                let _: bool = row.get(13)?;
                let _: Option<i64> = row.get(14)?;
                row.get(6)
            })
            .unwrap();
        let mut m = mac.clone();
        m.update(token.as_bytes());
        let digest = m.finalize().into_bytes();
        let stored = hash.rsplit('$').next().unwrap_or("");
        let stored =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, stored)
                .unwrap_or_default();
        subtle::ConstantTimeEq::ct_eq(&digest[..], &stored[..]).into()
    };
    for token in cycle.iter().take(8) {
        assert!(floor(token), "the floor verifies the same keys");
    }
    let mut group = c.benchmark_group("verify_stores");
    let mut i = 0;
    group.bench_function("sqlite_floor", |b| {
        b.iter(|| {
            i = (i + 1) % CYCLE;
            floor(black_box(&cycle[i]))
        })
    });
    group.finish();
}

fn verify_stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let sqlite: Arc<dyn Store> = rt
        .block_on(keymeter::store::connect(&format!(
            "sqlite://{}",
            path.display()
        )))
        .unwrap();
    let (issued, cycle) = fill(&rt, sqlite.clone());
    memory_floor(c, &issued, &cycle);
    sqlite_floor(c, &path, &cycle);
    cold_and_hot(c, &rt, "sqlite", sqlite, &cycle);

    if let Some(pg) = pg::schema(&rt, "verify_stores") {
        let (_, cycle) = fill(&rt, pg.store.clone());
        cold_and_hot(c, &rt, "postgres", pg.store.clone(), &cycle);
    }
}

criterion_group!(benches, verify_stores);
criterion_main!(benches);
