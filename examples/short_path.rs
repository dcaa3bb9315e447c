//! README's "short path", verbatim (a test checks the two agree and runs this in a fresh directory): a key
//! verified, whose provider key pays, the worst case held, the reported usage settled, a report by day.

use keymeter::credentials::{CredentialScope, Provider};
use keymeter::keys::{NewKey, Requirement, Scope, ScopeRequirement};
use keymeter::ledger::{EventFilter, GroupBy, MeteredRequest};
use keymeter::pricing::{Usage, UsageFormat};
use keymeter::{Config, ExposeSecret, Tz};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::from_env()?; // KEYMETER_STORE, default sqlite://keymeter.db
    config.init_development_secrets()?; // development only: missing secrets go to keymeter.secrets
    let km = config.open().await?; // verifier, resolver, meter, issuer, store: one handle

    // Once, normally with the CLI: a key for alice, and the operator's OpenAI key.
    let scopes = Scope::parse_list("llm:chat")?;
    let issued = km
        .issuer
        .issue(NewKey::new("laptop", "alice").scopes(scopes))
        .await?;
    let system_key = "sk-proj-operator0000000000000000000000000000";
    km.set_key(&CredentialScope::System, &Provider::openai(), system_key)
        .await?;

    // One request: the caller's key, whose provider key pays, the worst case held, the actual cost settled.
    let header = format!("Bearer {}", issued.token.expose_secret());
    let need = Requirement::new().scopes(ScopeRequirement::all(["llm:chat"])?);
    let verdict = km
        .verifier
        .verify_header("Authorization", &header, &need)
        .await?;
    let key = verdict.valid_key().ok_or_else(|| verdict.code().as_str())?;
    let credential = km.resolver.resolve(&key.owner, &Provider::openai()).await?; // the user's own key first
    let request = MeteredRequest::new(key, "gpt-4o").credential_source(credential.source);
    let hold = km
        .meter
        .reserve(request, &Usage::tokens(2_000, 1_000))
        .await?;
    km.meter.forwarded(&hold)?; // from here a dropped hold is billed, not given back
    // … call OpenAI with `credential.key` …
    let body = r#"{"usage": {"prompt_tokens": 1800, "completion_tokens": 420}}"#;
    let metered = km.meter.settle(hold, (UsageFormat::OpenAi, body)).await?;
    println!(
        "this request: {} {}",
        metered.cost.total, metered.cost.currency
    );

    km.drain(std::time::Duration::from_secs(5)).await; // the journal's settles reach the store
    let alice = EventFilter::new().owner("alice");
    let report = km.store.report(&alice, GroupBy::Day, Tz::UTC).await?;
    println!("by day: {}", report.total);
    km.close().await;
    Ok(())
}
