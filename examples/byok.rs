//! Bring your own key: a user's provider key wins over the operator's system key, which wins over nothing; keys
//! are encrypted at rest in SQLite and every answer says where the key came from.
//!
//! ```sh
//! cargo run --example byok
//! ```

use chrono::Utc;
use keymeter::Config;
use keymeter::credentials::{CredentialScope, Provider, ResolverPolicy, set_key};
use keymeter::env::ProcessEnv;
use keymeter::random::OsRandom;

#[tokio::main]
async fn main() -> Result<(), keymeter::Error> {
    // Configured like any service; the master keys come from KEYMETER_MASTER_KEYS (development: keymeter.secrets).
    let mut config = Config::from_env()?;
    config.init_secrets(&ProcessEnv, &OsRandom, Utc::now())?;
    let store = config.connect().await?;
    let vault = config.vault()?;

    let (anthropic, openai) = (Provider::anthropic(), Provider::openai());
    set_key(
        &*store,
        &vault,
        &CredentialScope::System,
        &anthropic,
        "sk-ant-api03-operator-demo-key-00000000",
    )
    .await?;
    set_key(
        &*store,
        &vault,
        &CredentialScope::user("alice")?,
        &anthropic,
        "sk-ant-api03-alice-demo-key-111111111",
    )
    .await?;
    match set_key(
        &*store,
        &vault,
        &CredentialScope::user("alice")?,
        &openai,
        "sk-...",
    )
    .await
    {
        Err(e) => println!("refused a placeholder: {e}"),
        Ok(()) => unreachable!("placeholders are refused"),
    }

    let resolver = config.resolver(store.clone())?;
    for (owner, provider) in [("alice", &anthropic), ("bob", &anthropic), ("bob", &openai)] {
        match resolver.resolve(owner, provider).await {
            Ok(found) => println!(
                "{owner:<6} {provider:<10} -> {:<8} {}",
                found.source.as_str(),
                found.masked()
            ),
            Err(e) => println!("{owner:<6} {provider:<10} -> {e}"),
        }
    }

    // Operators can require users to bring their own key for a provider.
    let strict = config.resolver(store.clone())?.with_policy(ResolverPolicy {
        user_key_required: [anthropic.clone()].into(),
        ..ResolverPolicy::default()
    });
    match strict.resolve("bob", &anthropic).await {
        Err(e) => println!("with user keys required, bob -> {e}"),
        Ok(found) => println!("unexpected: {}", found.source.as_str()),
    }

    // One value per request with every provider the owner can use; nothing is put in process-wide state.
    let request = resolver.resolve_all("alice").await?;
    let providers: Vec<String> = request.providers().map(ToString::to_string).collect();
    println!("alice's request can call: {}", providers.join(", "));
    for (provider, status) in resolver.status("bob").await? {
        println!(
            "status bob {provider:<10} user: {:<5} system: {}",
            status.user, status.system
        );
    }

    store.close().await;
    Ok(())
}
