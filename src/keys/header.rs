//! Pulling the key out of an HTTP header value: `Authorization: Bearer …`, `x-api-key: …` or, as Google's SDKs
//! send it, `x-goog-api-key: …`.

/// Why a header does not carry a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The header is not one that carries a key.
    #[error(
        "header {0:?} does not carry an API key (use Authorization, x-api-key or x-goog-api-key)"
    )]
    UnsupportedHeader(String),
    /// `Authorization` with another scheme than `Bearer`.
    #[error("the Authorization header must use the Bearer scheme")]
    NotBearer,
    /// The value is empty or has inner white space or control characters.
    #[error("the header value is not a single token")]
    BadValue,
}

/// The key carried by a header. `name` is matched case-insensitively; the `Bearer` scheme too (RFC 9110).
///
/// ```
/// use keymeter::keys::credential_from_header;
///
/// assert_eq!(credential_from_header("Authorization", "Bearer km_live_x").unwrap(), "km_live_x");
/// assert_eq!(credential_from_header("x-api-key", " km_live_x ").unwrap(), "km_live_x");
/// assert_eq!(credential_from_header("x-goog-api-key", "km_live_x").unwrap(), "km_live_x");
/// assert!(credential_from_header("Authorization", "Basic abc").is_err());
/// ```
///
/// # Errors
/// [`HeaderError`] when the header does not carry exactly one token.
pub fn credential_from_header<'a>(name: &str, value: &'a str) -> Result<&'a str, HeaderError> {
    let token = if name.eq_ignore_ascii_case("authorization") {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let (scheme, rest) = value
            .split_once([' ', '\t'])
            .ok_or(HeaderError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(HeaderError::NotBearer);
        }
        rest.trim_start_matches([' ', '\t'])
    } else if name.eq_ignore_ascii_case("x-api-key") || name.eq_ignore_ascii_case("x-goog-api-key")
    {
        value.trim_matches(|c| c == ' ' || c == '\t')
    } else {
        return Err(HeaderError::UnsupportedHeader(
            name.chars().take(64).collect(),
        ));
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeaderError::BadValue);
    }
    Ok(token)
}
