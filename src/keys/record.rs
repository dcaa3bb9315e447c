//! Key records: what a store keeps about an inbound API key (never the key itself).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::keys::hash::{HashScheme, KeyHash};
use crate::keys::models::ModelRule;
use crate::keys::scope::Scope;
use crate::keys::token::KeyEnv;

/// How the verifier finds a key's record.
///
/// `Debug` withholds the digest and the hint digest: an unsalted digest of a low-entropy key is worth guarding.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeyLookup {
    /// A generated key: by the public id inside the token, which is the record's id.
    Id,
    /// An imported SHA-256 key: by its hex digest.
    Digest(String),
    /// An imported slow hash (argon2id, bcrypt): by a keyed digest of the key's first characters,
    /// `<pepper-id>:<base64 HMAC-SHA-256>` ([`crate::keys::KeyHasher::hint_digest`]), never the characters
    /// themselves.
    Hint(String),
}

impl std::fmt::Debug for KeyLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyLookup::Id => f.write_str("Id"),
            KeyLookup::Digest(_) => f.write_str("Digest(…)"),
            KeyLookup::Hint(_) => f.write_str("Hint(…)"),
        }
    }
}

impl KeyLookup {
    /// The lookup's kind as stored: `id`, `digest` or `hint`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyLookup::Id => "id",
            KeyLookup::Digest(_) => "digest",
            KeyLookup::Hint(_) => "hint",
        }
    }

    /// The digest or hint; `None` for [`KeyLookup::Id`].
    pub fn value(&self) -> Option<&str> {
        match self {
            KeyLookup::Id => None,
            KeyLookup::Digest(v) | KeyLookup::Hint(v) => Some(v),
        }
    }

    /// Rebuilds a lookup from its stored kind and value.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown kind or a missing value.
    pub fn from_parts(kind: &str, value: Option<String>) -> Result<Self> {
        match (kind, value) {
            ("id", _) => Ok(KeyLookup::Id),
            ("digest", Some(v)) => Ok(KeyLookup::Digest(v)),
            ("hint", Some(v)) => Ok(KeyLookup::Hint(v)),
            _ => Err(Error::invalid(
                "key lookup",
                format!("unknown kind {kind:?} or missing value"),
            )),
        }
    }
}

/// The unit of a rate limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RatePer {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
    /// Per day.
    Day,
}

impl RatePer {
    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            RatePer::Second => 1,
            RatePer::Minute => 60,
            RatePer::Hour => 3_600,
            RatePer::Day => 86_400,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RatePer::Second => "sec",
            RatePer::Minute => "min",
            RatePer::Hour => "hour",
            RatePer::Day => "day",
        }
    }
}

/// A request rate limit such as `100/min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Requests allowed per window (at least 1).
    pub requests: u32,
    /// The window.
    pub per: RatePer,
}

impl FromStr for RateLimit {
    type Err = Error;

    /// Parses `N/sec`, `N/min`, `N/hour` or `N/day` (also `s`, `m`, `h`, `d` and the long words).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "rate limit",
                "expected N/sec, N/min, N/hour or N/day with N ≥ 1",
            )
        };
        let (n, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" | "sec" | "second" => RatePer::Second,
            "m" | "min" | "minute" => RatePer::Minute,
            "h" | "hour" => RatePer::Hour,
            "d" | "day" => RatePer::Day,
            _ => return Err(bad()),
        };
        if requests == 0 {
            return Err(bad());
        }
        Ok(RateLimit { requests, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.requests, self.per.as_str())
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A stored API key. Holds the hash, never the key; its `Serialize` output names the hash scheme and leaves the
/// hash out.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// The public id (for generated keys, the id inside the token).
    pub id: String,
    /// A human name.
    pub name: String,
    /// The owning user.
    pub owner: String,
    /// The owning organisation, if any.
    pub org: Option<String>,
    /// `live` or `test`.
    pub env: KeyEnv,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// The hash at rest.
    pub hash: KeyHash,
    /// How the verifier finds this record.
    pub lookup: KeyLookup,
    /// A display hint such as `km_live_Ab3d…9xYz`.
    pub hint: String,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was last seen (coalesced: see [`crate::keys::Verifier`]).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Disabled keys are refused until enabled again.
    pub disabled: bool,
    /// When the key was revoked; revocation is final.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Client networks allowed; empty allows any.
    pub allowed_ips: Vec<IpNet>,
    /// The key's rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The models the key may call ([`crate::keys::models`]); empty allows any.
    pub allowed_models: Vec<ModelRule>,
    /// Free-form JSON metadata.
    pub metadata: serde_json::Value,
    /// Tags every event of the key carries (with the request's own): at most 16 of 64 characters.
    pub tags: Vec<String>,
    /// The secret a rotation replaced, still accepted until its grace period ends.
    pub previous: Option<PreviousSecret>,
    /// The key that created this one through the self-service endpoints (`me/keys`), if any: revoking that key
    /// revokes this one too.
    pub created_by: Option<String>,
}

