//! `usage …`: record priced usage and report spend.

use std::sync::Arc;

use keymeter::Config;
use keymeter::ledger::{EventFilter, GroupBy, Meter, MeteredRequest, Payer};
use serde_json::json;

use crate::args::UsageCommand;
use crate::price::{pricing_failure, pricing_inputs};
use crate::{Outcome, parse_instant, parse_tz, to_json};

pub(crate) async fn run(config: &Config, cmd: UsageCommand) -> Outcome {
    let store = config.connect().await?;
    match cmd {
        UsageCommand::Record {
            owner,
            key_id,
            org,
            model,
            request_id,
            pricing,
            usage,
        } => {
            let (catalog, usage, at, terms) = pricing_inputs(config, &pricing, &usage)?;
            let mut payer = Payer::owner(owner);
            if let Some(k) = key_id {
                payer = payer.key(k);
            }
            if let Some(o) = org {
                payer = payer.org(o);
            }
            let mut request = MeteredRequest::new(payer, model)
                .at(at)
                .tier(terms.tier)
                .region(terms.region);
            if let Some(r) = request_id {
                request = request.request_id(r);
            }
            let recorded = Meter::new(store, Arc::new(catalog))
                .record(request, usage)
                .await
                .map_err(pricing_failure)?;
            let cost = &recorded.cost;
            let human = if recorded.duplicate {
                format!(
                    "already recorded as {} (request {})",
                    recorded.event_id, recorded.request_id
                )
            } else {
                format!(
                    "recorded {}: {} {}",
                    recorded.event_id, cost.total, cost.currency
                )
            };
            Ok((
                json!({"event_id": recorded.event_id, "cost": cost.total.to_string(), "duplicate": recorded.duplicate,
                       "request_id": recorded.request_id}),
                human,
            ))
        }
        UsageCommand::Report {
            by,
            owner,
            org,
            since,
            until,
            tz,
        } => {
            let by: GroupBy = by.parse()?;
            let tz = parse_tz(&tz)?;
            let filter = EventFilter {
                owner,
                org,
                since: since.map(|s| parse_instant(&s, tz)).transpose()?,
                until: until.map(|s| parse_instant(&s, tz)).transpose()?,
                ..EventFilter::default()
            };
            let report = store.report(&filter, by, tz).await?;
            let mut human = String::new();
            for g in &report.groups {
                human.push_str(&format!(
                    "{:<24} {:>14} {:>7} events {:>10} in {:>10} out\n",
                    g.key, g.cost, g.events, g.input_tokens, g.output_tokens
                ));
            }
            human.push_str(&format!("total {}", report.total));
            Ok((to_json(&report)?, human))
        }
    }
}
