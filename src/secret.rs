//! Secrets: re-exports of the [`secrecy`] wrappers keymeter uses, and masking for display.
//!
//! Every secret keymeter hands out is a [`SecretString`] or [`SecretBox`]: zeroized on drop, `[REDACTED]` in
//! `Debug`, no `Display`, and no `Serialize` (so it cannot slip into JSON or logs by accident).

pub use secrecy::{ExposeSecret, SecretBox, SecretString};

/// Masks a secret for display: at most its leading type prefix (up to the last `-` or `_` among its first 8
/// characters) and its last 4 characters, and only the last 4 when the secret is long enough (16 or more
/// characters) that 4 characters give nothing useful away.
///
/// ```
/// use keymeter::secret::mask;
/// assert_eq!(mask("sk-ant-api03-abcdefghijklmnopqrstuvwxyzAb12"), "sk-ant-…Ab12");
/// assert_eq!(mask("AIzaSyA1234567890abcdefghijk"), "…hijk");
/// assert_eq!(mask("short"), "…");
/// ```
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let head: usize = chars
        .iter()
        .take(8)
        .rposition(|&c| c == '-' || c == '_')
        .map_or(0, |i| i + 1);
    let tail = if chars.len() >= 16 { 4 } else { 0 };
    if head + tail + 8 > chars.len() {
        return String::from("…");
    }
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}
