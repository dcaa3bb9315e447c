#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod config;
#[cfg(feature = "test-suite")]
pub mod conformance;
pub mod credentials;
pub mod env;
pub mod error;
mod file;
pub mod keys;
pub mod ledger;
pub mod pricing;
pub mod random;
pub mod secret;
pub mod store;

pub use config::Config;
pub use error::{Error, Result};
