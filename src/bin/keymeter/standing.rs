//! What `keys show` adds to a record: the key's standing as `GET /api/v1/key` answers it (each limit with what
//! remains, requests in flight, allowlists, budget layers, today's usage).

use chrono::Utc;
use keymeter::Config;
use keymeter::keys::{KeyInspection, KeyRecord};
use keymeter::store::Store;
use serde_json::{Value, json};

use crate::Failure;
use crate::view;

/// Reads the standing of `record`, adds its fields to `value` (the record's JSON), and says it for people.
pub(crate) async fn add(
    config: &Config,
    store: std::sync::Arc<dyn Store>,
    record: &KeyRecord,
    value: &mut Value,
) -> Result<String, Failure> {
    let (limiter, slots) = config.limiters(store.clone()).await?;
    let seen = keymeter::keys::inspect(&*store, &*limiter, &*slots, record, Utc::now()).await?;
    value["rate_limits"] = json!(seen.rate_limits);
    value["concurrency"] = json!(seen.concurrency);
    value["models"] = json!(seen.models);
    value["budgets"] = json!(seen.budgets);
    value["usage_today"] = json!(seen.usage_today);
    Ok(human(&seen))
}

fn human(seen: &KeyInspection) -> String {
    let usd = |d| view::money(d, "USD");
    let mut out = String::new();
    if !seen.rate_limits.is_empty() {
        let mut t = view::table(["Limit of", "Counts", "Quota", "Remaining", "Full again in"]);
        for l in &seen.rate_limits {
            t.add_row([
                l.scope.clone(),
                l.counts.to_owned(),
                l.quota.to_string(),
                view::count(l.remaining),
                format!("{} s", l.reset),
            ]);
        }
        view::align_right(&mut t, &[3, 4]);
        out.push_str(&format!("\n\nRate limits now\n{t}"));
    }
    for c in &seen.concurrency {
        out.push_str(&format!(
            "\nIn flight for {}: {} of at most {}",
            c.scope, c.in_flight, c.limit
        ));
    }
    for m in &seen.models {
        let rules: Vec<String> = m.rules.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "\nModels {} allows: {}",
            m.scope,
            rules.join(", ")
        ));
    }
    if !seen.budgets.is_empty() {
        let mut t = view::table([
            "Budget of",
            "Period",
            "Limit",
            "Spent",
            "Reserved",
            "Remaining",
        ]);
        for b in &seen.budgets {
            t.add_row([
                b.scope.to_string(),
                b.period.to_string(),
                usd(b.limit),
                usd(b.spent),
                usd(b.reserved),
                usd(b.remaining),
            ]);
        }
        view::align_right(&mut t, &[2, 3, 4, 5]);
        out.push_str(&format!("\n\nBudgets\n{t}"));
    }
    let u = &seen.usage_today;
    out.push_str(&format!(
        "\n\nToday ({}): {} in {} requests, {} input and {} output tokens",
        u.day,
        usd(u.cost),
        u.events,
        view::count(u.input_tokens),
        view::count(u.output_tokens)
    ));
    out
}
