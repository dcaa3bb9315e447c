//! Quickstart: a SQLite store, one issued key, and the verdicts for it, a typo of it, a revoked key and a key
//! lacking a scope.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use chrono::Utc;
use keymeter::Config;
use keymeter::env::ProcessEnv;
use keymeter::keys::{NewKey, Requirement, Scope, ScopeRequirement};
use keymeter::random::OsRandom;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> Result<(), keymeter::Error> {
    // Configured like any service: KEYMETER_STORE (default sqlite://keymeter.db), KEYMETER_PEPPER, … In
    // development, secrets missing from the environment are written to keymeter.secrets beside the database.
    let mut config = Config::from_env()?;
    config.init_secrets(&ProcessEnv, &OsRandom, Utc::now())?;
    let store = config.connect().await?;
    let issuer = config.issuer(store.clone())?;
    let verifier = config.verifier(store.clone())?;
    let url = &config.store_url;

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
    Ok(())
}
