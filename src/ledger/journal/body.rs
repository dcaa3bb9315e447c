//! The body of a version-2 frame: a record's fields in a fixed order, in binary (written without the JSON of
//! version 1, which cost a request more than its two `write(2)`s).
//!
//! | type | bytes |
//! | --- | --- |
//! | integer | unsigned LEB128 |
//! | string | its length (integer), then UTF-8 |
//! | optional | `0`, or `1` then the value |
//! | time | seconds since the epoch (i64 LE), nanoseconds (integer) |
//! | amount | mantissa (i128 LE), scale (u8, at most 28) |
//! | usage | its fifteen counts (integers, in declaration order), tier and region (optional strings) |
//! | list | its length (integer), then the items |
//!
//! Fields in order — `hold`: request id, reservation id, at, key id?, owner, org?, provider, model, worst (usage),
//! amount, credential source?, expires at, tags, end user?. `forwarded`: request id. `settle`: reservation id, then
//! the event: event id, request id, at, key id?, owner, org?, provider, model, usage, cost, credential source?,
//! estimated (0/1), estimated first (0/1), tags, end user?. `release`: request id, reservation id. A body with bytes
//! left over, a bad string or an unknown name does not parse.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::ledger::UsageEvent;
use crate::ledger::journal::HoldRecord;
use crate::ledger::journal::frame::Record;
use crate::pricing::Usage;

/// `record`'s version-2 body.
pub(super) fn write(record: &Record) -> Vec<u8> {
    let mut out = Out(Vec::with_capacity(256));
    match record {
        Record::Hold(h) => {
            let HoldRecord {
                request_id,
                reservation_id,
                at,
                key_id,
                owner,
                org,
                provider,
                model,
                worst,
                amount,
                credential_source,
                expires_at,
                tags,
                end_user,
            } = &**h;
            out.str(request_id);
            out.str(reservation_id);
            out.time(at);
            out.opt(key_id.as_deref());
            out.str(owner);
            out.opt(org.as_deref());
            out.str(provider);
            out.str(model);
            out.usage(worst);
            out.amount(*amount);
            out.opt(credential_source.as_deref());
            out.time(expires_at);
            out.list(tags);
            out.opt(end_user.as_deref());
        }
        Record::Forwarded { request_id } => out.str(request_id),
        Record::Settle {
            reservation_id,
            event,
        } => {
            let UsageEvent {
                event_id,
                request_id,
                at,
                key_id,
                owner,
                org,
                provider,
                model,
                usage,
                cost,
                credential_source,
                estimated,
                estimated_first,
                tags,
                end_user,
            } = &**event;
            out.str(reservation_id);
            out.str(event_id);
            out.str(request_id);
            out.time(at);
            out.opt(key_id.as_deref());
            out.str(owner);
            out.opt(org.as_deref());
            out.str(provider);
            out.str(model);
            out.usage(usage);
            out.amount(*cost);
            out.opt(credential_source.map(|s| s.as_str()));
            out.int(u64::from(*estimated));
            out.int(u64::from(*estimated_first));
            out.list(tags);
            out.opt(end_user.as_deref());
        }
        Record::Release {
            request_id,
            reservation_id,
        } => {
            out.str(request_id);
            out.str(reservation_id);
        }
    }
    out.0
}

/// The record of `kind` in `body`, or `None` when it does not parse.
pub(super) fn read(kind: u8, body: &[u8]) -> Option<Record> {
    let mut r = In(body);
    let record = match kind {
        1 => Record::Hold(Box::new(HoldRecord {
            request_id: r.string()?,
            reservation_id: r.string()?,
            at: r.time()?,
            key_id: r.opt()?,
            owner: r.string()?,
            org: r.opt()?,
            provider: r.string()?,
            model: r.string()?,
            worst: r.usage()?,
            amount: r.amount()?,
            credential_source: r.opt()?,
            expires_at: r.time()?,
            tags: r.list()?,
            end_user: r.opt()?,
        })),
        2 => Record::Forwarded {
            request_id: r.string()?,
        },
        3 => {
            let reservation_id = r.string()?;
            let event = UsageEvent {
                event_id: r.string()?,
                request_id: r.string()?,
                at: r.time()?,
                key_id: r.opt()?,
                owner: r.string()?,
                org: r.opt()?,
                provider: r.string()?,
                model: r.string()?,
                usage: r.usage()?,
                cost: r.amount()?,
                credential_source: match r.opt()? {
                    Some(s) => Some(s.parse().ok()?),
                    None => None,
                },
                estimated: r.flag()?,
                estimated_first: r.flag()?,
                tags: r.list()?,
                end_user: r.opt()?,
            };
            // As version 1's reader: an event is read back only when valid.
            event.validate().ok()?;
            Record::Settle {
                reservation_id,
                event: Box::new(event),
            }
        }
        4 => Record::Release {
            request_id: r.string()?,
            reservation_id: r.string()?,
        },
        _ => return None,
    };
    r.0.is_empty().then_some(record)
}

