#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod alerts;
pub mod clock;
pub mod config;
#[cfg(feature = "test-suite")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
pub mod conformance;
pub mod credentials;
pub mod env;
pub mod error;
mod file;
#[cfg(feature = "http-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-client")))]
pub mod http;
mod keymeter;
pub mod keys;
pub mod leaks;
pub mod ledger;
pub mod limits;
pub mod lookups;
pub mod pricing;
pub mod random;
pub mod secret;
pub mod stats;
pub mod store;
mod streak;
pub mod validate;

pub use config::Config;
pub use error::{Dependency, Error, Result};
pub use keymeter::{CacheLookups, Keymeter};

// The foreign types keymeter's public API speaks in, so a host needs no matching versions of its own: amounts
// are `Decimal`, report time zones `Tz`, times `DateTime<Utc>`, secrets `SecretString` (read with
// `ExposeSecret`), usage bodies `Bytes` or `serde_json::Value`.
pub use bytes::Bytes;
pub use chrono::{DateTime, Utc};
pub use chrono_tz::Tz;
pub use rust_decimal::Decimal;
pub use secrecy::{ExposeSecret, SecretString};
pub use serde_json;
