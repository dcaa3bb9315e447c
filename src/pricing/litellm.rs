//! Import of LiteLLM's `model_prices_and_context_window.json`, the price file most of the ecosystem maintains.
//!
//! Every token-priced field is read, with `_above_Nk_tokens` long-context bands and `_batches`, `_flex`,
//! `_priority` tiers; `litellm_provider` and `mode` are kept; unknown fields are ignored. Entries that are not
//! token-priced (per image, per second, per character, per query…) are reported as skipped with the reason.
//! Numbers are read from their JSON text, never through `f64`: `2.5e-06` becomes exactly `0.0000025`.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::pricing::catalog::{
    Band, ModelPrices, PriceCatalog, PriceWindow, ServiceTier, parse_decimal,
};
use crate::pricing::usage::TokenClass;

/// An entry that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's key.
    pub model: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct LiteLlmImport {
    /// The token-priced models.
    pub catalog: PriceCatalog,
    /// Everything else.
    pub skipped: Vec<Skipped>,
}

/// A JSON object's members in file order, values left as raw JSON text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(
                self,
                mut map: M,
            ) -> std::result::Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((k, v)) = map.next_entry::<String, &'a RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Where a LiteLLM price field goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Class(TokenClass),
    PerRequest,
}

/// Splits a field name into (target, band threshold, tier); `None` for fields that are not per-token prices.
fn classify(field: &str) -> Option<(Target, u64, ServiceTier)> {
    let (rest, tier) = [
        ("_batches", ServiceTier::Batch),
        ("_flex", ServiceTier::Flex),
        ("_priority", ServiceTier::Priority),
    ]
    .into_iter()
    .find_map(|(suffix, tier)| field.strip_suffix(suffix).map(|r| (r, tier)))
    .unwrap_or((field, ServiceTier::Standard));
    let (base, above) = match rest
        .strip_suffix("k_tokens")
        .and_then(|r| r.rsplit_once("_above_"))
    {
        Some((base, n)) => (base, n.parse::<u64>().ok()?.checked_mul(1000)?),
        None => (rest, 0),
    };
    let target = match base {
        "input_cost_per_token" => Target::Class(TokenClass::Input),
        "output_cost_per_token" => Target::Class(TokenClass::Output),
        "cache_read_input_token_cost" => Target::Class(TokenClass::CacheRead),
        "cache_creation_input_token_cost" => Target::Class(TokenClass::CacheWrite5m),
        "cache_creation_input_token_cost_above_1hr" => Target::Class(TokenClass::CacheWrite1h),
        "output_cost_per_reasoning_token" => Target::Class(TokenClass::Reasoning),
        "input_cost_per_audio_token" => Target::Class(TokenClass::AudioInput),
        "output_cost_per_audio_token" => Target::Class(TokenClass::AudioOutput),
        "input_cost_per_image_token" => Target::Class(TokenClass::ImageInput),
        "input_cost_per_request" if above == 0 && tier == ServiceTier::Standard => {
            Target::PerRequest
        }
        _ => return None,
    };
    Some((target, above, tier))
}

fn string_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

