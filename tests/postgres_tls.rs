//! PostgreSQL over TLS (rustls): `sslmode=verify-full` against the test server's own certificate
//! (`KEYMETER_TEST_PG_CA`, set by `.ci/servers`), and a refusal when the certificate is not trusted.
#![cfg(feature = "postgres")]

use std::sync::Arc;

use keymeter::keys::{KeyHasher, KeyIssuer, KeyStore, NewKey, Pepper, PepperRing};
use keymeter::random::OsRandom;
use keymeter::store::PostgresStore;

mod common;

#[tokio::test]
async fn postgres_over_verified_tls() {
    let Ok(ca) = std::env::var("KEYMETER_TEST_PG_CA") else {
        eprintln!(
            "skipping postgres_over_verified_tls: KEYMETER_TEST_PG_CA is not set (the test server's certificate; \
             .ci/servers sets it)"
        );
        return;
    };
    let Some(url) = common::pg_schema_url("postgres_over_verified_tls").await else {
        return;
    };
    let store = PostgresStore::connect(&format!("{url}&sslmode=verify-full&sslrootcert={ca}"))
        .await
        .expect("connect over TLS, verifying the server's certificate");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(encrypted, "the session is encrypted");
    let store = Arc::new(store);
    let hasher =
        KeyHasher::new(PepperRing::new(vec![Pepper::generate("p", &OsRandom).unwrap()]).unwrap());
    let issued = KeyIssuer::new(store.clone(), Arc::new(hasher))
        .issue(NewKey::new("tls", "alice"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&issued.record.id).await.unwrap().unwrap().owner,
        "alice"
    );

    // The same server without its certificate among the trusted roots: refused, not silently unverified.
    let refused = PostgresStore::connect(&format!("{url}&sslmode=verify-full")).await;
    let Err(e @ keymeter::Error::Store { .. }) = refused else {
        panic!("an untrusted certificate is refused: {refused:?}");
    };
    assert!(e.to_string().contains("certificate"), "{e}");
}
