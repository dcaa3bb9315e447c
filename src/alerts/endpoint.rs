//! Webhook endpoints: where alerts go, which kinds, and the signing secrets (sealed at rest by the vault; more
//! than one while a rotation's grace runs).

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::AlertKind;
use crate::credentials::{SealedCredential, Vault};
use crate::error::{Error, Result};
use crate::random::{RandomSource, fill_base62};

/// The longest endpoint URL accepted.
const MAX_URL_LEN: usize = 2048;

/// A webhook endpoint as stored. Its secrets are sealed; [`Endpoint::signing_secrets`] opens the live ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `whk_` and 20 base62 characters.
    pub id: String,
    /// Where deliveries are posted.
    pub url: String,
    /// The kinds it receives; empty: every kind.
    pub events: Vec<AlertKind>,
    /// Its signing secrets, newest first.
    pub secrets: Vec<EndpointSecret>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

/// One signing secret of an endpoint, sealed (the vault's text form), valid until `expires_at` when a rotation
/// replaced it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSecret {
    /// The sealed secret (`key_id:nonce:ciphertext`, base64).
    pub sealed: String,
    /// When a rotation's grace ends for it; `None` for the current secret.
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSecret")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A new endpoint and its secret in plaintext, to show once.
#[derive(Debug)]
pub struct NewEndpoint {
    /// The endpoint to store.
    pub endpoint: Endpoint,
    /// Its signing secret (`whsec_…`).
    pub secret: SecretString,
}

/// What a secret is bound to in the vault: the endpoint's id.
fn context(endpoint_id: &str) -> Vec<u8> {
    let mut c = b"webhook\0".to_vec();
    c.extend_from_slice(endpoint_id.as_bytes());
    c
}

fn random_text(random: &dyn RandomSource, prefix: &str, len: usize) -> Result<String> {
    let mut buf = vec![0u8; len];
    fill_base62(random, &mut buf)?;
    Ok(format!(
        "{prefix}{}",
        buf.iter().map(|&b| char::from(b)).collect::<String>()
    ))
}

/// Checks an endpoint URL: `https://` with a host, no credentials in it, at most 2,048 characters; `http://` only
/// to a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`) and only when `development` is true.
///
/// ```
/// use keymeter::alerts::check_url;
/// assert!(check_url("https://hooks.example.com/keymeter", false).is_ok());
/// assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
/// assert!(check_url("http://127.0.0.1:9000/hook", false).is_err());
/// assert!(check_url("http://hooks.example.com/", true).is_err());
/// assert!(check_url("https://user:pw@hooks.example.com/", false).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] naming what is wrong.
pub fn check_url(url: &str, development: bool) -> Result<()> {
    let bad = |reason: &str| Err(Error::invalid("webhook url", reason.to_string()));
    if url.len() > MAX_URL_LEN {
        return bad("longer than 2048 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains spaces or control characters");
    }
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return bad("must start with https://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("must not carry credentials");
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, _)) => h,
            None => return bad("has an unclosed IPv6 address"),
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return bad("has no host");
    }
    if !https {
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !(development && loopback) {
            return bad("must be https:// (http:// only to a loopback host in development)");
        }
    }
    Ok(())
}

impl Endpoint {
    /// A new endpoint for `url` receiving `events` (empty: all), with a fresh secret sealed by `vault`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a URL [`check_url`] refuses; [`Error::Random`].
    pub fn create(
        url: &str,
        events: Vec<AlertKind>,
        vault: &Vault,
        random: &dyn RandomSource,
        now: DateTime<Utc>,
        development: bool,
    ) -> Result<NewEndpoint> {
        check_url(url, development)?;
        let mut events = events;
        events.sort();
        events.dedup();
        let id = random_text(random, "whk_", 20)?;
        let secret = SecretString::from(random_text(random, "whsec_", 32)?);
        let sealed = vault.seal_for(&context(&id), secret.expose_secret())?;
        Ok(NewEndpoint {
            endpoint: Endpoint {
                id,
                url: url.to_string(),
                events,
                secrets: vec![EndpointSecret {
                    sealed: sealed.to_text(),
                    expires_at: None,
                }],
                created_at: now,
            },
            secret,
        })
    }

