//! Pricing: exact decimal costs of token usage from a model catalog.
//!
//! - [`PriceCatalog`]: models with aliases, provider-qualified names and dated price windows, from keymeter's
//!   own JSON format, LiteLLM's price file ([`litellm`]), or the bundled snapshot ([`PriceCatalog::bundled`]).
//! - [`Usage`]: canonical, disjoint token classes; [`normalize`] builds it from OpenAI, Anthropic and Gemini usage
//!   objects without ever counting a cached token twice.
//! - [`PriceCatalog::cost`] / [`price_usage`]: the pure cost engine, one [`CostLine`] per class and an exact
//!   total. An unknown model, or tokens of a class the model has no rate for, is an error, never zero.

pub mod catalog;
pub mod cost;
pub mod litellm;
pub mod normalize;
pub mod usage;

pub use catalog::{
    Band, ModelPrices, PriceCatalog, PriceWindow, Rates, ServiceTier, parse_decimal,
};
pub use cost::{Cost, CostLine, LineKind, price_usage};
pub use normalize::UsageFormat;
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
