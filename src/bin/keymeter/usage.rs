//! `usage …`: record priced usage and report spend.

use std::sync::Arc;

use keymeter::Config;
use std::io::{BufReader, Seek, Write};

use keymeter::ledger::{
    EventCursor, EventFilter, GroupBy, Ledger, Meter, MeteredRequest, Payer, transfer,
};
use serde_json::json;

use crate::args::UsageCommand;
use crate::price::{pricing_failure, pricing_inputs};
use crate::{Failure, Outcome, delivered, parse_instant, parse_tz, to_json};

/// Events recorded per transaction by `usage import`.
const IMPORT_BATCH: usize = 5_000;
/// Events read per page by `usage export`.
const EXPORT_PAGE: usize = 1_000;

/// Streams the events passing `filter` to stdout, a page at a time.
async fn export(ledger: &dyn Ledger, filter: &EventFilter, csv: bool) -> Result<(), Failure> {
    let broken = |e: std::io::Error| Failure::Usage(format!("cannot write to stdout: {e}"));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if csv {
        writeln!(out, "{}", transfer::csv_header()).map_err(broken)?;
    }
    let mut cursor: Option<EventCursor> = None;
    loop {
        let page = ledger
            .events_after(filter, cursor.as_ref(), EXPORT_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        cursor = Some(EventCursor::after(last));
        for e in &page {
            let line = if csv {
                transfer::csv_line(e)
            } else {
                transfer::json_line(e)?
            };
            writeln!(out, "{line}").map_err(broken)?;
        }
    }
    out.flush().map_err(broken)
}

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
        UsageCommand::Export {
            since,
            until,
            format,
        } => {
            let filter = EventFilter {
                since: since
                    .map(|s| parse_instant(&s, chrono_tz::UTC))
                    .transpose()?,
                until: until
                    .map(|s| parse_instant(&s, chrono_tz::UTC))
                    .transpose()?,
                ..EventFilter::default()
            };
            let csv = match format.as_str() {
                "jsonl" => false,
                "csv" => true,
                other => {
                    return Err(Failure::Usage(format!(
                        "unknown export format {other:?}: use --format jsonl or --format csv"
                    )));
                }
            };
            export(store.as_ref(), &filter, csv).await?;
            Ok(delivered())
        }
        UsageCommand::Import { file } => {
            let imported = if file == "-" {
                // Spooled to an anonymous temporary file: the input is read twice (validated whole, then
                // recorded) without holding it in memory.
                let mut spool = tempfile::tempfile()
                    .map_err(|e| Failure::Usage(format!("cannot buffer stdin: {e}")))?;
                std::io::copy(&mut std::io::stdin().lock(), &mut spool)
                    .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
                spool
                    .seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Failure::Usage(format!("cannot buffer stdin: {e}")))?;
                transfer::import(store.as_ref(), BufReader::new(spool), IMPORT_BATCH).await
            } else {
                let input = std::fs::File::open(&file).map_err(|e| {
                    Failure::Usage(format!(
                        "cannot open {file:?}: {e}; give a JSON lines file or - for stdin"
                    ))
                })?;
                transfer::import(store.as_ref(), BufReader::new(input), IMPORT_BATCH).await
            }
            .map_err(|e| {
                Failure::Usage(format!(
                    "{e}; nothing after the last full batch was recorded, and a rerun is safe"
                ))
            })?;
            let human = format!(
                "read {} events: {} recorded, {} already there",
                imported.read, imported.recorded, imported.duplicates
            );
            Ok((to_json(imported)?, human))
        }
        UsageCommand::Prune { before } => {
            let before = parse_instant(&before, chrono_tz::UTC)?;
            let pruned = store.prune(before).await?;
            Ok((
                json!({"pruned": pruned, "before": before.to_rfc3339()}),
                format!(
                    "pruned {pruned} events from before {}; budgets keep their spend",
                    before.to_rfc3339()
                ),
            ))
        }
    }
}
