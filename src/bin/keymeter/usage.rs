//! `usage …`: record priced usage and report spend.

use std::sync::Arc;

use keymeter::Config;
use std::io::{BufReader, Seek, Write};

use keymeter::ledger::{
    EventCursor, EventFilter, GroupBy, Ledger, Meter, MeteredRequest, Payer, transfer,
};
use serde_json::json;

use crate::args::UsageCommand;
use crate::price::{load_catalog, pricing_failure, pricing_inputs};
use crate::{Failure, Outcome, delivered, parse_instant, parse_tz, to_json, view};

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
    let spinner = view::spinner("exporting events");
    let mut written = 0u64;
    loop {
        let page = ledger
            .events_after(filter, cursor.as_ref(), EXPORT_PAGE)
            .await?;
        written += page.len() as u64;
        spinner.set_message(format!("exporting events: {}", view::count(written)));
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
    spinner.finish_and_clear();
    out.flush().map_err(broken)
}

/// A report as a table: one row a group, then the total.
fn report_table(report: &keymeter::ledger::Report, by: GroupBy, tz: chrono_tz::Tz) -> String {
    if report.groups.is_empty() {
        return "no usage recorded in this range (record some with keymeter usage record, or import an export)"
            .to_owned();
    }
    let first = match by {
        GroupBy::Day => format!("Day ({})", tz.name()),
        GroupBy::Week => format!("Week ({})", tz.name()),
        GroupBy::Month => format!("Month ({})", tz.name()),
        GroupBy::Key => "Key".to_owned(),
        GroupBy::Owner => "Owner".to_owned(),
        GroupBy::Org => "Org".to_owned(),
        GroupBy::Model => "Model".to_owned(),
        GroupBy::Tag => "Tag".to_owned(),
        GroupBy::EndUser => "End user".to_owned(),
    };
    let mut t = view::table([
        first.as_str(),
        "Cost",
        "Requests",
        "Input tokens",
        "Output tokens",
    ]);
    let (mut events, mut input, mut output) = (0u64, 0u64, 0u64);
    for g in &report.groups {
        events += g.events;
        input += g.input_tokens;
        output += g.output_tokens;
        t.add_row([
            g.key.clone(),
            view::money(g.cost, "USD"),
            view::count(g.events),
            view::count(g.input_tokens),
            view::count(g.output_tokens),
        ]);
    }
    t.add_row([
        "Total".to_owned(),
        view::money(report.total, "USD"),
        view::count(events),
        view::count(input),
        view::count(output),
    ]);
    view::align_right(&mut t, &[1, 2, 3, 4]);
    let mut out = t.to_string();
    if report.estimated.events > 0 {
        out.push_str(&format!(
            "\nof which estimated (billed at the reservation, no usage arrived): {} requests, {}",
            view::count(report.estimated.events),
            view::money(report.estimated.cost, "USD")
        ));
    }
    out
}

/// Imports in batches with a progress bar on a terminal (counted once the input is validated).
async fn import<R: std::io::BufRead + Seek>(
    ledger: &dyn Ledger,
    input: R,
) -> keymeter::Result<transfer::Imported> {
    let bar = view::progress(0, "importing events");
    let imported = transfer::import_with_progress(ledger, input, IMPORT_BATCH, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    imported
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
                    "recorded {}: {}",
                    recorded.event_id,
                    view::money(cost.total, &cost.currency)
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
            tag,
            end_user,
        } => {
            let by: GroupBy = by.parse()?;
            let tz = parse_tz(&tz)?;
            let filter = EventFilter {
                owner,
                org,
                since: since.map(|s| parse_instant(&s, tz)).transpose()?,
                until: until.map(|s| parse_instant(&s, tz)).transpose()?,
                tag,
                end_user,
                ..EventFilter::default()
            };
            let report = store.report(&filter, by, tz).await?;
            let human = report_table(&report, by, tz);
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
                import(store.as_ref(), BufReader::new(spool)).await
            } else {
                let input = std::fs::File::open(&file).map_err(|e| {
                    Failure::Usage(format!(
                        "cannot open {file:?}: {e}; give a JSON lines file or - for stdin"
                    ))
                })?;
                import(store.as_ref(), BufReader::new(input)).await
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
        UsageCommand::Adjust {
            request_id,
            catalog,
            usage,
        } => {
            let catalog = load_catalog(config, catalog.as_deref())?;
            let usage = usage.usage()?;
            let Some(stored) = store.event(&request_id).await? else {
                return Err(Failure::Negative(
                    json!({"code": "NOT_FOUND", "request_id": request_id}),
                    format!("no event of request {request_id:?} is stored (or it was pruned)"),
                ));
            };
            let exact = || {
                Failure::Negative(
                    json!({"code": "NOT_ESTIMATED", "request_id": request_id, "event_id": stored.event_id}),
                    format!(
                        "the event of request {request_id:?} holds exact usage already: only an estimated event is replaced"
                    ),
                )
            };
            if !stored.estimated {
                return Err(exact());
            }
            let adjusted = match Meter::new(store.clone(), Arc::new(catalog))
                .adjust(&request_id, usage)
                .await
            {
                Ok(adjusted) => adjusted,
                // Replaced by another writer since it was read.
                Err(keymeter::Error::InvalidInput { .. }) => return Err(exact()),
                Err(e) => return Err(pricing_failure(e)),
            };
            let cost = &adjusted.cost;
            Ok((
                json!({"request_id": request_id, "event_id": adjusted.event_id, "cost": cost.total.to_string(),
                       "previous_cost": stored.cost.to_string(), "replaced": true}),
                format!(
                    "replaced the estimated event {} of request {request_id}: {} instead of {}",
                    adjusted.event_id,
                    view::money(cost.total, &cost.currency),
                    view::money(stored.cost, &cost.currency)
                ),
            ))
        }
        UsageCommand::Prune { before } => {
            let before = parse_instant(&before, chrono_tz::UTC)?;
            let spinner = view::spinner(&format!("deleting events from before {before}"));
            let pruned = store.prune(before).await;
            spinner.finish_and_clear();
            let pruned = pruned?;
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