/// The secret a key had before its last rotation ([`crate::keys::KeyIssuer::rotate`]): its hash, and the end of
/// the grace period during which it still verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// The hash of the replaced secret.
    pub hash: KeyHash,
    /// It verifies strictly before this time.
    pub valid_until: DateTime<Utc>,
}

impl KeyRecord {
    /// The previous secret's hash while its grace period runs at `now` (microseconds since the epoch).
    pub fn previous_hash_at(&self, now_micros: i64) -> Option<&KeyHash> {
        self.previous
            .as_ref()
            .filter(|p| now_micros < p.valid_until.timestamp_micros())
            .map(|p| &p.hash)
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether a client at `ip` may use the key. With networks set, an unknown IP is refused.
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as IPv4, and an IPv4 client also matches an
    /// IPv6 network holding its mapped form (`::/0`, `::ffff:0:0/96`), so no entry silently never matches.
    pub fn allows_ip(&self, ip: Option<IpAddr>) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        let Some(ip) = ip else { return false };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mapped = match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.allowed_ips
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
    }
}

#[derive(Serialize)]
struct RecordView<'a> {
    id: &'a str,
    name: &'a str,
    owner: &'a str,
    org: &'a Option<String>,
    env: KeyEnv,
    scopes: &'a [Scope],
    hash_scheme: HashScheme,
    hint: &'a str,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    disabled: bool,
    revoked_at: Option<DateTime<Utc>>,
    allowed_ips: &'a [IpNet],
    rate_limit: Option<RateLimit>,
    allowed_models: &'a [ModelRule],
    metadata: &'a serde_json::Value,
    tags: &'a [String],
    grace_until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_by: Option<&'a str>,
}

impl Serialize for KeyRecord {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        RecordView {
            id: &self.id,
            name: &self.name,
            owner: &self.owner,
            org: &self.org,
            env: self.env,
            scopes: &self.scopes,
            hash_scheme: self.hash.scheme(),
            hint: &self.hint,
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            disabled: self.disabled,
            revoked_at: self.revoked_at,
            allowed_ips: &self.allowed_ips,
            rate_limit: self.rate_limit,
            allowed_models: &self.allowed_models,
            metadata: &self.metadata,
            tags: &self.tags,
            grace_until: self.previous.as_ref().map(|p| p.valid_until),
            created_by: self.created_by.as_deref(),
        }
        .serialize(s)
    }
}

/// Filters for [`crate::keys::KeyStore::list`]; unset fields match everything.
///
/// ```
/// let filter = keymeter::keys::KeyFilter::new().org("acme");
/// assert_eq!(filter.org.as_deref(), Some("acme"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Only keys of this owner.
    pub owner: Option<String>,
    /// Only keys of this organisation.
    pub org: Option<String>,
    /// At most this many (the oldest first).
    pub limit: Option<u32>,
}

impl KeyFilter {
    /// A filter that matches every key.
    pub fn new() -> KeyFilter {
        KeyFilter::default()
    }

    /// Only `owner`'s keys.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Only organisation `org`'s keys.
    #[must_use]
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// At most `n` keys, the oldest first.
    #[must_use]
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// Whether `record` passes the filter (the limit aside).
    pub fn matches(&self, record: &KeyRecord) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == record.owner)
            && self
                .org
                .as_ref()
                .is_none_or(|o| record.org.as_ref() == Some(o))
    }
}

/// An IPv6 network inside the IPv4-mapped range (`::ffff:10.0.0.0/104`) as the IPv4 network it means
/// (`10.0.0.0/8`): clients' mapped addresses are matched as IPv4.
fn normalize_network(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

/// Parses a list of CIDR networks; a bare address means a single host.
///
/// # Errors
/// [`Error::InvalidInput`] naming the first bad entry.
pub fn parse_networks<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>> {
    items
        .into_iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| normalize_network(n.trunc()))
                .map_err(|_| {
                    Error::invalid(
                        "ip network",
                        format!("{s:?} is not an address or CIDR network"),
                    )
                })
        })
        .collect()
}
