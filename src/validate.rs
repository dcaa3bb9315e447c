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

/// The largest amount keymeter stores (a cost, a limit, a reservation): 10^15. Sums of any number of stored
/// amounts that could ever exist stay far inside `Decimal`'s range (about 7.9 × 10^28), so ledger arithmetic never
/// overflows, whatever a custom catalog's prices.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);

/// A money amount: not negative, at most [`MAX_AMOUNT`].
///
/// # Errors
/// [`Error::InvalidInput`] naming `what`.
pub fn amount(what: &'static str, value: Decimal) -> Result<()> {
    if value.is_sign_negative() {
        return Err(Error::invalid(what, "must not be negative"));
    }
    if value > MAX_AMOUNT {
        return Err(Error::invalid(
            what,
            "is larger than 1000000000000000, the most keymeter stores",
        ));
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

#[cfg(test)]
mod tests {
    #[test]
    fn max_amount_is_ten_to_the_fifteenth() {
        assert_eq!(
            super::MAX_AMOUNT,
            rust_decimal::Decimal::from(1_000_000_000_000_000_i64)
        );
    }
}
