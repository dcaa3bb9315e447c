//! Usage events: one priced request, recorded once however often it is sent.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::credentials::CredentialSource;
use crate::error::Result;
use crate::pricing::Usage;
use crate::random::{RandomSource, fill_base62_lean};

/// One priced request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EventLine")]
pub struct UsageEvent {
    /// keymeter's id of the event.
    pub event_id: String,
    /// The idempotency key: the same request id is recorded once.
    pub request_id: String,
    /// When the request happened.
    pub at: DateTime<Utc>,
    /// The inbound key that made it, if any.
    pub key_id: Option<String>,
    /// The owner (user).
    pub owner: String,
    /// The organisation, if any.
    pub org: Option<String>,
    /// The provider called.
    pub provider: String,
    /// The model called.
    pub model: String,
    /// Canonical token counts.
    pub usage: Usage,
    /// The exact cost (serialised as a string).
    pub cost: Decimal,
    /// Whose provider key paid, if known.
    pub credential_source: Option<CredentialSource>,
    /// Billed at the request's reservation because its usage never arrived (a process killed mid-exchange, an
    /// upstream that reported nothing): `usage` is the worst case reserved and `cost` its price.
    #[serde(skip_serializing_if = "is_false")]
    pub estimated: bool,
    /// The event was first recorded as `estimated` and later replaced by the exact usage.
    #[serde(skip_serializing_if = "is_false")]
    pub estimated_first: bool,
    /// The request's tags (`x-keymeter-tags`): at most [`MAX_TAGS`] of at most [`MAX_TAG_LEN`] characters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Whom the request was made for, in the caller's own terms (`x-keymeter-end-user`, or OpenAI's `user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
}

/// The most tags an event carries.
pub const MAX_TAGS: usize = 16;
/// The longest tag, in characters.
pub const MAX_TAG_LEN: usize = 64;
/// The longest end-user id, in characters.
pub const MAX_END_USER_LEN: usize = 256;

