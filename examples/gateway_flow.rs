//! The whole path a gateway runs for one request, on SQLite: verify the inbound key, resolve the user's provider
//! credential, reserve the worst-case cost against the key's and the org's budgets, price the provider's usage
//! JSON, settle, and print the spend report.
//!
//! ```sh
//! cargo run --example gateway_flow
//! ```

use std::sync::Arc;

use chrono::{Duration, Utc};
use keymeter::credentials::{
    CredentialResolver, CredentialScope, MasterKey, MasterKeyRing, Provider, Vault, set_key,
};
use keymeter::env::Environment;
use keymeter::keys::{
    KeyHasher, KeyIssuer, NewKey, Pepper, PepperRing, Requirement, Scope, ScopeRequirement,
    Verifier, VerifierConfig,
};
use keymeter::ledger::{
    Budget, BudgetPeriod, BudgetScope, EventFilter, GroupBy, Ledger, UsageEvent, parse_tz,
};
use keymeter::pricing::normalize::{UsageFormat, normalize};
use keymeter::pricing::{PriceCatalog, ServiceTier, Usage};
use keymeter::random::OsRandom;
use keymeter::store::SqliteStore;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> Result<(), keymeter::Error> {
    let dir = std::env::temp_dir().join(format!("keymeter-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| keymeter::Error::Config(e.to_string()))?;
    let store = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}", dir.join("keymeter.db").display())).await?,
    );

    // Set-up an operator does once: secrets, a key for alice, her Anthropic key, budgets.
    let hasher = Arc::new(KeyHasher::new(PepperRing::new(vec![Pepper::generate(
        "p1", &OsRandom,
    )?])?));
    let vault = Arc::new(Vault::new(MasterKeyRing::new(vec![MasterKey::generate(
        "k1", &OsRandom,
    )?])?));
    let issued = KeyIssuer::new(store.clone(), hasher.clone())
        .issue(
            NewKey::new("alice's app", "alice")
                .org("acme")
                .scopes(Scope::parse_list("llm:*")?),
        )
        .await?;
    let anthropic = Provider::anthropic();
    set_key(
        &*store,
        &vault,
        &CredentialScope::user("alice")?,
        &anthropic,
        "sk-ant-api03-alice-demo-key-0123456789",
    )
    .await?;
    let key_scope = BudgetScope::Key(issued.record.id.clone());
    let org_scope = BudgetScope::Org("acme".into());
    store
        .set_budget(
            &Budget::new(key_scope.clone(), Decimal::new(5, 0), BudgetPeriod::Daily)?
                .tz(parse_tz("Europe/Berlin")?),
        )
        .await?;
    store
        .set_budget(&Budget::new(
            org_scope.clone(),
            Decimal::new(100, 0),
            BudgetPeriod::Monthly,
        )?)
        .await?;
    let catalog = PriceCatalog::bundled();
    let verifier = Verifier::new(store.clone(), hasher, VerifierConfig::default())?;
    let resolver = CredentialResolver::new(store.clone(), vault, Environment::Development);

    // 1. Verify the inbound key.
    let header = format!("Bearer {}", issued.token.expose_secret());
    let need = Requirement::new().scopes(ScopeRequirement::all(["llm:messages"])?);
    let verdict = verifier
        .verify_header("Authorization", &header, &need)
        .await?;
    let Some(key) = verdict.valid_key() else {
        println!(
            "rejected: {} (HTTP {})",
            verdict.code(),
            verdict.code().http_status()
        );
        return Ok(());
    };
    println!("1. key {} of {} is {}", key.id, key.owner, verdict.code());

    // 2. Resolve whose provider key pays.
    let credential = resolver.resolve(&key.owner, &anthropic).await?;
    println!(
        "2. using the {} key {} for {anthropic}",
        credential.source.as_str(),
        credential.masked()
    );

    // 3. Reserve the worst case: the prompt as fresh input plus max_tokens of output.
    let model = "claude-sonnet-4-5";
    let worst = Usage {
        input: 12_000,
        output: 4_096,
        ..Usage::default()
    };
    let worst_cost = catalog
        .cost(model, &worst, Utc::now(), ServiceTier::Standard)?
        .total;
    let hold = store
        .reserve(
            &[key_scope.clone(), org_scope.clone()],
            worst_cost,
            Utc::now(),
            Duration::minutes(10),
        )
        .await?;
    println!("3. reserved {worst_cost} USD ({})", hold.id);

    // 4. (The call to Anthropic happens here, with `credential.key`.) Price what it reports.
    let response = r#"{"id": "msg_01", "type": "message", "usage": {"input_tokens": 2100, "output_tokens": 850,
        "cache_read_input_tokens": 9000, "cache_creation_input_tokens": 900,
        "cache_creation": {"ephemeral_5m_input_tokens": 900, "ephemeral_1h_input_tokens": 0}}}"#;
    let usage = normalize(UsageFormat::Anthropic, response)?;
    let cost = catalog.cost(model, &usage, Utc::now(), ServiceTier::Standard)?;
    for line in cost.lines() {
        println!(
            "   {:<15} {:>6} × {:<11} = {}",
            line.kind.as_str(),
            line.tokens,
            line.rate,
            line.cost.normalize()
        );
    }

    // 5. Settle: the reservation becomes the actual cost, recorded once under the request id.
    let event = UsageEvent::new(
        Some("msg_01"),
        Utc::now(),
        &key.owner,
        &cost.provider,
        &cost.model,
        usage,
        cost.total,
        &OsRandom,
    )?
    .key_id(key.id.clone())
    .org("acme")
    .credential_source(credential.source);
    let recorded = store.settle(&hold.id, &event, Utc::now()).await?;
    let retried = store.settle(&hold.id, &event, Utc::now()).await?;
    println!(
        "4. settled {} USD as {} (a retry was a duplicate: {})",
        cost.total, recorded.event_id, retried.duplicate
    );

    // 6. Report.
    if let Some(status) = store.budget_status(&key_scope, Utc::now()).await? {
        println!(
            "5. key budget: spent {} of {}, {} remaining today (Berlin)",
            status.spent, status.limit, status.remaining
        );
    }
    let report = store
        .report(&EventFilter::default(), GroupBy::Model, chrono_tz::UTC)
        .await?;
    for g in &report.groups {
        println!(
            "   report {:<20} {} USD, {} event(s), {} in / {} out tokens",
            g.key, g.cost, g.events, g.input_tokens, g.output_tokens
        );
    }

    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
