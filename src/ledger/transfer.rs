//! Moving events between stores: export as JSON lines (each an event's serde form) or CSV (the same
//! fields, usage flattened as `usage.<class>`), and import of the JSON lines, validated whole before anything is
//! recorded, then recorded in batches (idempotent by request id, so a rerun after an interruption completes it).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::io::Cursor;
//! use chrono::Utc;
//! use keymeter::ledger::{Ledger, UsageEvent, transfer};
//! use keymeter::pricing::Usage;
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//! use rust_decimal::Decimal;
//!
//! let event = UsageEvent::new(Some("req-1"), Utc::now(), "alice", "openai", "gpt-4o", Usage::default(),
//!                             Decimal::new(125, 4), &OsRandom)?;
//! let line = transfer::json_line(&event)?;
//! let target = MemoryStore::new();
//! let imported = transfer::import(&target, Cursor::new(format!("{line}\n{line}\n")), 1000).await?;
//! assert_eq!((imported.read, imported.recorded, imported.duplicates), (2, 1, 1));
//! assert_eq!(target.events(&Default::default()).await?, [event]);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use std::io::{BufRead, Read, Seek, SeekFrom};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ledger::{Ledger, UsageEvent};
use crate::pricing::TokenClass;

/// The longest import line, in bytes (without its newline).
pub const MAX_LINE: usize = 64 * 1024;

/// An event as one JSON line (no newline): its serde form, decimals as strings.
///
/// # Errors
/// [`Error::InvalidInput`] if the event cannot be serialised (it always can).
pub fn json_line(e: &UsageEvent) -> Result<String> {
    serde_json::to_string(e).map_err(|err| Error::invalid("usage event", err.to_string()))
}