/// Checks a request's tags: at most [`MAX_TAGS`], each 1–[`MAX_TAG_LEN`] visible ASCII characters without a comma.
///
/// # Errors
/// [`crate::Error::InvalidInput`] saying what is wrong.
pub fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(crate::Error::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for tag in tags {
        if tag.is_empty()
            || tag.len() > MAX_TAG_LEN
            || !tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(crate::Error::invalid(
                "tags",
                format!(
                    "{:?}: a tag is 1–{MAX_TAG_LEN} visible ASCII characters without a comma",
                    tag.chars().take(80).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

/// Parses a comma-separated tag list (`x-keymeter-tags: a,b`): blanks around tags dropped, duplicates once.
///
/// # Errors
/// As [`check_tags`].
pub fn parse_tags(text: &str) -> Result<Vec<String>> {
    let mut tags: Vec<String> = Vec::new();
    for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
    check_tags(&tags)?;
    Ok(tags)
}

/// The earliest time an event may carry: the Unix epoch.
fn earliest() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

/// The latest time an event may carry: the end of the year 9999.
fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What an event says of whose request it was and what it cost, borrowed: the part of an event a hold record
/// ([`crate::ledger::journal::HoldRecord`]) keeps too, checked by one rule for both.
pub(crate) struct Attribution<'a> {
    pub request_id: &'a str,
    pub at: DateTime<Utc>,
    pub owner: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub key_id: Option<&'a str>,
    pub org: Option<&'a str>,
    pub tags: &'a [String],
    pub end_user: Option<&'a str>,
    pub usage: &'a Usage,
    pub cost: Decimal,
}

impl Attribution<'_> {
    /// # Errors
    /// [`crate::Error::InvalidInput`] as [`UsageEvent::validate`].
    pub(crate) fn check(&self) -> Result<()> {
        use crate::validate::name;
        name("request id", self.request_id)?;
        name("owner", self.owner)?;
        name("provider", self.provider)?;
        name("model", self.model)?;
        if let Some(k) = self.key_id {
            name("key id", k)?;
        }
        if let Some(o) = self.org {
            name("org", o)?;
        }
        check_tags(self.tags)?;
        if let Some(u) = self.end_user
            && (u.is_empty()
                || u.chars().count() > MAX_END_USER_LEN
                || u.chars().any(char::is_control))
        {
            return Err(crate::Error::invalid(
                "end user",
                format!("1–{MAX_END_USER_LEN} characters without control characters"),
            ));
        }
        if self.at < earliest() || self.at > latest() {
            return Err(crate::Error::invalid(
                "event time",
                format!("{} is outside the years 1970–9999", self.at),
            ));
        }
        self.usage.check_bounds()?;
        crate::validate::amount("cost", self.cost)
    }
}

impl UsageEvent {
    /// A new event with a fresh id; `request_id` is the idempotency key (a fresh random one if `None`).
    ///
    /// # Errors
    /// [`crate::Error::Random`]; [`crate::Error::InvalidInput`] as [`UsageEvent::validate`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        request_id: Option<&str>,
        at: DateTime<Utc>,
        owner: &str,
        provider: &str,
        model: &str,
        usage: Usage,
        cost: Decimal,
        random: &dyn RandomSource,
    ) -> Result<Self> {
        let event =
            UsageEvent::unchecked(request_id, at, owner, provider, model, usage, cost, random)?;
        event.validate()?;
        Ok(event)
    }

    /// [`UsageEvent::new`] without the check, for a caller that sets more fields and then validates once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn unchecked(
        request_id: Option<&str>,
        at: DateTime<Utc>,
        owner: &str,
        provider: &str,
        model: &str,
        usage: Usage,
        cost: Decimal,
        random: &dyn RandomSource,
    ) -> Result<Self> {
        let event_id = time_ordered_id(at, random)?;
        let request_id = match request_id {
            Some(r) => r.to_owned(),
            None => format!("req_{}", random_id(random)?),
        };
        Ok(UsageEvent {
            event_id,
            request_id,
            at,
            key_id: None,
            owner: owner.to_owned(),
            org: None,
            provider: provider.to_owned(),
            model: model.to_owned(),
            usage,
            cost,
            credential_source: None,
            estimated: false,
            estimated_first: false,
            tags: Vec::new(),
            end_user: None,
        })
    }

    /// Whether `incoming`, recorded for this stored event's request id, replaces it: only exact usage replaces an
    /// `estimated` event (the estimate gives way to the usage that turned up); anything else is a duplicate.
    pub fn is_replaced_by(&self, incoming: &UsageEvent) -> bool {
        self.estimated && !incoming.estimated && self.request_id == incoming.request_id
    }

    /// This `estimated` event with `exact`'s usage, cost and credential source: the stored event's id, time, key,
    /// owner and model stay (so it stays in the same budget periods and report groups), and it is marked
    /// `estimated_first`.
    ///
    /// ```
    /// # use keymeter::ledger::UsageEvent;
    /// # use keymeter::pricing::Usage;
    /// # use keymeter::random::OsRandom;
    /// # use rust_decimal::Decimal;
    /// let at = chrono::Utc::now();
    /// let mut estimated = UsageEvent::new(Some("req-1"), at, "alice", "openai", "gpt-4o",
    ///                                     Usage::default(), Decimal::new(50, 2), &OsRandom)?;
    /// estimated.estimated = true;
    /// let exact = UsageEvent::new(Some("req-1"), at, "alice", "openai", "gpt-4o",
    ///                             Usage::default(), Decimal::new(3, 2), &OsRandom)?;
    /// assert!(estimated.is_replaced_by(&exact));
    /// let replaced = estimated.replaced_by(&exact);
    /// assert_eq!((replaced.event_id.as_str(), replaced.cost), (estimated.event_id.as_str(), Decimal::new(3, 2)));
    /// assert!(!replaced.estimated && replaced.estimated_first);
    /// # Ok::<(), keymeter::Error>(())
    /// ```
    pub fn replaced_by(&self, exact: &UsageEvent) -> UsageEvent {
        UsageEvent {
            usage: exact.usage,
            cost: exact.cost,
            credential_source: exact.credential_source.or(self.credential_source),
            estimated: false,
            estimated_first: true,
            ..self.clone()
        }
    }

    /// Checks what every backend requires of an event before storing it: names (event id, request id, owner,
    /// provider, model, key id, org) of 1–256 characters without control characters, a time in the years
    /// 1970–9999, counts within [`Usage::MAX_COUNT`], and a cost that is not negative. Backends call it on every event they are given (the fields are public, so an event need not
    /// come from [`UsageEvent::new`]).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        crate::validate::name("event id", &self.event_id)?;
        Attribution {
            request_id: &self.request_id,
            at: self.at,
            owner: &self.owner,
            provider: &self.provider,
            model: &self.model,
            key_id: self.key_id.as_deref(),
            org: self.org.as_deref(),
            tags: &self.tags,
            end_user: self.end_user.as_deref(),
            usage: &self.usage,
            cost: self.cost,
        }
        .check()
    }

    /// Sets the inbound key id.
    #[must_use]
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Sets the organisation.
    #[must_use]
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// Sets the credential source.
    #[must_use]
    pub fn credential_source(mut self, source: CredentialSource) -> Self {
        self.credential_source = Some(source);
        self
    }

    /// Sets the tags.
    #[must_use]
    pub fn tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// Sets the end user.
    #[must_use]
    pub fn end_user(mut self, end_user: impl Into<String>) -> Self {
        self.end_user = Some(end_user.into());
        self
    }
}

