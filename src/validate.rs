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

/// A duration written as a number and a unit (`s`, `m`, `h`, `d`, `w`): `30d`, `24h`, `90s`, the CLI's and the
/// gateway's form. Zero only where `zero_ok` (a rotation's grace period).
///
/// ```
/// use keymeter::validate::duration;
///
/// assert_eq!(duration("grace", "24h", true).unwrap(), chrono::Duration::hours(24));
/// assert!(duration("expires_in", "0d", false).is_err());
/// assert!(duration("expires_in", "soon", false).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] naming `what`, saying the expected form.
pub fn duration(what: &'static str, text: &str, zero_ok: bool) -> Result<Duration> {
    let bad = || Error::invalid(what, "use a number and s, m, h, d or w (24h)");
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = text[..split].parse().map_err(|_| bad())?;
    let d = match &text[split..] {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => None,
    };
    d.filter(|d| *d > Duration::zero() || (zero_ok && d.is_zero()))
        .ok_or_else(bad)
}

/// An instant: RFC 3339, or a `YYYY-MM-DD` day meaning its midnight in `tz`.
///
/// ```
/// use keymeter::validate::instant;
///
/// let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
/// assert_eq!(instant("since", "2026-03-01", berlin).unwrap().to_rfc3339(), "2026-02-28T23:00:00+00:00");
/// assert!(instant("since", "yesterday", berlin).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] naming `what`.
pub fn instant(
    what: &'static str,
    text: &str,
    tz: chrono_tz::Tz,
) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|day| crate::ledger::period::local_midnight(day, tz))
        .map_err(|_| Error::invalid(what, "use RFC 3339 or YYYY-MM-DD"))
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