    /// Whether it receives alerts of `kind`.
    pub fn receives(&self, kind: AlertKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// A new current secret; the old ones stay valid for `grace` (zero: they stop at once) and those already
    /// past their grace are dropped. Returns the new secret in plaintext, to show once.
    ///
    /// # Errors
    /// [`Error::Random`].
    pub fn rotate(
        &mut self,
        vault: &Vault,
        random: &dyn RandomSource,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<SecretString> {
        let secret = SecretString::from(random_text(random, "whsec_", 32)?);
        let sealed = vault.seal_for(&context(&self.id), secret.expose_secret())?;
        let until = now + grace;
        let mut secrets = vec![EndpointSecret {
            sealed: sealed.to_text(),
            expires_at: None,
        }];
        if grace > Duration::zero() {
            secrets.extend(self.secrets.drain(..).filter_map(|mut s| {
                let expires = s.expires_at.map_or(until, |e| e.min(until));
                (expires > now).then(|| {
                    s.expires_at = Some(expires);
                    s
                })
            }));
        }
        self.secrets = secrets;
        Ok(secret)
    }

    /// The secrets a delivery at `now` is signed with: the current one and those still in a rotation's grace.
    ///
    /// # Errors
    /// [`Error::Vault`] when a stored secret does not parse or open (another master key, tampered data).
    pub fn signing_secrets(&self, vault: &Vault, now: DateTime<Utc>) -> Result<Vec<SecretString>> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|e| e > now))
            .map(|s| {
                let sealed: SealedCredential = s.sealed.parse()?;
                Ok(vault.open_for(&context(&self.id), &sealed)?)
            })
            .collect()
    }

    /// The fields shown by `webhooks list` and the admin API: never a secret, sealed or not.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "created_at": self.created_at,
            "secrets": self.secrets.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{MasterKey, MasterKeyRing};
    use crate::random::OsRandom;

    fn vault() -> Vault {
        Vault::new(MasterKeyRing::new(vec![MasterKey::generate("k1", &OsRandom).unwrap()]).unwrap())
    }

    #[test]
    fn urls_are_https_or_loopback_in_development() {
        for ok in [
            "https://a.example/x",
            "https://a.example:8443",
            "https://[2001:db8::1]/h",
        ] {
            check_url(ok, false).unwrap();
        }
        for (url, dev) in [
            ("http://localhost:1/h", true),
            ("http://127.0.0.2/h", true),
            ("http://[::1]:9/h", true),
        ] {
            check_url(url, dev).unwrap();
        }
        for (url, dev) in [
            ("ftp://a.example", true),
            ("https://", false),
            ("https://a b", false),
            ("http://localhost/h", false),
            ("http://10.0.0.1/h", true),
            ("http://127.0.0.1.evil.example/h", true),
            ("https://u@a.example", false),
            ("https://[::1", false),
        ] {
            assert!(check_url(url, dev).is_err(), "{url}");
        }
        assert!(check_url(&format!("https://a.example/{}", "x".repeat(2100)), false).is_err());
    }

    #[test]
    fn secrets_are_sealed_and_rotation_keeps_the_old_one_for_its_grace() {
        let vault = vault();
        let now: DateTime<Utc> = "2026-12-03T00:00:00Z".parse().unwrap();
        let new = Endpoint::create(
            "https://h.example/x",
            vec![AlertKind::KeyLeaked],
            &vault,
            &OsRandom,
            now,
            false,
        )
        .unwrap();
        let mut endpoint = new.endpoint;
        let first = new.secret.expose_secret().to_string();
        assert!(first.starts_with("whsec_") && first.len() == 38);
        assert!(!endpoint.secrets[0].sealed.contains(&first));
        assert!(!format!("{endpoint:?}").contains(&endpoint.secrets[0].sealed));
        assert!(
            endpoint.receives(AlertKind::KeyLeaked) && !endpoint.receives(AlertKind::WebhookTest)
        );
        let open = |e: &Endpoint, at| {
            e.signing_secrets(&vault, at)
                .unwrap()
                .iter()
                .map(|s| s.expose_secret().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(open(&endpoint, now), std::slice::from_ref(&first));
        let second = endpoint
            .rotate(&vault, &OsRandom, now, Duration::hours(1))
            .unwrap();
        let second = second.expose_secret().to_string();
        assert_eq!(open(&endpoint, now), [second.clone(), first.clone()]);
        assert_eq!(
            open(&endpoint, now + Duration::hours(2)),
            std::slice::from_ref(&second)
        );
        let third = endpoint
            .rotate(&vault, &OsRandom, now, Duration::zero())
            .unwrap();
        assert_eq!(open(&endpoint, now), [third.expose_secret().to_string()]);
        // Another endpoint's id does not open it.
        let mut moved = endpoint.clone();
        moved.id = "whk_other".into();
        assert!(moved.signing_secrets(&vault, now).is_err());
    }
}
