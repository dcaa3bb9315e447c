//! Catalogs the pricing tests share, each parsed once per test binary.
#![allow(dead_code)]

use std::sync::OnceLock;

use keymeter::pricing::{PriceCatalog, litellm};

/// LiteLLM 1.109.1's whole price file, imported.
pub fn litellm_catalog() -> &'static PriceCatalog {
    static CATALOG: OnceLock<PriceCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        litellm::import(include_str!(
            "../fixtures/litellm/model_prices_and_context_window.json"
        ))
        .expect("the committed fixture imports")
        .catalog
    })
}

/// The bundled snapshot.
pub fn bundled() -> &'static PriceCatalog {
    static CATALOG: OnceLock<PriceCatalog> = OnceLock::new();
    CATALOG.get_or_init(PriceCatalog::bundled)
}