/// One line of `usage export --format jsonl` as it is read back: every field of [`UsageEvent`], the cost a
/// decimal string (a JSON number could have been rounded on the way). Fields a newer keymeter adds are ignored.
#[derive(Deserialize)]
struct EventLine {
    event_id: String,
    request_id: String,
    at: DateTime<Utc>,
    #[serde(default)]
    key_id: Option<String>,
    owner: String,
    #[serde(default)]
    org: Option<String>,
    provider: String,
    model: String,
    usage: Usage,
    cost: String,
    #[serde(default)]
    credential_source: Option<String>,
    #[serde(default)]
    estimated: bool,
    #[serde(default)]
    estimated_first: bool,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    end_user: Option<String>,
}

impl std::str::FromStr for UsageEvent {
    type Err = crate::Error;

    /// Parses one exported JSON line (the event's serde form) and validates it as a backend would.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] saying what is wrong: not JSON, a missing field, a cost that is not a
    /// decimal string, an unknown credential source, or what [`UsageEvent::validate`] refuses.
    fn from_str(line: &str) -> Result<Self> {
        let raw: EventLine = serde_json::from_str(line).map_err(|e| {
            crate::Error::invalid("usage event", format!("not an exported event: {e}"))
        })?;
        UsageEvent::try_from(raw)
    }
}

impl TryFrom<EventLine> for UsageEvent {
    type Error = crate::Error;

    fn try_from(raw: EventLine) -> Result<Self> {
        let cost = raw.cost.parse::<Decimal>().map_err(|_| {
            crate::Error::invalid("cost", "expected a decimal string such as \"0.0125\"")
        })?;
        let credential_source = raw
            .credential_source
            .as_deref()
            .map(str::parse::<CredentialSource>)
            .transpose()?;
        let event = UsageEvent {
            event_id: raw.event_id,
            request_id: raw.request_id,
            at: raw.at,
            key_id: raw.key_id,
            owner: raw.owner,
            org: raw.org,
            provider: raw.provider,
            model: raw.model,
            usage: raw.usage,
            cost,
            credential_source,
            estimated: raw.estimated,
            estimated_first: raw.estimated_first,
            tags: raw.tags,
            end_user: raw.end_user,
        };
        event.validate()?;
        Ok(event)
    }
}

/// `ev_`, the time in microseconds as nine base-62 digits, then twelve random ones: ids sort by time, so a
/// store's id index grows at its right edge instead of at a random leaf (imports were bound by those leaves).
fn time_ordered_id(at: DateTime<Utc>, random: &dyn RandomSource) -> Result<String> {
    const TIME_DIGITS: usize = 9; // 62^9 µs is past the year 2400
    let alphabet = crate::random::base62_alphabet();
    let mut micros = u64::try_from(at.timestamp_micros()).unwrap_or(0);
    let mut id = [0u8; 3 + TIME_DIGITS + 12];
    id[..3].copy_from_slice(b"ev_");
    for digit in id[3..3 + TIME_DIGITS].iter_mut().rev() {
        *digit = alphabet[(micros % 62) as usize];
        micros /= 62;
    }
    fill_base62_lean(random, &mut id[3 + TIME_DIGITS..])?;
    Ok(id.iter().map(|&b| char::from(b)).collect())
}

pub(crate) fn random_id(random: &dyn RandomSource) -> Result<String> {
    let mut id = [0u8; 16];
    fill_base62_lean(random, &mut id)?;
    Ok(id.iter().map(|&b| char::from(b)).collect())
}

/// The answer to a record: the event's id (the first one's, for a duplicate) and whether it was a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// The stored event's id.
    pub event_id: String,
    /// Whether an event with the same request id was already recorded (nothing was added).
    pub duplicate: bool,
    /// Whether this exact event replaced an `estimated` one of the same request id (the estimate gives way):
    /// the stored event (its id is `event_id`) took this usage and cost, and its budgets moved by the
    /// difference. `duplicate` is false then.
    #[serde(skip_serializing_if = "is_false")]
    pub replaced: bool,
}

