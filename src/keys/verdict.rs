//! The answer to "is this a live key, and may it do this?".

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::keys::record::KeyRecord;
use crate::limits::LimitStatus;

/// A verdict's stable code. Rejections are listed in the order the verifier checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerdictCode {
    /// The key is live and may do what was asked.
    Valid,
    /// Not a well-formed token (format or checksum).
    Malformed,
    /// A well-formed token for an environment this verifier does not accept.
    WrongEnvironment,
    /// Unknown key or wrong secret: never told apart.
    NotFound,
    /// The key was revoked.
    Revoked,
    /// The key is disabled.
    Disabled,
    /// The key has expired.
    Expired,
    /// The client's address is outside the key's allowed networks.
    IpNotAllowed,
    /// The key lacks a required scope.
    InsufficientScope,
    /// The key is over its rate limit.
    RateLimited,
    /// The key's budget is spent.
    BudgetExceeded,
}

impl VerdictCode {
    /// Every code, in check order.
    pub const ALL: [VerdictCode; 11] = [
        VerdictCode::Valid,
        VerdictCode::Malformed,
        VerdictCode::WrongEnvironment,
        VerdictCode::NotFound,
        VerdictCode::Revoked,
        VerdictCode::Disabled,
        VerdictCode::Expired,
        VerdictCode::IpNotAllowed,
        VerdictCode::InsufficientScope,
        VerdictCode::RateLimited,
        VerdictCode::BudgetExceeded,
    ];

    /// The code's position in [`VerdictCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The code with this `SCREAMING_SNAKE` string.
    pub fn from_name(name: &str) -> Option<VerdictCode> {
        VerdictCode::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The stable `SCREAMING_SNAKE` string.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictCode::Valid => "VALID",
            VerdictCode::Malformed => "MALFORMED",
            VerdictCode::WrongEnvironment => "WRONG_ENVIRONMENT",
            VerdictCode::NotFound => "NOT_FOUND",
            VerdictCode::Revoked => "REVOKED",
            VerdictCode::Disabled => "DISABLED",
            VerdictCode::Expired => "EXPIRED",
            VerdictCode::IpNotAllowed => "IP_NOT_ALLOWED",
            VerdictCode::InsufficientScope => "INSUFFICIENT_SCOPE",
            VerdictCode::RateLimited => "RATE_LIMITED",
            VerdictCode::BudgetExceeded => "BUDGET_EXCEEDED",
        }
    }

    /// The HTTP status a server should answer with: 200, 401, 403, 429 or 402.
    pub fn http_status(self) -> u16 {
        match self {
            VerdictCode::Valid => 200,
            VerdictCode::Malformed
            | VerdictCode::WrongEnvironment
            | VerdictCode::NotFound
            | VerdictCode::Revoked
            | VerdictCode::Expired => 401,
            VerdictCode::Disabled | VerdictCode::IpNotAllowed | VerdictCode::InsufficientScope => {
                403
            }
            VerdictCode::RateLimited => 429,
            VerdictCode::BudgetExceeded => 402,
        }
    }
}

impl fmt::Display for VerdictCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for VerdictCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The outcome of a verification: a code, and the key's record once its secret was proven (so a `REVOKED` or
/// `INSUFFICIENT_SCOPE` verdict still tells which key it was; `NOT_FOUND` never does).
#[derive(Debug, Clone)]
pub struct Verdict {
    code: VerdictCode,
    key: Option<Arc<KeyRecord>>,
    limit: Option<LimitStatus>,
    rules: Option<Arc<crate::keys::KeyRules>>,
}

impl Verdict {
    pub(crate) fn reject(code: VerdictCode) -> Self {
        Verdict {
            code,
            key: None,
            limit: None,
            rules: None,
        }
    }

    pub(crate) fn with_key(code: VerdictCode, key: Arc<KeyRecord>) -> Self {
        Verdict {
            code,
            key: Some(key),
            limit: None,
            rules: None,
        }
    }

    pub(crate) fn with_limit(mut self, limit: Option<LimitStatus>) -> Self {
        self.limit = limit;
        self
    }

    pub(crate) fn with_rules(mut self, rules: Option<Arc<crate::keys::KeyRules>>) -> Self {
        self.rules = rules;
        self
    }

    /// The rules the key is held to by its scopes' limits (allowlists, concurrency limits), when the verifier has
    /// limits and the key was checked against them: the checks after a verify read these instead of looking the
    /// key up again.
    pub fn rules(&self) -> Option<&Arc<crate::keys::KeyRules>> {
        self.rules.as_ref()
    }

    /// The tightest rate limit's numbers, when the key has limits: for `RATE_LIMITED`, how long to wait
    /// (`retry_after`); for `VALID`, what is left (the `RateLimit` header's fields).
    pub fn limit(&self) -> Option<&LimitStatus> {
        self.limit.as_ref()
    }

    /// The code.
    pub fn code(&self) -> VerdictCode {
        self.code
    }

    /// Whether the key is valid for the request.
    pub fn is_valid(&self) -> bool {
        self.code == VerdictCode::Valid
    }

    /// The record of the key whose secret was proven (any code but the first three rejections).
    pub fn key(&self) -> Option<&Arc<KeyRecord>> {
        self.key.as_ref()
    }

    /// The record, only when the verdict is [`VerdictCode::Valid`].
    pub fn valid_key(&self) -> Option<&Arc<KeyRecord>> {
        self.key.as_ref().filter(|_| self.is_valid())
    }
}
