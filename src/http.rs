//! The crate's one HTTP client (feature `http-client`): reqwest over rustls with ring, the provider sqlx's TLS
//! already builds, and Mozilla's root certificates (`webpki-roots`), so no system store or C toolchain is needed.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// A client that verifies servers against Mozilla's roots, with `timeout` for a whole request.
///
/// ```
/// let client = keymeter::http::client(std::time::Duration::from_secs(30))?;
/// # drop(client);
/// # Ok::<(), keymeter::Error>(())
/// ```
///
/// # Errors
/// [`Error::Config`] when the TLS configuration or the client cannot be built.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    builder()?
        .timeout(timeout)
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// The builder behind [`client`], with its TLS roots and user agent set and no timeout, for callers that bound
/// each phase themselves (a connect timeout here, the first byte and the whole exchange around the calls).
///
/// ```
/// let client = keymeter::http::builder()?
///     .connect_timeout(std::time::Duration::from_secs(5))
///     .build()
///     .unwrap();
/// # drop(client);
/// # Ok::<(), keymeter::Error>(())
/// ```
///
/// # Errors
/// [`Error::Config`] when the TLS configuration cannot be built.
pub fn builder() -> Result<reqwest::ClientBuilder> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("keymeter/", env!("CARGO_PKG_VERSION"))))
}
