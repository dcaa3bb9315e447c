//! Embedding keymeter in an application that owns its database: the app's pool and sqlx migrations, keymeter's
//! tables beside them, and a verifier, a resolver and a meter from `Config::from_env()`.
//!
//! ```sh
//! cargo run --example embed      # development: secrets are written to keymeter.secrets on first run
//! ```

use std::str::FromStr;
use std::sync::Arc;

use chrono::Utc;
use keymeter::Config;
use keymeter::credentials::{CredentialScope, Provider, set_key};
use keymeter::env::ProcessEnv;
use keymeter::keys::{NewKey, Requirement};
use keymeter::ledger::MeteredRequest;
use keymeter::pricing::{Usage, UsageFormat};
use keymeter::random::OsRandom;
use keymeter::store::SqliteStore;
use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // keymeter's configuration: KEYMETER_STORE, KEYMETER_PEPPER, KEYMETER_MASTER_KEYS, … (in development, missing
    // secrets are generated once into keymeter.secrets beside the database; in production they must be set).
    let mut config = Config::from_env()?;
    config.init_secrets(&ProcessEnv, &OsRandom, Utc::now())?;

    // The application's own pool and schema (the host migration set keymeter's embedding tests use).
    let options = SqliteConnectOptions::from_str(&config.store_url)?.create_if_missing(true);
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::migrate!("./tests/host_migrations").run(&pool).await?;

    // keymeter on the same pool: its tables are keymeter_*, its bookkeeping keymeter_migrations.
    keymeter::store::sqlite::migrate(&pool).await?;
    let store = Arc::new(SqliteStore::from_pool(pool.clone()));
    let verifier = config.verifier(store.clone())?;
    let resolver = config.resolver(store.clone())?;
    let meter = config.meter(store.clone())?;

    // One key and one personal provider key, then one request through all three.
    let issued = config
        .issuer(store.clone())?
        .issue(NewKey::new("embedded app", "alice"))
        .await?;
    let openai = Provider::openai();
    let vault = config.vault()?;
    set_key(
        &*store,
        &vault,
        &CredentialScope::user("alice")?,
        &openai,
        "sk-proj-alice-demo-key-0123456789abcdef",
    )
    .await?;

    let verdict = verifier
        .verify(issued.token.expose_secret(), &Requirement::new())
        .await?;
    let key = verdict.valid_key().ok_or("the key was just issued")?;
    let credential = resolver.resolve(&key.owner, &openai).await?;
    let request = MeteredRequest::new(&**key, "gpt-4o").credential_source(credential.source);
    let hold = meter
        .reserve(
            request,
            &Usage {
                input: 500,
                output: 256,
                ..Usage::default()
            },
        )
        .await?;
    let response = r#"{"usage": {"prompt_tokens": 420, "completion_tokens": 180,
        "prompt_tokens_details": {"cached_tokens": 128}}}"#;
    let metered = meter.settle(hold, (UsageFormat::OpenAi, response)).await?;
    println!(
        "{} verified as {}; {} key {}; cost {} USD ({} of the prompt cached)",
        key.id,
        verdict.code(),
        credential.source.as_str(),
        credential.masked(),
        metered.cost.total,
        metered.usage.cache_read
    );

    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await?;
    println!("the app's own tables are untouched: {users} user(s)");
    pool.close().await;
    Ok(())
}
