//! Pricing: exact decimal costs of usage from a model catalog.
//!
//! - [`PriceCatalog`]: models with aliases, provider-qualified names and dated price windows, from keymeter's
//!   own JSON format ([`mod@format`]), LiteLLM's price file ([`litellm`]), or the bundled snapshot
//!   ([`PriceCatalog::bundled`]).
//! - [`Usage`]: canonical, disjoint classes (tokens, and queries and images priced per unit), plus the tier and
//!   region a response names; [`normalize`] builds it from OpenAI, Anthropic and Gemini usage objects and
//!   [`stream::StreamUsage`] from their streamed events, never counting a cached token twice.
//! - [`PriceCatalog::cost`] / [`price_usage`]: the pure cost engine, one [`CostLine`] per class and an exact
//!   total. An unknown model, a class the model has no rate for, or a model priced only in units keymeter does
//!   not bill is an error, never zero.

pub mod catalog;
pub mod cost;
pub mod diff;
pub mod format;
pub mod litellm;
pub mod normalize;
pub mod rates;
pub mod stream;
#[cfg(feature = "http-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-client")))]
pub mod update;
pub mod usage;

pub use catalog::{ModelPrices, PriceCatalog};
pub use cost::{Cost, CostLine, LineKind, Terms, price_usage};
pub use diff::CatalogDiff;
pub use normalize::UsageFormat;
pub use rates::{
    Band, OffPeak, OffPeakHours, PriceWindow, Rate, Rates, Region, RegionMultipliers, ServiceTier,
    parse_decimal,
};
pub use stream::StreamUsage;
pub use usage::{TokenClass, Usage};

/// The bundled snapshot's text (keymeter's format), made by `examples/make_snapshot.rs` from LiteLLM's file.
pub const BUNDLED_SNAPSHOT: &str = include_str!("../../data/prices-snapshot.json");

impl PriceCatalog {
    /// The bundled, dated snapshot of the major providers' chat and embedding models. Its windows are open at
    /// the start (their true start is unknown); [`PriceCatalog::snapshot_date`] tells its date.
    ///
    /// Parsed on each call: keep the result.
    pub fn bundled() -> PriceCatalog {
        // The snapshot is committed data checked by the test suite; a parse failure is a build defect.
        PriceCatalog::from_json(BUNDLED_SNAPSHOT).unwrap_or_default()
    }
}
