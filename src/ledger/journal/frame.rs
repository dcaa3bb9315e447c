//! The journal's on-disk format: segment files of framed records.
//!
//! A segment is named `seg-<first sequence number, 20 digits>.log` and holds frames back to back:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | `len`: the body's length, little-endian u32 |
//! | 4 | `crc`: CRC-32C (Castagnoli) of the body, little-endian u32 |
//! | `len` | body: `version` (u8, [`FORMAT_VERSION`]), `seq` (u64 LE), `kind` (u8), then the record |
//!
//! Kinds: 1 `hold`, 2 `forwarded`, 3 `settle`, 4 `release` ([`Record`]). Version 2 writes the record's fields in
//! binary (`journal/body.rs` lists them); version 1, which older releases wrote, held it as JSON and is still
//! read, so a journal left by one is recovered. A frame whose length runs past the end of the file, whose CRC
//! does not match, whose version is unknown or whose body does not parse ends the readable part of a segment: a
//! torn or corrupt tail, which is cut off before new appends.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ledger::UsageEvent;
use crate::ledger::journal::HoldRecord;

/// The version written in every frame; a reader takes this one and [`JSON_VERSION`], and refuses others.
pub const FORMAT_VERSION: u8 = 2;

/// The version whose records are JSON: written by earlier releases, still read.
pub const JSON_VERSION: u8 = 1;

/// The largest body a frame may carry (a hold or settle is a few hundred bytes).
pub const MAX_BODY: usize = 1 << 20;

const HEADER: usize = 8;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A reservation was taken for a request.
    Hold(Box<HoldRecord>),
    /// The request is about to be sent upstream: from here it may cost money.
    Forwarded {
        /// The request id.
        request_id: String,
    },
    /// The request's event, priced; the store has it once the drain confirms it.
    Settle {
        /// The reservation it ends.
        reservation_id: String,
        /// The event to record.
        event: Box<UsageEvent>,
    },
    /// The reservation was given back: nothing was spent.
    Release {
        /// The request id.
        request_id: String,
        /// The reservation.
        reservation_id: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Forwarded<'a> {
    request_id: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct Settle<'a> {
    reservation_id: std::borrow::Cow<'a, str>,
    event: UsageEvent,
}

/// [`Settle`] as written: the event borrowed, not copied.
#[derive(Serialize)]
struct SettleRef<'a> {
    reservation_id: &'a str,
    event: &'a UsageEvent,
}

#[derive(Serialize, Deserialize)]
struct Release<'a> {
    request_id: std::borrow::Cow<'a, str>,
    reservation_id: std::borrow::Cow<'a, str>,
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Hold(_) => 1,
            Record::Forwarded { .. } => 2,
            Record::Settle { .. } => 3,
            Record::Release { .. } => 4,
        }
    }

    /// The request id the record is about.
    pub fn request_id(&self) -> &str {
        match self {
            Record::Hold(h) => &h.request_id,
            Record::Forwarded { request_id } | Record::Release { request_id, .. } => request_id,
            Record::Settle { event, .. } => &event.request_id,
        }
    }

    fn json(&self) -> Result<Vec<u8>> {
        let json = match self {
            Record::Hold(h) => serde_json::to_vec(h),
            Record::Forwarded { request_id } => serde_json::to_vec(&Forwarded {
                request_id: request_id.into(),
            }),
            Record::Settle {
                reservation_id,
                event,
            } => serde_json::to_vec(&SettleRef {
                reservation_id,
                event,
            }),
            Record::Release {
                request_id,
                reservation_id,
            } => serde_json::to_vec(&Release {
                request_id: request_id.into(),
                reservation_id: reservation_id.into(),
            }),
        };
        json.map_err(|e| Error::Internal(format!("journal record: {e}")))
    }

    fn from_json(kind: u8, payload: &[u8]) -> Option<Record> {
        match kind {
            1 => serde_json::from_slice::<HoldRecord>(payload)
                .ok()
                .map(|h| Record::Hold(Box::new(h))),
            2 => serde_json::from_slice::<Forwarded<'_>>(payload)
                .ok()
                .map(|f| Record::Forwarded {
                    request_id: f.request_id.into_owned(),
                }),
            3 => serde_json::from_slice::<Settle<'_>>(payload)
                .ok()
                .map(|s| Record::Settle {
                    reservation_id: s.reservation_id.into_owned(),
                    event: Box::new(s.event),
                }),
            4 => serde_json::from_slice::<Release<'_>>(payload)
                .ok()
                .map(|r| Record::Release {
                    request_id: r.request_id.into_owned(),
                    reservation_id: r.reservation_id.into_owned(),
                }),
            _ => None,
        }
    }
}

/// `record` framed with sequence number `seq`, ready for one `write(2)`.
///
/// # Errors
/// [`Error::Internal`] when the record cannot be serialised or is larger than [`MAX_BODY`].
pub fn encode(seq: u64, record: &Record) -> Result<Vec<u8>> {
    framed(FORMAT_VERSION, seq, record, &super::body::write(record))
}

/// `record` framed as version 1 (JSON) wrote it: what a journal left by an earlier release holds.
///
/// # Errors
/// As [`encode`].
pub fn encode_json(seq: u64, record: &Record) -> Result<Vec<u8>> {
    framed(JSON_VERSION, seq, record, &record.json()?)
}

fn framed(version: u8, seq: u64, record: &Record, payload: &[u8]) -> Result<Vec<u8>> {
    let len = 1 + 8 + 1 + payload.len();
    if len > MAX_BODY {
        return Err(Error::Internal(format!(
            "journal record of {len} bytes is larger than {MAX_BODY}"
        )));
    }
    let mut frame = Vec::with_capacity(HEADER + len);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.push(version);
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.push(record.kind());
    frame.extend_from_slice(payload);
    let crc = crc32c::crc32c(&frame[HEADER..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// What a segment's bytes hold: its whole frames in order, and where the readable part ends (a torn or corrupt
/// tail starts there).
#[derive(Debug, Default)]
pub struct Decoded {
    /// `(seq, record)` of every whole frame, in file order.
    pub records: Vec<(u64, Record)>,
    /// The length of the readable prefix; shorter than the input when the tail is torn or corrupt.
    pub valid_len: usize,
}

/// Reads frames from `bytes` until the end or the first frame that is torn, corrupt, of another version or does
/// not parse. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(10..=MAX_BODY).contains(&len) {
            break;
        }
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&body[1..9]);
        let record = match body[0] {
            FORMAT_VERSION => super::body::read(body[9], &body[10..]),
            JSON_VERSION => Record::from_json(body[9], &body[10..]),
            _ => None,
        };
        let Some(record) = record else {
            break;
        };
        out.records.push((u64::from_le_bytes(seq), record));
        at += HEADER + len;
        out.valid_len = at;
    }
    out
}
