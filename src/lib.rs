#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
#[cfg(feature = "test-suite")]
pub mod conformance;
pub mod credentials;
pub mod env;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod pricing;
pub mod random;
pub mod secret;
pub mod store;

pub use error::{Error, Result};
