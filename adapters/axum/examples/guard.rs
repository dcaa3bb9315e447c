//! One route guarded by an API key: the smallest use of the layer.
//!
//! ```sh
//! cargo run -p keymeter-axum --example guard
//! # then, with the key it prints:
//! curl -H "Authorization: Bearer km_test_…" http://127.0.0.1:3000/hello
//! ```
//!
//! Keys live in memory here; a service connects a store through `keymeter::Config` instead. The full reference
//! service (metering proxies, administration, budgets) is the crate `keymeter-gateway`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use keymeter::keys::{
    KeyEnv, KeyHasher, KeyIssuer, NewKey, Pepper, PepperRing, Scope, ScopeRequirement, Verifier,
    VerifierConfig,
};
use keymeter::random::OsRandom;
use keymeter::store::MemoryStore;
use keymeter_axum::{KeyAuth, VerifiedKey};
use secrecy::ExposeSecret;

async fn hello(VerifiedKey(key): VerifiedKey) -> String {
    format!("hello {}\n", key.owner)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(MemoryStore::new());
    let hasher = Arc::new(KeyHasher::new(PepperRing::new(vec![Pepper::generate(
        "p1", &OsRandom,
    )?])?));
    let issued = KeyIssuer::new(store.clone(), hasher.clone())
        .issue(
            NewKey::new("demo", "alice")
                .env(KeyEnv::Test)
                .scopes(Scope::parse_list("hello:read")?),
        )
        .await?;
    let verifier = Verifier::new(store, hasher, VerifierConfig::default())?;
    let auth = KeyAuth::new(Arc::new(verifier));
    let app = Router::new().route(
        "/hello",
        get(hello).layer(auth.require(ScopeRequirement::all(["hello:read"])?)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("key: {}", issued.token.expose_secret());
    println!("try: curl -H 'Authorization: Bearer <key>' http://127.0.0.1:3000/hello");
    // The connection's address is what IP rules are checked against.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
