//! Quickstart: a SQLite store, one issued key, and the verdicts for it, a typo of it, a revoked key and a key
//! lacking a scope.
//!
//! ```sh
//! cargo run --example quickstart --features sqlite
//! ```

use std::sync::Arc;

use keymeter::keys::{
    KeyHasher, KeyIssuer, NewKey, Pepper, PepperRing, Requirement, Scope, ScopeRequirement,
    Verifier, VerifierConfig,
};
use keymeter::random::OsRandom;
use keymeter::store::SqliteStore;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> Result<(), keymeter::Error> {
    // A throwaway database; a real service would open `sqlite://keymeter.db` once at start-up.
    let dir = std::env::temp_dir().join(format!("keymeter-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| keymeter::Error::Config(e.to_string()))?;
    let url = format!("sqlite://{}", dir.join("keymeter.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await?);

    // The pepper is a server-side secret; in production it comes from KEYMETER_PEPPER.
    let peppers = PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?;
    let hasher = Arc::new(KeyHasher::new(peppers));
    let issuer = KeyIssuer::new(store.clone(), hasher.clone());
    let verifier = Verifier::new(store.clone(), hasher, VerifierConfig::default())?;

    let reader = issuer
        .issue(
            NewKey::new("reporting job", "alice")
                .org("acme")
                .scopes(Scope::parse_list("read,reports")?),
        )
        .await?;
    let token = reader.token.expose_secret();
    println!("store:  {url}");
    println!(
        "issued: {} (id {}, shown once; stored only as {})",
        reader.record.hint,
        reader.record.id,
        reader.record.hash.scheme()
    );

    let need_read = Requirement::new().scopes(ScopeRequirement::all(["read"])?);
    let need_write = Requirement::new().scopes(ScopeRequirement::all(["write"])?);

    let mut typo = token.to_owned();
    let i = typo.len() - 10;
    let swapped = if &typo[i..=i] == "x" { "y" } else { "x" };
    typo.replace_range(i..=i, swapped);

    let revoked = issuer
        .issue(NewKey::new("old laptop", "alice").scopes(Scope::parse_list("read")?))
        .await?;
    verifier.revoke(&revoked.record.id).await?;

    let cases = [
        ("the key, needing `read`", token, &need_read),
        ("a typo of it", typo.as_str(), &need_read),
        ("a revoked key", revoked.token.expose_secret(), &need_read),
        ("the key, needing `write`", token, &need_write),
    ];
    for (what, candidate, requirement) in cases {
        let verdict = verifier.verify(candidate, requirement).await?;
        println!(
            "{what:<26} -> {:<18} (HTTP {})",
            verdict.code().as_str(),
            verdict.code().http_status()
        );
    }

    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
