//! The calls a gateway makes for one request, on the configured store (SQLite by default): verify the inbound
//! key, resolve whose provider key pays, reserve the worst case against the key's, owner's and org's budgets,
//! then price what the provider reported and settle.
//!
//! ```sh
//! cargo run --example gateway_flow
//! ```

use chrono::Utc;
use keymeter::Config;
use keymeter::credentials::{CredentialScope, Provider, set_key};
use keymeter::env::ProcessEnv;
use keymeter::keys::{NewKey, Requirement, Scope, ScopeRequirement};
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, MeteredRequest};
use keymeter::pricing::{Usage, UsageFormat};
use keymeter::random::OsRandom;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> Result<(), keymeter::Error> {
    // Start-up: everything from the configuration.
    let mut config = Config::from_env()?;
    config.init_secrets(&ProcessEnv, &OsRandom, Utc::now())?;
    let store = config.connect().await?;
    let verifier = config.verifier(store.clone())?;
    let resolver = config.resolver(store.clone())?;
    let meter = config.meter(store.clone())?;

    // Set-up an operator does once (the CLI does the same): a key for alice, her Anthropic key, a daily budget.
    let issued = config
        .issuer(store.clone())?
        .issue(
            NewKey::new("alice's app", "alice")
                .org("acme")
                .scopes(Scope::parse_list("llm:*")?),
        )
        .await?;
    let anthropic = Provider::anthropic();
    let alice = CredentialScope::user("alice")?;
    set_key(
        &*store,
        &*config.vault()?,
        &alice,
        &anthropic,
        "sk-ant-api03-alice-demo-key-0123456789",
    )
    .await?;
    let key_budget = BudgetScope::Key(issued.record.id.clone());
    let berlin = "Europe/Berlin"
        .parse()
        .map_err(|_| keymeter::Error::Config("tz".into()))?;
    store
        .set_budget(
            &Budget::new(key_budget.clone(), Decimal::new(5, 0), BudgetPeriod::Daily)?.tz(berlin),
        )
        .await?;

    // Per request. 1. Verify the inbound key.
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

    // 2. Whose provider key pays.
    let credential = resolver.resolve(&key.owner, &anthropic).await?;
    println!(
        "2. using the {} key {}",
        credential.source.as_str(),
        credential.masked()
    );

    // 3. Reserve the worst case: the prompt as fresh input plus max_tokens of output.
    let request = MeteredRequest::new(&**key, "claude-sonnet-4-5")
        .request_id(format!("msg_{}", Utc::now().timestamp_micros()))
        .credential_source(credential.source);
    let hold = meter
        .reserve(
            request,
            &Usage {
                input: 12_000,
                output: 4_096,
                ..Usage::default()
            },
        )
        .await?;
    println!("3. reserved {} USD", hold.amount());

    // 4. (The call to Anthropic happens here, with `credential.key`.) Price what it reports and settle.
    let response = r#"{"id": "msg_01", "type": "message", "usage": {"input_tokens": 2100, "output_tokens": 850,
        "cache_read_input_tokens": 9000, "cache_creation_input_tokens": 900,
        "cache_creation": {"ephemeral_5m_input_tokens": 900, "ephemeral_1h_input_tokens": 0}}}"#;
    let metered = meter
        .settle(hold, (UsageFormat::Anthropic, response))
        .await?;
    for line in metered.cost.lines() {
        println!(
            "   {:<15} {:>6} × {:<11} = {}",
            line.kind.as_str(),
            line.tokens,
            line.rate,
            line.cost.normalize()
        );
    }
    println!(
        "4. settled {} USD as {}",
        metered.cost.total, metered.event_id
    );

    if let Some(status) = store.budget_status(&key_budget, Utc::now()).await? {
        println!(
            "5. key budget: spent {} of {}, {} left today (Berlin)",
            status.spent, status.limit, status.remaining
        );
    }
    store.close().await;
    Ok(())
}
