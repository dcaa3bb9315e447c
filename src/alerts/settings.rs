//! The alerts' configuration, read by [`crate::Config`]: how webhooks are delivered and where GitHub's secret
//! scanning keys come from.
//!
//! | variable | what | default |
//! | --- | --- | --- |
//! | `KEYMETER_WEBHOOK_TIMEOUT` | one delivery attempt, whole (`10s`, `500ms`) | `10s` |
//! | `KEYMETER_WEBHOOK_RETRY` | the wait before the second attempt; each later one doubles, up to an hour | `10s` |
//! | `KEYMETER_WEBHOOK_ATTEMPTS` | attempts before a delivery is given up | `12` |
//! | `KEYMETER_GITHUB_KEYS` | GitHub's secret scanning public keys: a file, or a URL | GitHub's URL |

use std::time::Duration as StdDuration;

use crate::env::EnvSource;
use crate::error::{Error, Result};

/// How alerts are delivered and leak reports verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// One delivery attempt, whole.
    pub webhook_timeout: StdDuration,
    /// The wait before the second attempt.
    pub webhook_retry: StdDuration,
    /// Attempts before a delivery is given up.
    pub webhook_attempts: u32,
    /// GitHub's public keys: a file path or a URL.
    pub github_keys: String,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook_timeout: StdDuration::from_secs(10),
            webhook_retry: StdDuration::from_secs(10),
            webhook_attempts: 12,
            github_keys: "https://api.github.com/meta/public_keys/secret_scanning".into(),
        }
    }
}

/// `500ms`, or a duration of [`crate::validate::duration`] (`10s`, `1m`); more than zero.
fn duration(name: &'static str, text: &str) -> Result<StdDuration> {
    let text = text.trim();
    let bad = || Error::Config(format!("{name} must be a duration such as 10s or 500ms"));
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<u64>()
            .map(StdDuration::from_millis)
            .map_err(|_| bad())?
    } else {
        crate::validate::duration(name, text, false)
            .ok()
            .and_then(|d| d.to_std().ok())
            .ok_or_else(bad)?
    };
    if parsed.is_zero() {
        return Err(bad());
    }
    Ok(parsed)
}

impl AlertSettings {
    /// Reads the variables above from `source`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable that does not parse.
    pub fn from_source(source: &dyn EnvSource) -> Result<Self> {
        let mut settings = AlertSettings::default();
        let set = |name: &str| source.var(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = set("KEYMETER_WEBHOOK_TIMEOUT") {
            settings.webhook_timeout = duration("KEYMETER_WEBHOOK_TIMEOUT", &v)?;
        }
        if let Some(v) = set("KEYMETER_WEBHOOK_RETRY") {
            settings.webhook_retry = duration("KEYMETER_WEBHOOK_RETRY", &v)?;
        }
        if let Some(v) = set("KEYMETER_WEBHOOK_ATTEMPTS") {
            settings.webhook_attempts = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    Error::Config("KEYMETER_WEBHOOK_ATTEMPTS must be a number from 1 to 100".into())
                })?;
        }
        if let Some(v) = set("KEYMETER_GITHUB_KEYS") {
            settings.github_keys = v.trim().to_string();
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_durations_counts_and_refuses_nonsense() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<String, String>>()
        };
        assert_eq!(
            AlertSettings::from_source(&env(&[])).unwrap(),
            AlertSettings::default()
        );
        let s = AlertSettings::from_source(&env(&[
            ("KEYMETER_WEBHOOK_TIMEOUT", "2s"),
            ("KEYMETER_WEBHOOK_RETRY", "200ms"),
            ("KEYMETER_WEBHOOK_ATTEMPTS", "3"),
            ("KEYMETER_GITHUB_KEYS", "/etc/keymeter/github.json"),
        ]))
        .unwrap();
        assert_eq!(s.webhook_timeout, StdDuration::from_secs(2));
        assert_eq!(s.webhook_retry, StdDuration::from_millis(200));
        assert_eq!(s.webhook_attempts, 3);
        assert_eq!(s.github_keys, "/etc/keymeter/github.json");
        for (k, v) in [
            ("KEYMETER_WEBHOOK_TIMEOUT", "0s"),
            ("KEYMETER_WEBHOOK_RETRY", "soon"),
            ("KEYMETER_WEBHOOK_ATTEMPTS", "0"),
            ("KEYMETER_WEBHOOK_ATTEMPTS", "x"),
        ] {
            let e = AlertSettings::from_source(&env(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}