/// Where a page of [`crate::ledger::Ledger::events_after`] ends: the last event's time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    /// The last event's time.
    pub at: DateTime<Utc>,
    /// The last event's id.
    pub event_id: String,
}

impl EventCursor {
    /// The cursor just after `e`.
    pub fn after(e: &UsageEvent) -> Self {
        EventCursor {
            at: e.at,
            event_id: e.event_id.clone(),
        }
    }

    /// Whether `e` comes after this cursor.
    pub fn precedes(&self, e: &UsageEvent) -> bool {
        (e.at, e.event_id.as_str()) > (self.at, self.event_id.as_str())
    }
}

/// Filters for [`crate::ledger::Ledger::events`]; unset fields match everything. `since` is inclusive, `until`
/// exclusive. Built as [`crate::keys::NewKey`] and [`crate::ledger::MeteredRequest`] are:
///
/// ```
/// use keymeter::ledger::EventFilter;
///
/// let march = "2026-03-01T00:00:00Z".parse().unwrap();
/// let filter = EventFilter::new().owner("alice").model("gpt-4o").since(march);
/// assert_eq!(filter.owner.as_deref(), Some("alice"));
/// assert!(filter.until.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EventFilter {
    /// Only this owner's events.
    pub owner: Option<String>,
    /// Only this organisation's events.
    pub org: Option<String>,
    /// Only this key's events.
    pub key_id: Option<String>,
    /// Only this model's events.
    pub model: Option<String>,
    /// From this instant.
    pub since: Option<DateTime<Utc>>,
    /// Before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only events carrying this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Only events made for this end user.
    #[serde(default)]
    pub end_user: Option<String>,
}

impl EventFilter {
    /// A filter that matches every event.
    pub fn new() -> EventFilter {
        EventFilter::default()
    }

    /// Only `owner`'s events.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Only organisation `org`'s events.
    #[must_use]
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// Only the events of the key with this id.
    #[must_use]
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Only `model`'s events.
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// From `since` (inclusive).
    #[must_use]
    pub fn since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    /// Before `until` (exclusive).
    #[must_use]
    pub fn until(mut self, until: DateTime<Utc>) -> Self {
        self.until = Some(until);
        self
    }

    /// Only events carrying `tag`.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Only events made for `end_user`.
    #[must_use]
    pub fn end_user(mut self, end_user: impl Into<String>) -> Self {
        self.end_user = Some(end_user.into());
        self
    }

    /// Whether it filters on what the stores keep outside their indexes (a tag, an end user): such a filter is
    /// applied to the events the rest of it selects.
    pub fn by_attribution(&self) -> bool {
        self.tag.is_some() || self.end_user.is_some()
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &UsageEvent) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == e.owner)
            && self.org.as_ref().is_none_or(|o| e.org.as_ref() == Some(o))
            && self
                .key_id
                .as_ref()
                .is_none_or(|k| e.key_id.as_ref() == Some(k))
            && self.model.as_ref().is_none_or(|m| *m == e.model)
            && self.since.is_none_or(|s| e.at >= s)
            && self.until.is_none_or(|u| e.at < u)
            && self.tag.as_ref().is_none_or(|t| e.tags.contains(t))
            && self
                .end_user
                .as_ref()
                .is_none_or(|u| e.end_user.as_ref() == Some(u))
    }

    /// This filter without its tag and end user (what a store's query selects by).
    pub fn without_attribution(&self) -> EventFilter {
        EventFilter {
            tag: None,
            end_user: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use chrono::TimeZone;

    fn id_at(micros: i64, seed: u64) -> String {
        let at = Utc.timestamp_micros(micros).unwrap();
        time_ordered_id(at, &SeededRandom::new(seed)).unwrap()
    }

    #[test]
    fn event_ids_sort_by_time_whatever_their_random_part() {
        let times = [
            0,
            1,
            61,
            62,
            1_700_000_000_000_000,
            1_700_000_000_000_001,
            4_102_444_800_000_000,
        ];
        let ids: Vec<String> = times
            .iter()
            .enumerate()
            .map(|(i, &t)| id_at(t, 1_000 - i as u64))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|id| id.len() == 24 && id.starts_with("ev_")));
        assert_ne!(
            id_at(5, 1),
            id_at(5, 2),
            "the same microsecond still gives distinct ids"
        );
        assert_eq!(
            id_at(-5, 1)[..12],
            id_at(0, 1)[..12],
            "times before 1970 sort first"
        );
    }
}
