//! Fresh prices: LiteLLM's current price map, downloaded (feature `http-client`) and imported by the same exact
//! rules as a file.

use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::pricing::PriceCatalog;
use crate::pricing::catalog::MAX_CATALOG_BYTES;

/// LiteLLM's price map on its main branch.
pub const LITELLM_PRICES_URL: &str =
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json";

/// Downloads a price map (LiteLLM's, or a catalog in keymeter's format) from `url` and parses it, reading at
/// most [`MAX_CATALOG_BYTES`]. The catalog's `source` is the URL; its snapshot date is left to the caller.
///
/// # Errors
/// [`Error::Config`] when the request fails, the answer is not `200 OK` or is too large (the message names the
/// URL and what to do); [`Error::Catalog`] when the text does not parse.
pub async fn fetch_catalog(client: &reqwest::Client, url: &str) -> Result<PriceCatalog> {
    let failed = |why: String| {
        Error::Config(format!(
            "cannot download prices from {url}: {why}; check the address and the network, or pass --from a reachable URL"
        ))
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("the server answered {status}")));
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| failed(e.without_url().to_string()))?;
        if (body.len() + chunk.len()) as u64 > MAX_CATALOG_BYTES {
            return Err(failed(format!(
                "the answer is larger than {MAX_CATALOG_BYTES} bytes, so not a price map"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body)
        .map_err(|_| Error::Catalog(format!("the answer from {url} is not UTF-8 text")))?;
    let mut catalog = PriceCatalog::from_any_json(&text)
        .map_err(|e| Error::Catalog(format!("the answer from {url} is not a price map: {e}")))?;
    if catalog.models().is_empty() {
        return Err(Error::Catalog(format!(
            "the answer from {url} prices no model"
        )));
    }
    catalog.source = Some(url.to_owned());
    Ok(catalog)
}