/// Imports LiteLLM's price file.
///
/// ```
/// let text = r#"{
///   "sample_spec": {"litellm_provider": "one of …", "input_cost_per_token": 0.0},
///   "my-model": {"litellm_provider": "openai", "mode": "chat",
///                "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
///                "input_cost_per_token_batches": 1.25e-06,
///                "input_cost_per_token_above_200k_tokens": 5e-06},
///   "dall-e": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04}
/// }"#;
/// let import = keymeter::pricing::litellm::import(text).unwrap();
/// let model = import.catalog.model("openai/my-model").unwrap();
/// let base = &model.windows[0].bands[0];
/// assert_eq!(base.rates(keymeter::pricing::ServiceTier::Standard)
///     .get(keymeter::pricing::TokenClass::Input).unwrap().to_string(), "0.0000025");
/// assert_eq!(model.windows[0].bands[1].above_tokens, 200_000);
/// assert_eq!(import.skipped.len(), 2);
/// ```
///
/// # Errors
/// [`Error::Catalog`] when the text is not a JSON object.
pub fn import(text: &str) -> Result<LiteLlmImport> {
    let entries: Members =
        serde_json::from_str(text).map_err(|e| Error::Catalog(format!("LiteLLM file: {e}")))?;
    let mut models = Vec::with_capacity(entries.0.len());
    let mut skipped = Vec::new();
    let mut providers: std::collections::HashMap<String, Arc<str>> =
        std::collections::HashMap::new();
    let usd: Arc<str> = Arc::from("USD");
    for (name, raw) in entries.0 {
        let skip = |reason: String| Skipped {
            model: name.clone(),
            reason,
        };
        if name == "sample_spec" {
            skipped.push(skip("the file's field documentation, not a model".into()));
            continue;
        }
        let Ok(fields) = serde_json::from_str::<Members>(raw.get()) else {
            skipped.push(skip("not an object".into()));
            continue;
        };
        let mut provider = None;
        let mut mode = None;
        let mut base = Band::default();
        let mut bands: Vec<Band> = Vec::new();
        let mut per_request = None;
        let mut other_prices = Vec::new();
        let mut bad = None;
        for (field, value) in &fields.0 {
            match field.as_str() {
                "litellm_provider" => provider = string_of(value),
                "mode" => mode = string_of(value),
                _ => match classify(field) {
                    Some((target, above, tier)) => {
                        if value.get() == "null" {
                            continue;
                        }
                        let Some(rate) =
                            parse_decimal(value.get()).filter(|r| !r.is_sign_negative())
                        else {
                            bad = Some(field.clone());
                            break;
                        };
                        let band = if above == 0 {
                            &mut base
                        } else if let Some(i) = bands.iter().position(|b| b.above_tokens == above) {
                            &mut bands[i]
                        } else {
                            bands.push(Band {
                                above_tokens: above,
                                ..Band::default()
                            });
                            bands.last_mut().expect("just pushed")
                        };
                        match target {
                            Target::Class(class) => band.rates_mut(tier).set(class, rate),
                            Target::PerRequest => per_request = Some(rate),
                        }
                    }
                    None if field.contains("cost") => other_prices.push(field.as_str()),
                    None => {}
                },
            }
        }
        if let Some(field) = bad {
            skipped.push(skip(format!("invalid price in {field}")));
            continue;
        }
        let Some(provider) = provider else {
            skipped.push(skip("no litellm_provider".into()));
            continue;
        };
        let standard = base.rates(ServiceTier::Standard);
        if standard.get(TokenClass::Input).is_none() && standard.get(TokenClass::Output).is_none() {
            let reason = if other_prices.is_empty() {
                "no prices".to_owned()
            } else {
                other_prices.truncate(3);
                format!("not token-priced ({})", other_prices.join(", "))
            };
            skipped.push(skip(reason));
            continue;
        }
        let provider = providers
            .entry(provider.clone())
            .or_insert_with(|| Arc::from(provider))
            .clone();
        let mut all = Vec::with_capacity(1 + bands.len());
        all.push(base);
        all.extend(bands);
        models.push(ModelPrices {
            id: Arc::from(name),
            provider,
            mode,
            currency: usd.clone(),
            aliases: Vec::new(),
            windows: vec![PriceWindow {
                effective_from: None,
                effective_until: None,
                per_request,
                bands: all,
            }],
        });
    }
    add_short_aliases(&mut models);
    let mut catalog = PriceCatalog::new(models)?;
    catalog.source = Some("LiteLLM model_prices_and_context_window.json".into());
    Ok(LiteLlmImport { catalog, skipped })
}

/// Gives `provider/name` entries (LiteLLM's `gemini/gemini-2.5-pro`) the alias `name` where no entry is called
/// that, so callers can use the name the provider's own API uses.
pub fn add_short_aliases(models: &mut [ModelPrices]) {
    let taken: std::collections::HashSet<String> = models
        .iter()
        .flat_map(|m| std::iter::once(m.id.to_string()).chain(m.aliases.iter().cloned()))
        .collect();
    let mut claimed = std::collections::HashSet::new();
    for m in models.iter_mut() {
        if let Some((prefix, short)) = m.id.split_once('/')
            && prefix == &*m.provider
            && !taken.contains(short)
            && claimed.insert(short.to_owned())
        {
            m.aliases.push(short.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names() {
        use ServiceTier::*;
        use TokenClass::*;
        let c = |f| classify(f);
        assert_eq!(
            c("input_cost_per_token"),
            Some((Target::Class(Input), 0, Standard))
        );
        assert_eq!(
            c("input_cost_per_token_above_200k_tokens_priority"),
            Some((Target::Class(Input), 200_000, Priority))
        );
        assert_eq!(
            c("cache_creation_input_token_cost_above_1hr"),
            Some((Target::Class(CacheWrite1h), 0, Standard))
        );
        assert_eq!(
            c("cache_creation_input_token_cost_above_1hr_above_200k_tokens"),
            Some((Target::Class(CacheWrite1h), 200_000, Standard))
        );
        assert_eq!(
            c("output_cost_per_token_batches"),
            Some((Target::Class(Output), 0, Batch))
        );
        assert_eq!(
            c("cache_read_input_token_cost_flex"),
            Some((Target::Class(CacheRead), 0, Flex))
        );
        assert_eq!(
            c("input_cost_per_request"),
            Some((Target::PerRequest, 0, Standard))
        );
        for ignored in [
            "output_cost_per_image",
            "input_cost_per_second",
            "input_cost_per_token_ultrafast",
            "cache_creation_input_token_cost_above_12hr",
            "input_cost_per_token_above_xk_tokens",
        ] {
            assert_eq!(c(ignored), None, "{ignored}");
        }
    }
}
