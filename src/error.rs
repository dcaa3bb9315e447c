//! The crate's public error type.
//!
//! Backends keep their own error types privately and map them into [`Error::Store`], so callers match on one
//! `#[non_exhaustive]` enum whatever store is behind a trait object. No variant ever carries a secret: messages
//! name what was wrong (a length, a position, a scheme), never the value.

use crate::keys::hash::HashError;
use crate::keys::token::TokenError;

/// The result type of keymeter's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in keymeter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A token does not have keymeter's format (length, alphabet, checksum or environment tag).
    #[error("malformed token: {0}")]
    Token(#[from] TokenError),

    /// A stored or imported hash string could not be parsed or used.
    #[error("invalid key hash: {0}")]
    Hash(#[from] HashError),

    /// An argument was rejected: `what` names it, `reason` says why.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid (for example `scope` or `ip network`).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// A record with the same unique identity already exists.
    #[error("{what} already exists{}", shown_id(.id))]
    AlreadyExists {
        /// The kind of record (for example `key`).
        what: &'static str,
        /// Its identity, when it may be shown (never for a hash or a hint, which are withheld: empty).
        id: String,
    },

    /// A key for an owner that already belongs to another organisation (or to none): an owner's keys all share
    /// the organisation of its first key. The organisation it belongs to is not named (the caller may not be
    /// allowed to know it).
    #[error(
        "owner {owner:?} belongs to another organisation: a key for an existing owner names that owner's organisation"
    )]
    OwnerInOtherOrganisation {
        /// The owner.
        owner: String,
    },

    /// The model is not on an allowlist that applies: the key's own, or its owner's or organisation's.
    #[error("model {model:?} ({provider}) is not allowed for {scope}")]
    ModelNotAllowed {
        /// The model asked for.
        model: String,
        /// Its provider.
        provider: String,
        /// The scope whose allowlist refused it, `kind:id`.
        scope: String,
    },

    /// A scope already has as many requests in flight as its concurrency limit allows
    /// ([`crate::limits::Limits::max_parallel`]).
    #[error("{scope} already has {in_flight} requests in flight (its limit is {limit})")]
    TooManyConcurrent {
        /// The scope whose limit refused, `kind:id`.
        scope: String,
        /// Its limit.
        limit: u32,
        /// Its requests in flight when it refused.
        in_flight: u64,
    },

    /// The record named does not exist.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// The kind of record (for example `key`).
        what: &'static str,
        /// Its identity.
        id: String,
    },

    /// Too many imported keys share one lookup hint; verification would have to try them all. The hint itself
    /// is never carried: it is a piece of a secret.
    #[error("that hint already has {max} keys; import with a longer hint")]
    HintFull {
        /// The bound on keys per hint.
        max: usize,
    },

    /// Too many verifications are waiting for a KDF slot (Argon2id, bcrypt); try again shortly (HTTP 503).
    #[error("too many key verifications in progress; try again shortly")]
    Overloaded,

    /// Missing or invalid configuration (secrets, environment, URLs).
    #[error("configuration error: {0}")]
    Config(String),

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),

    /// A model the price catalog does not know. Never priced at zero.
    #[error("unknown model {model:?}")]
    UnknownModel {
        /// The name asked for.
        model: String,
    },

    /// A name that is an alias of several models; use one of their ids.
    #[error("model name {model:?} is ambiguous: it is an alias of {}", candidates.join(", "))]
    AmbiguousModel {
        /// The name asked for.
        model: String,
        /// The ids it could mean.
        candidates: Vec<String>,
    },

    /// The model is priced only in a unit keymeter does not bill (per image, pixel, second, query…), or in
    /// per-query / per-image units the usage has none of. Never priced at zero.
    #[error("model {model:?} is priced in a unit keymeter does not bill for this usage: {unit}")]
    UnpricedUnit {
        /// The model.
        model: String,
        /// The price it has instead (`input_cost_per_pixel`, say).
        unit: String,
    },

    /// The model has no price window covering the time asked for.
    #[error("model {model:?} has no price at {at}")]
    NoPrice {
        /// The model.
        model: String,
        /// The time.
        at: chrono::DateTime<chrono::Utc>,
    },

    /// The usage has tokens of a class the model has no rate for (audio on a text-only model, say).
    #[error("model {model:?} has no rate for {class} tokens")]
    UnpricedClass {
        /// The model.
        model: String,
        /// The token class.
        class: &'static str,
    },

    /// A usage object that contradicts itself or cannot be read.
    #[error("invalid usage: {0}")]
    InvalidUsage(String),

    /// A price catalog that cannot be read.
    #[error("invalid price catalog: {0}")]
    Catalog(String),

    /// No tier holds a key for this provider.
    #[error("no credential for provider {provider:?}")]
    NoCredential {
        /// The provider.
        provider: String,
    },

    /// A provider key that is malformed or a placeholder. Never carries the key.
    #[error("invalid {provider} key: {reason}")]
    InvalidCredential {
        /// The provider.
        provider: String,
        /// What is wrong.
        reason: String,
    },

    /// A stored credential that cannot be opened.
    #[error("vault: {0}")]
    Vault(#[from] crate::credentials::VaultError),

    /// A reservation would take a budget past its limit: which budget refused, and its numbers.
    #[error(
        "budget {scope} exceeded: limit {limit}, spent {spent}, reserved {reserved}; this request needs up to \
         {requested} (the period ends {period_end})"
    )]
    BudgetExceeded {
        /// The budget's scope, `kind:id`.
        scope: String,
        /// Its limit.
        limit: rust_decimal::Decimal,
        /// Settled spend in the period.
        spent: rust_decimal::Decimal,
        /// Live reservations in the period.
        reserved: rust_decimal::Decimal,
        /// What the refused reservation asked for.
        requested: rust_decimal::Decimal,
        /// When the budget's period ends (its room comes back).
        period_end: chrono::DateTime<chrono::Utc>,
    },

    /// The request id is taken: another request holds it (`event_id` is `None`) or it is recorded
    /// already (its event's id, and its cost while the event is kept). Nothing was reserved.
    #[error("request id {request_id:?} was used already{}", match .event_id {
        Some(id) => format!(": recorded as {id}"),
        None => ": a request with it is in flight".to_owned(),
    })]
    DuplicateRequest {
        /// The request id.
        request_id: String,
        /// The recorded event's id, when there is one.
        event_id: Option<String>,
        /// The recorded event's cost, when the event is kept (not pruned).
        cost: Option<rust_decimal::Decimal>,
    },

    /// A background task failed (a panic or cancellation inside keymeter).
    #[error("internal error: {0}")]
    Internal(String),

    /// A dependency the operation needs cannot be reached now (HTTP 503 with `Retry-After`): try again shortly.
    /// Nothing was charged or recorded by the failed call.
    #[error("{dependency} unavailable: {source}")]
    Unavailable {
        /// What could not be reached.
        dependency: Dependency,
        /// The dependency's own error.
        #[source]
        source: Box<Error>,
    },

    /// A storage backend failed. `store` names the backend.
    #[error("{store} store error: {source}")]
    Store {
        /// The backend, for example `sqlite`.
        store: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A dependency an operation can find unreachable ([`Error::Unavailable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dependency {
    /// The store (keys, credentials, ledger).
    Store,
    /// The rate limiter (Redis, or the store's limit tables), when it fails closed.
    Limiter,
    /// The local journal: past its size bound while the store is away, or a disk that refuses writes.
    Journal,
}

impl Dependency {
    /// Every dependency, in declaration order.
    pub const ALL: [Dependency; 3] = [Dependency::Store, Dependency::Limiter, Dependency::Journal];

    /// `store` or `limiter`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Store => "store",
            Dependency::Limiter => "limiter",
            Dependency::Journal => "journal",
        }
    }

    /// The service code a refusal for it carries: `STORE_UNAVAILABLE`, `LIMITER_UNAVAILABLE`,
    /// `JOURNAL_FULL`.
    pub fn code(self) -> &'static str {
        match self {
            Dependency::Store => "STORE_UNAVAILABLE",
            Dependency::Limiter => "LIMITER_UNAVAILABLE",
            Dependency::Journal => "JOURNAL_FULL",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn shown_id(id: &str) -> String {
    if id.is_empty() {
        String::new()
    } else {
        format!(" ({id:?})")
    }
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    /// The dependency this error says is unreachable: [`Error::Unavailable`]'s, and the store for every
    /// [`Error::Store`] (a backend error is the store failing, whatever its cause; its message says which).
    pub fn unavailable(&self) -> Option<Dependency> {
        match self {
            Error::Unavailable { dependency, .. } => Some(*dependency),
            Error::Store { .. } => Some(Dependency::Store),
            _ => None,
        }
    }

    pub(crate) fn key_not_found(id: &str) -> Self {
        Error::NotFound {
            what: "key",
            id: id.to_owned(),
        }
    }

    pub(crate) fn webhook_not_found(id: &str) -> Self {
        Error::NotFound {
            what: "webhook",
            id: id.to_owned(),
        }
    }
}