/// The CSV header of [`csv_line`]: the JSON line's fields in order, usage flattened as `usage.<class>`.
pub fn csv_header() -> String {
    let mut columns = vec![
        "event_id",
        "request_id",
        "at",
        "key_id",
        "owner",
        "org",
        "provider",
        "model",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    columns.extend(
        TokenClass::ALL
            .iter()
            .map(|c| format!("usage.{}", c.as_str())),
    );
    columns.extend(
        [
            "usage.tier",
            "usage.region",
            "cost",
            "credential_source",
            "estimated",
            "estimated_first",
            "tags",
            "end_user",
        ]
        .map(str::to_owned),
    );
    columns.join(",")
}

/// One event as a CSV record (RFC 4180 quoting; no newline), in [`csv_header`]'s columns.
pub fn csv_line(e: &UsageEvent) -> String {
    let mut fields: Vec<String> = vec![
        e.event_id.clone(),
        e.request_id.clone(),
        e.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        e.key_id.clone().unwrap_or_default(),
        e.owner.clone(),
        e.org.clone().unwrap_or_default(),
        e.provider.clone(),
        e.model.clone(),
    ];
    fields.extend(TokenClass::ALL.iter().map(|&c| e.usage.get(c).to_string()));
    fields.push(
        e.usage
            .tier
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
    );
    fields.push(
        e.usage
            .region
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
    );
    fields.push(e.cost.normalize().to_string());
    fields.push(
        e.credential_source
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
    );
    fields.push(e.estimated.to_string());
    fields.push(e.estimated_first.to_string());
    // Tags never hold a comma: one field, comma-separated (quoted when there are several).
    fields.push(e.tags.join(","));
    fields.push(e.end_user.clone().unwrap_or_default());
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Imported {
    /// Events read (every non-blank line).
    pub read: u64,
    /// Events recorded now.
    pub recorded: u64,
    /// Events whose request id was already recorded (nothing was added for them).
    pub duplicates: u64,
}

/// The events of an export's JSON lines, one by one, each error naming its line (blank lines are skipped).
pub struct EventLines<R> {
    input: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> EventLines<R> {
    /// Reads `input`.
    pub fn new(input: R) -> Self {
        EventLines {
            input,
            line: 0,
            buf: Vec::new(),
        }
    }

    fn bad(&self, reason: impl std::fmt::Display) -> Error {
        Error::invalid("import line", format!("line {}: {reason}", self.line))
    }
}

impl<R: BufRead> Iterator for EventLines<R> {
    type Item = Result<UsageEvent>;

    fn next(&mut self) -> Option<Result<UsageEvent>> {
        loop {
            self.buf.clear();
            self.line += 1;
            // One byte more than a line may hold (plus its newline), so an endless line is never buffered.
            let mut limited = (&mut self.input).take(MAX_LINE as u64 + 2);
            match limited.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(self.bad(format!("cannot read: {e}")))),
            }
            let mut text: &[u8] = &self.buf;
            let ended = text.last() == Some(&b'\n');
            if ended {
                text = &text[..text.len() - 1];
            }
            if text.last() == Some(&b'\r') {
                text = &text[..text.len() - 1];
            }
            if text.len() > MAX_LINE {
                return Some(Err(self.bad(format!("longer than {MAX_LINE} bytes"))));
            }
            let Ok(text) = std::str::from_utf8(text) else {
                return Some(Err(self.bad("not UTF-8")));
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(text.parse::<UsageEvent>().map_err(|e| self.bad(e)));
        }
    }
}

/// Checks every line of `input` (nothing is recorded), returning how many events it holds.
///
/// # Errors
/// [`Error::InvalidInput`] naming the first bad line.
pub fn validate(input: impl BufRead) -> Result<u64> {
    let mut n = 0;
    for event in EventLines::new(input) {
        event?;
        n += 1;
    }
    Ok(n)
}

/// Imports an export's JSON lines into `ledger`: validates the whole input first (a bad line records nothing),
/// then rewinds and records it in batches of `batch` events, trusting each line's cost and keeping its event
/// id. Budgets are charged as recording does. `progress` is told the events done so far after each batch.
///
/// # Errors
/// [`Error::InvalidInput`] naming the first bad line (nothing recorded); backend failures (the batches before
/// stay recorded; rerunning the import completes it).
pub async fn import_with_progress<R: BufRead + Seek>(
    ledger: &dyn Ledger,
    mut input: R,
    batch: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<Imported> {
    let start = input
        .stream_position()
        .map_err(|e| Error::invalid("import input", e.to_string()))?;
    let total = validate(&mut input)?;
    input
        .seek(SeekFrom::Start(start))
        .map_err(|e| Error::invalid("import input", e.to_string()))?;
    let batch = batch.max(1);
    let mut out = Imported::default();
    let mut pending: Vec<UsageEvent> = Vec::with_capacity(batch.min(100_000));
    let mut lines = EventLines::new(input);
    loop {
        let next = lines.next().transpose()?;
        let done = next.is_none();
        if let Some(e) = next {
            pending.push(e);
        }
        if pending.len() >= batch || (done && !pending.is_empty()) {
            for r in ledger.record_batch(&pending).await? {
                out.read += 1;
                if r.duplicate {
                    out.duplicates += 1;
                } else {
                    out.recorded += 1;
                }
            }
            pending.clear();
            progress(out.read, total);
        }
        if done {
            return Ok(out);
        }
    }
}

/// [`import_with_progress`] without progress.
///
/// # Errors
/// As [`import_with_progress`].
pub async fn import<R: BufRead + Seek>(
    ledger: &dyn Ledger,
    input: R,
    batch: usize,
) -> Result<Imported> {
    import_with_progress(ledger, input, batch, |_, _| {}).await
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn line(request: &str) -> String {
        format!(
            r#"{{"event_id":"ev_{request}","request_id":"{request}","at":"2026-03-10T12:00:00Z","key_id":null,"owner":"alice","org":"acme","provider":"openai","model":"gpt-4o","usage":{{"input":10,"output":2}},"cost":"0.0125","credential_source":"user"}}"#
        )
    }

    #[test]
    fn lines_parse_and_errors_name_their_line() {
        let input = format!("{}\n\n{}\r\n", line("r1"), line("r2"));
        assert_eq!(validate(Cursor::new(input)).expect("valid"), 2);
        let bad = format!(
            "{}\n{}\n",
            line("r1"),
            line("r2").replace("\"0.0125\"", "0.0125")
        );
        let err = validate(Cursor::new(bad)).expect_err("a number cost");
        assert!(err.to_string().contains("line 2"), "{err}");
        let long = format!("{}\n{}\n", line("r1"), "x".repeat(MAX_LINE + 1));
        let err = validate(Cursor::new(long)).expect_err("too long");
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("longer"),
            "{err}"
        );
        let exact = format!(
            "{}{}\n",
            line("r1"),
            " ".repeat(MAX_LINE - line("r1").len())
        );
        assert_eq!(validate(Cursor::new(exact)).expect("64 KiB exactly"), 1);
        let empty_owner = line("r1").replace("\"alice\"", "\"\"");
        assert!(validate(Cursor::new(empty_owner)).is_err());
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut e: UsageEvent = line("r1").parse().expect("event");
        e.owner = "Smith, \"Al\"".into();
        let row = csv_line(&e);
        assert!(row.contains("\"Smith, \"\"Al\"\"\""), "{row}");
        // One column per field: the row's one extra comma is the owner's, inside quotes.
        assert_eq!(
            row.matches(',').count(),
            csv_header().matches(',').count() + 1
        );
        assert!(csv_header().contains("usage.cache_read"));
    }
}
