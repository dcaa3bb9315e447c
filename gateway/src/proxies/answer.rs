//! The provider's answer on its way back: whole (priced in memory, `x-keymeter-cost` on it) or streamed (passed
//! through as it comes, its usage events read on the way).

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use keymeter::pricing::{ServiceTier, StreamUsage, Usage, UsageFormat};

use super::bill::Bill;
use super::{App, COST_HEADER, UpstreamWait};

/// The largest non-streamed upstream answer read (a stream is never held whole).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How a request is priced: its model, arrival time and tier (what the meter prices the settle with).
pub(super) struct Priced {
    pub model: String,
    pub at: chrono::DateTime<Utc>,
    pub tier: ServiceTier,
}

impl Priced {
    fn cost(&self, app: &App, usage: &Usage) -> Option<rust_decimal::Decimal> {
        app.meter
            .catalog()
            .cost(&self.model, usage, self.at, self.tier)
            .map(|c| c.total)
            .ok()
    }
}

/// Answers as soon as the upstream has, with the exact cost priced in memory; the settle (the ledger's write)
/// runs after, in this same task, whether or not the client is still there. Until it lands the reservation keeps
/// holding the budget, so nothing can overspend meanwhile; the event carries the request's arrival time, so the
/// recorded cost is the one sent.
///
/// # Errors
/// Why the answer could not be read (it was billed at the reservation).
pub(super) async fn whole(
    bill: Bill,
    priced: Priced,
    format: UsageFormat,
    answer: reqwest::Response,
    (sent_at, deadline): (tokio::time::Instant, tokio::time::Instant),
    answer_client: impl FnOnce(Response),
) -> Result<(), &'static str> {
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match read_bounded(answer, deadline).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // The answer was cut: whatever it cost is unknown, so the reservation is billed.
            tracing::warn!(request_id = bill.hold().request_id(), error = %e, "upstream answer unreadable");
            bill.settle(None).await;
            return Err("the answer was cut short");
        }
    };
    let usage = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| keymeter::pricing::normalize::normalize(format, text).ok());
    // What the settle will record: the reported usage's price, or the reservation when there is none to price.
    let (usage, cost) = match usage.and_then(|u| priced.cost(bill.app(), &u).map(|c| (u, c))) {
        Some((u, c)) => (Some(u), c),
        None => (None, bill.hold().amount()),
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    // The provider's time ends with its last byte read; what follows is the gateway's own.
    response
        .extensions_mut()
        .insert(UpstreamWait(sent_at.elapsed()));
    let out = response.headers_mut();
    if let Some(ct) = content_type {
        out.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(cost) = HeaderValue::from_str(&cost.to_string()) {
        out.insert(COST_HEADER, cost);
    }
    if bill.app().meter.journal().is_some() {
        // The settle is a local write: in the journal before the answer leaves, so a crash loses no bill.
        bill.settle(usage).await;
        answer_client(response);
    } else {
        answer_client(response);
        bill.settle(usage).await;
    }
    Ok(())
}

/// The whole answer, up to [`MAX_ANSWER_BYTES`], by `deadline`.
pub(super) async fn read_bounded(
    answer: reqwest::Response,
    deadline: tokio::time::Instant,
) -> Result<Bytes, String> {
    let mut out = Vec::new();
    let mut chunks = answer.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(chunk)) => chunk.map_err(|e| e.to_string())?,
            Ok(None) => break,
            Err(_) => return Err("the upstream timeout ran out".into()),
        };
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// Passes the stream through as it comes and settles it from its usage events once the upstream ends (or the
/// deadline cuts it). A client that leaves stops receiving; the upstream is still read to its usage.
pub(super) async fn stream(
    bill: Bill,
    format: UsageFormat,
    answer: reqwest::Response,
    deadline: tokio::time::Instant,
    answer_client: impl FnOnce(Response),
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    answer_client(response);

    let mut events = SseEvents::new(format);
    let mut client = Some(tx);
    let mut chunks = answer.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::warn!(request_id = bill.hold().request_id(), error = %e, "upstream stream broke off");
                break;
            }
            Err(_) => {
                tracing::warn!(
                    request_id = bill.hold().request_id(),
                    "upstream stream cut at the upstream timeout"
                );
                break;
            }
        };
        events.feed(&chunk);
        if let Some(tx) = &client
            && tx.send(chunk).await.is_err()
        {
            // The client left: keep reading the upstream to its usage.
            client = None;
        }
    }
    drop(client);
    let usage = match events.usage.usage() {
        Ok(usage) => usage,
        Err(e) => {
            tracing::warn!(request_id = bill.hold().request_id(), error = %e, "stream usage unreadable");
            None
        }
    };
    bill.settle(usage).await;
}

/// Splits a byte stream into SSE lines and feeds each `data:` payload to the usage accumulator. A line longer
/// than the accumulator's event limit is skipped, never buffered without bound.
struct SseEvents {
    usage: StreamUsage,
    line: Vec<u8>,
    overlong: bool,
}

impl SseEvents {
    fn new(format: UsageFormat) -> Self {
        SseEvents {
            usage: StreamUsage::new(format),
            line: Vec::new(),
            overlong: false,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if !self.overlong {
                self.line.extend_from_slice(&chunk[..end]);
                self.line_done();
            }
            self.line.clear();
            self.overlong = false;
            chunk = &chunk[end + 1..];
        }
        if self.line.len() + chunk.len() > keymeter::pricing::stream::MAX_EVENT_BYTES {
            self.overlong = true;
            self.line.clear();
        } else if !self.overlong {
            self.line.extend_from_slice(chunk);
        }
    }

    fn line_done(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(data) = std::str::from_utf8(data) else {
            return;
        };
        if let Err(e) = self.usage.push(data.trim_start()) {
            tracing::debug!(error = %e, "stream event skipped");
        }
    }
}
