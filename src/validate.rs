//! Input rules every backend needs, written once: backends call these before touching storage, and the
//! conformance suite checks that each does.

use chrono::Duration;
use rust_decimal::Decimal;

use crate::error::{Error, Result};

/// The longest name (owner, org, key id, request id, model, budget scope id) keymeter stores.
pub const MAX_NAME_LEN: usize = 256;

/// A name keymeter stores and prints: 1–256 bytes, not only white space, no control characters (so nothing
/// stored can be unreadable or rewrite a terminal when printed).
///
/// # Errors
/// [`Error::InvalidInput`] naming `what`, never echoing the value.
pub fn name(what: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control)
    {
        return Err(Error::invalid(
            what,
            "must be 1–256 characters, not blank, with no control characters",
        ));
    }
    Ok(())
}

/// A money amount that may not be negative.
///
/// # Errors
/// [`Error::InvalidInput`] naming `what`.
pub fn amount(what: &'static str, value: Decimal) -> Result<()> {
    if value.is_sign_negative() {
        return Err(Error::invalid(what, "must not be negative"));
    }
    Ok(())
}

/// A duration that must be positive.
///
/// # Errors
/// [`Error::InvalidInput`] naming `what`.
pub fn positive(what: &'static str, value: Duration) -> Result<()> {
    if value <= Duration::zero() {
        return Err(Error::invalid(what, "must be positive"));
    }
    Ok(())
}