struct Out(Vec<u8>);

impl Out {
    fn int(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn str(&mut self, s: &str) {
        self.int(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
            None => self.0.push(0),
        }
    }

    fn list(&mut self, items: &[String]) {
        self.int(items.len() as u64);
        for item in items {
            self.str(item);
        }
    }

    fn time(&mut self, at: &DateTime<Utc>) {
        self.0.extend_from_slice(&at.timestamp().to_le_bytes());
        self.int(u64::from(at.timestamp_subsec_nanos()));
    }

    fn amount(&mut self, amount: Decimal) {
        self.0.extend_from_slice(&amount.mantissa().to_le_bytes());
        self.0.push(amount.scale() as u8);
    }

    fn usage(&mut self, usage: &Usage) {
        // Every field by name: a count added to `Usage` does not compile here until it is written.
        let Usage {
            input,
            cache_read,
            cache_write_5m,
            cache_write_1h,
            cache_write_12h,
            output,
            reasoning,
            audio_input,
            cache_read_audio,
            audio_output,
            image_input,
            image_output,
            web_search,
            maps_grounding,
            images,
            tier,
            region,
        } = *usage;
        for n in [
            input,
            cache_read,
            cache_write_5m,
            cache_write_1h,
            cache_write_12h,
            output,
            reasoning,
            audio_input,
            cache_read_audio,
            audio_output,
            image_input,
            image_output,
            web_search,
            maps_grounding,
            images,
        ] {
            self.int(n);
        }
        self.opt(tier.map(|t| t.as_str()));
        self.opt(region.map(|r| r.as_str()));
    }
}

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn int(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            // The tenth byte holds one bit; anything above it overflows.
            if shift == 63 && part > 1 {
                return None;
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.int()?).ok()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    fn opt(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }

    fn flag(&mut self) -> Option<bool> {
        match self.int()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn list(&mut self) -> Option<Vec<String>> {
        let len = usize::try_from(self.int()?).ok()?;
        // Each item takes at least one byte: a count past what is left is corrupt (and must not allocate).
        if len > self.0.len() {
            return None;
        }
        (0..len).map(|_| self.string()).collect()
    }

    fn time(&mut self) -> Option<DateTime<Utc>> {
        let secs = i64::from_le_bytes(self.take(8)?.try_into().ok()?);
        let nanos = u32::try_from(self.int()?).ok()?;
        DateTime::from_timestamp(secs, nanos)
    }

    fn amount(&mut self) -> Option<Decimal> {
        let mantissa = i128::from_le_bytes(self.take(16)?.try_into().ok()?);
        let scale = u32::from(self.byte()?);
        Decimal::try_from_i128_with_scale(mantissa, scale).ok()
    }

    fn usage(&mut self) -> Option<Usage> {
        Some(Usage {
            input: self.int()?,
            cache_read: self.int()?,
            cache_write_5m: self.int()?,
            cache_write_1h: self.int()?,
            cache_write_12h: self.int()?,
            output: self.int()?,
            reasoning: self.int()?,
            audio_input: self.int()?,
            cache_read_audio: self.int()?,
            audio_output: self.int()?,
            image_input: self.int()?,
            image_output: self.int()?,
            web_search: self.int()?,
            maps_grounding: self.int()?,
            images: self.int()?,
            tier: match self.opt()? {
                Some(t) => Some(t.parse().ok()?),
                None => None,
            },
            region: match self.opt()? {
                Some(r) => Some(r.parse().ok()?),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{Record, decode, encode, encode_json};
    use super::*;

    fn every_field() -> (HoldRecord, UsageEvent) {
        let at = DateTime::from_timestamp(1_796_000_000, 123_456_789).unwrap();
        let worst = Usage {
            input: 1,
            cache_read: 2,
            cache_write_5m: 3,
            cache_write_1h: 4,
            cache_write_12h: 5,
            output: u64::MAX,
            reasoning: 7,
            audio_input: 8,
            cache_read_audio: 9,
            audio_output: 10,
            image_input: 11,
            image_output: 12,
            web_search: 13,
            maps_grounding: 14,
            images: 15,
            tier: Some("flex".parse().unwrap()),
            region: Some("eu".parse().unwrap()),
        };
        let hold = HoldRecord {
            request_id: "req_é".into(),
            reservation_id: "lse_run_1/0.5/3".into(),
            at,
            key_id: Some("k1".into()),
            owner: "alice".into(),
            org: None,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            worst,
            amount: Decimal::new(-12_345_678_901_234, 28),
            credential_source: Some("user".into()),
            expires_at: at + chrono::Duration::seconds(30),
            tags: vec!["a".into(), String::new(), "ünï".into()],
            end_user: Some("user \"1\"".into()),
        };
        // A hold record is carried as it is; a settle's event is read back only when valid (as version 1 did).
        let mut event = UsageEvent::new(
            Some(&hold.request_id),
            at,
            &hold.owner,
            &hold.provider,
            &hold.model,
            Usage {
                output: 300,
                ..worst
            },
            Decimal::new(12_345, 6),
            &crate::random::SeededRandom::new(7),
        )
        .unwrap();
        event.key_id.clone_from(&hold.key_id);
        event.credential_source = Some(crate::credentials::CredentialSource::User);
        event.tags = vec!["batch".into(), "eu-1".into()];
        event.estimated = true;
        event.estimated_first = true;
        (hold, event)
    }

    fn records() -> Vec<Record> {
        let (hold, event) = every_field();
        vec![
            Record::Hold(Box::new(hold)),
            Record::Forwarded {
                request_id: "r".into(),
            },
            Record::Settle {
                reservation_id: "rsv_1".into(),
                event: Box::new(event),
            },
            Record::Release {
                request_id: String::new(),
                reservation_id: "rsv_2".into(),
            },
        ]
    }

    /// Every field of every kind comes back as written, in binary and in the JSON of version 1, one segment
    /// holding both.
    #[test]
    fn every_record_reads_back_in_either_version() {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (seq, record) in records().into_iter().enumerate() {
            bytes.extend(encode(2 * seq as u64, &record).unwrap());
            bytes.extend(encode_json(2 * seq as u64 + 1, &record).unwrap());
            expected.push((2 * seq as u64, record.clone()));
            expected.push((2 * seq as u64 + 1, record));
        }
        let decoded = decode(&bytes);
        assert_eq!(decoded.valid_len, bytes.len());
        assert_eq!(decoded.records, expected);
    }

    /// A body one byte short or long, or with a name the reader does not know, does not parse.
    #[test]
    fn a_body_that_is_not_exactly_a_record_does_not_parse() {
        for record in records() {
            let body = write(&record);
            let kind = match record {
                Record::Hold(_) => 1,
                Record::Forwarded { .. } => 2,
                Record::Settle { .. } => 3,
                Record::Release { .. } => 4,
            };
            assert_eq!(read(kind, &body).as_ref(), Some(&record));
            assert_eq!(read(kind, &body[..body.len() - 1]), None);
            let mut long = body.clone();
            long.push(0);
            assert_eq!(read(kind, &long), None);
            assert_eq!(read(9, &body), None);
        }
        // An invalid event, in either version.
        let Record::Settle { mut event, .. } = records().swap_remove(2) else {
            unreachable!()
        };
        event.tags.push(String::new());
        let invalid = Record::Settle {
            reservation_id: "rsv_1".into(),
            event,
        };
        assert_eq!(read(3, &write(&invalid)), None);
        assert!(
            decode(&encode_json(0, &invalid).unwrap())
                .records
                .is_empty()
        );
        let settle = write(&records()[2]);
        let user = settle.windows(4).position(|w| w == b"user").unwrap();
        let mut unknown = settle.clone();
        unknown[user..user + 4].copy_from_slice(b"usex");
        assert_eq!(read(3, &unknown), None);
        // A varint past 64 bits, a scale past 28, a list longer than the body.
        assert_eq!(In(&[0xff; 11]).int(), None);
        assert_eq!(
            In(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]).int(),
            None
        );
        let mut amount = 1i128.to_le_bytes().to_vec();
        amount.push(29);
        assert_eq!(In(&amount).amount(), None);
        assert_eq!(In(&[200, 1, 0]).list(), None);
    }

    /// Negative zero (a JSON amount may say `-0.00`) reads back equal: the mantissa drops its sign.
    #[test]
    fn negative_zero_reads_back_equal() {
        let (mut hold, _) = every_field();
        hold.amount = "-0.00".parse().unwrap();
        let record = Record::Hold(Box::new(hold));
        let back = decode(&encode(0, &record).unwrap()).records;
        assert_eq!(back, vec![(0, record)]);
    }

    /// The binary body is smaller than the JSON one (and so never past the frame bound where JSON was not).
    #[test]
    fn the_binary_body_is_smaller() {
        for record in records() {
            assert!(encode(0, &record).unwrap().len() < encode_json(0, &record).unwrap().len());
        }
    }
}
