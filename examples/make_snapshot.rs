//! Builds the bundled price snapshot from LiteLLM's price file: the current chat and embedding models of the
//! major providers, in keymeter's catalog format.
//!
//! ```sh
//! cargo run --example make_snapshot -- tests/fixtures/litellm/model_prices_and_context_window.json 2026-11-21 \
//!     > data/prices-snapshot.json
//! ```

use keymeter::pricing::PriceCatalog;
use keymeter::pricing::litellm;

/// Providers whose own APIs the snapshot covers (LiteLLM's provider names).
const PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "gemini",
    "mistral",
    "deepseek",
    "xai",
];
const MODES: &[&str] = &["chat", "responses", "embedding"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: make_snapshot LITELLM_JSON DATE")?;
    let date = args
        .next()
        .ok_or("usage: make_snapshot LITELLM_JSON DATE")?;
    let text = std::fs::read_to_string(&path)?;
    let import = litellm::import(&text)?;
    let mut models: Vec<_> = import
        .catalog
        .models()
        .iter()
        .filter(|m| PROVIDERS.contains(&&*m.provider))
        .filter(|m| m.mode.as_deref().is_some_and(|mode| MODES.contains(&mode)))
        // Fine-tuned entries price a customer's own model, not one anybody can call.
        .filter(|m| !m.id.starts_with("ft:"))
        .cloned()
        .collect();
    // The import gave `gemini/…` entries no short alias where a Vertex entry held the name; here it is free.
    litellm::add_short_aliases(&mut models);
    let mut snapshot = PriceCatalog::new(models)?;
    snapshot.snapshot_date = Some(date);
    snapshot.source = Some(format!(
        "LiteLLM model_prices_and_context_window.json ({}); providers: {}",
        path.rsplit('/').next().unwrap_or(&path),
        PROVIDERS.join(", ")
    ));
    eprintln!(
        "{} models kept of {} imported ({} entries skipped)",
        snapshot.models().len(),
        import.catalog.models().len(),
        import.skipped.len()
    );
    println!("{}", snapshot.to_json());
    Ok(())
}
