//! The event mix the ledger and report benches share: owner `i % 500`, each owner with two keys and one of 50
//! orgs and one of four models, costs of every scale from 6 to 10 decimal places.

use chrono::{DateTime, Utc};
use keymeter::ledger::UsageEvent;
use keymeter::pricing::Usage;
use keymeter::random::SeededRandom;
use rust_decimal::Decimal;

/// Owners in the mix.
const OWNERS: u64 = 500;
const MODELS: [&str; 4] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "gemini-2.5-pro",
];

/// Event `i` of the mix, with its request id and time.
pub fn mixed(i: u64, request_id: &str, at: DateTime<Utc>) -> UsageEvent {
    let owner = i % OWNERS;
    let usage = Usage {
        input: 1_000 + i % 500,
        cache_read: i % 300,
        output: 200 + i % 100,
        ..Usage::default()
    };
    let cost = Decimal::new(1_000 + (i % 997) as i64, 6 + (i % 5) as u32);
    UsageEvent::new(
        Some(request_id),
        at,
        &format!("owner-{owner}"),
        "openai",
        MODELS[(i % 4) as usize],
        usage,
        cost,
        &SeededRandom::new(i),
    )
    .unwrap()
    .key_id(format!("key-{owner}-{}", (i / OWNERS) % 2))
    .org(format!("org-{}", owner % 50))
}
