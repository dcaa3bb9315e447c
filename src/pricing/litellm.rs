//! Import of LiteLLM's `model_prices_and_context_window.json`, the price file most of the ecosystem maintains.
//!
//! Read: every per-token price (input, cache read, 5-minute / 1-hour / 12-hour cache writes, output, reasoning,
//! audio in / cached audio / audio out, image in / image out), `_above_Nk_tokens` long-context bands,
//! `tiered_pricing` ranges (as bands), `_batches` / `_flex` / `_priority` tiers, `off_peak_pricing`, per-request
//! fees, web-search (`search_context_cost_per_query`, at the default `medium` context size), Google Maps
//! grounding and per-image output prices, and regional uplifts (`provider_specific_entry: {"us": …}`,
//! `regional_processing_uplift_multiplier_us/_eu`, `regional_endpoint_uplift_multiplier`); `litellm_provider` and
//! `mode` are kept. Prices in units keymeter does not bill (per second, character, pixel, page, query of a
//! reranker, input image…) are kept by name as the window's `unbilled_units`, so a usage of an entry priced only
//! in them is refused (`UNPRICED_UNIT`) rather than priced at zero. Other tiers (`_ultrafast`, …) and unknown
//! fields are ignored. Entries without any price are skipped, with the reason.
//!
//! Numbers are read from their JSON text, never through `f64`: `2.5e-06` becomes exactly `0.0000025`. One
//! exception, for the file's float noise: a number written with 16 or 17 significant digits
//! (`1.0000000000000001e-07`, `2.9999900000000002e-06`, artefacts of float arithmetic in the file's generator) is
//! rounded to 15 significant digits (`1e-07`, `2.99999e-06`); every other text is kept exactly.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use rust_decimal::Decimal;

use crate::pricing::catalog::{ModelPrices, PriceCatalog};
use crate::pricing::format::{HoursFile, weekday_zone};
use crate::pricing::rates::{
    Band, OffPeak, PriceWindow, Rate, RegionMultipliers, ServiceTier, parse_decimal,
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

/// Splits a field name into (target, band threshold, tier); `None` for fields that are not prices keymeter bills.
fn classify(field: &str) -> Option<(Target, u64, ServiceTier)> {
    let (rest, tier) = [
        ("_batches", ServiceTier::Batch),
        ("_flex", ServiceTier::Flex),
        ("_priority", ServiceTier::Priority),
    ]
    .into_iter()
    .find_map(|(suffix, tier)| field.strip_suffix(suffix).map(|r| (r, tier)))
    .unwrap_or((field, ServiceTier::Standard));
    let (base, above) = split_band(rest)?;
    let target = match base {
        "input_cost_per_token" => Target::Class(TokenClass::Input),
        "output_cost_per_token" => Target::Class(TokenClass::Output),
        "cache_read_input_token_cost" => Target::Class(TokenClass::CacheRead),
        "cache_creation_input_token_cost" => Target::Class(TokenClass::CacheWrite5m),
        "cache_creation_input_token_cost_above_1hr" => Target::Class(TokenClass::CacheWrite1h),
        "cache_creation_input_token_cost_above_12hr" => Target::Class(TokenClass::CacheWrite12h),
        "output_cost_per_reasoning_token" => Target::Class(TokenClass::Reasoning),
        "input_cost_per_audio_token" => Target::Class(TokenClass::AudioInput),
        "cache_read_input_audio_token_cost" => Target::Class(TokenClass::CacheReadAudio),
        "output_cost_per_audio_token" => Target::Class(TokenClass::AudioOutput),
        "input_cost_per_image_token" => Target::Class(TokenClass::ImageInput),
        "output_cost_per_image_token" => Target::Class(TokenClass::ImageOutput),
        "output_cost_per_image" => Target::Class(TokenClass::Images),
        "search_context_cost_per_query" => Target::Class(TokenClass::WebSearch),
        "google_maps_grounding_cost_per_query" => Target::Class(TokenClass::MapsGrounding),
        "input_cost_per_request" if above == 0 && tier == ServiceTier::Standard => {
            Target::PerRequest
        }
        _ => return None,
    };
    Some((target, above, tier))
}

/// `name_above_200k_tokens` → (`name`, 200000); a name without a band → (name, 0); `None` for a malformed band.
fn split_band(field: &str) -> Option<(&str, u64)> {
    match field
        .strip_suffix("k_tokens")
        .and_then(|r| r.rsplit_once("_above_"))
    {
        Some((base, n)) => Some((base, n.parse::<u64>().ok()?.checked_mul(1000)?)),
        None => Some((field, 0)),
    }
}

/// Whether a field is a price in a unit keymeter does not bill (per second, character, pixel, page, image
/// input…): a `cost` field that is not per token and not one keymeter reads.
fn is_other_unit(field: &str) -> bool {
    let base = split_band(field).map_or(field, |(b, _)| b);
    base.contains("cost") && !base.contains("token") && classify(field).is_none()
}

fn string_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

/// Reads a price from a JSON number's (or string's) text, rounding float noise (16–17 significant digits) to
/// 15 significant digits.
pub fn parse_price(text: &str) -> Option<Decimal> {
    let text = text.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let value = parse_decimal(text)?;
    if value.is_sign_negative() {
        return None;
    }
    let digits = value
        .mantissa()
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d + 1);
    if (16..=17).contains(&digits) {
        return Some(value.round_sf(15)?.normalize());
    }
    Some(value)
}

/// A web-search price: LiteLLM writes it per context size; keymeter bills the default size, `medium`.
fn search_price(raw: &RawValue) -> Option<Decimal> {
    let sizes: Members = serde_json::from_str(raw.get()).ok()?;
    [
        "search_context_size_medium",
        "search_context_size_high",
        "search_context_size_low",
    ]
    .iter()
    .find_map(|want| sizes.0.iter().find(|(k, _)| k == want))
    .and_then(|(_, v)| parse_price(v.get()))
}

/// Whether a JSON value holds a price that is not zero (a number, or an object or list of them).
fn is_nonzero_price(raw: &RawValue) -> bool {
    match parse_price(raw.get()) {
        Some(v) => !v.is_zero(),
        None => {
            let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
            fn any(v: &serde_json::Value) -> bool {
                match v {
                    serde_json::Value::Number(n) => {
                        parse_price(&n.to_string()).is_some_and(|d| !d.is_zero())
                    }
                    serde_json::Value::Object(m) => m.values().any(any),
                    serde_json::Value::Array(a) => a.iter().any(any),
                    _ => false,
                }
            }
            any(&v)
        }
    }
}

/// One entry's prices as they are read.
#[derive(Default)]
struct Reading {
    bands: Vec<Band>,
    per_request: Option<Decimal>,
    off_peak: Option<Box<OffPeak>>,
    regions: RegionMultipliers,
    unbilled: Vec<String>,
}

impl Reading {
    fn band(&mut self, above: u64) -> &mut Band {
        match self.bands.iter().position(|b| b.above_tokens == above) {
            Some(i) => &mut self.bands[i],
            None => {
                self.bands.push(Band {
                    above_tokens: above,
                    ..Band::default()
                });
                let last = self.bands.len() - 1;
                &mut self.bands[last]
            }
        }
    }

    /// Reads one price field into `band_floor` + its own band; `Err` names a field whose value is not a price.
    fn price(
        &mut self,
        field: &str,
        value: &RawValue,
        band_floor: u64,
    ) -> std::result::Result<bool, String> {
        let Some((target, above, tier)) = classify(field) else {
            return Ok(false);
        };
        if value.get() == "null" {
            return Ok(true);
        }
        let rate = if target == Target::Class(TokenClass::WebSearch) {
            search_price(value)
        } else {
            parse_price(value.get())
        }
        .ok_or_else(|| field.to_owned())?;
        match target {
            Target::Class(class) => self
                .band(band_floor.max(above))
                .rates_mut(tier)
                .set(class, rate),
            Target::PerRequest => self.per_request = Some(rate),
        }
        Ok(true)
    }

    fn tiered(&mut self, raw: &RawValue) -> std::result::Result<(), String> {
        let ranges: Vec<Members> =
            serde_json::from_str(raw.get()).map_err(|_| "tiered_pricing".to_owned())?;
        for range in ranges {
            let Some((_, bounds)) = range.0.iter().find(|(k, _)| k == "range") else {
                // Ranges of something other than prompt tokens (search results per query): not billed.
                for (k, v) in &range.0 {
                    if k.contains("cost") && is_nonzero_price(v) {
                        self.note_unbilled(format!("tiered_pricing {k}"));
                    }
                }
                continue;
            };
            let bounds: Vec<&RawValue> = serde_json::from_str(bounds.get())
                .map_err(|_| "tiered_pricing range".to_owned())?;
            let lo = bounds
                .first()
                .and_then(|b| parse_decimal(b.get()))
                .filter(|d| d.fract().is_zero() && !d.is_sign_negative())
                .and_then(|d| u64::try_from(d).ok())
                .ok_or_else(|| "tiered_pricing range".to_owned())?;
            for (field, value) in &range.0 {
                if field != "range" && self.price(field, value, lo)? {
                    self.band(lo);
                }
            }
        }
        Ok(())
    }

    fn off_peak(&mut self, raw: &RawValue) -> std::result::Result<(), String> {
        let bad = |what: &str| format!("off_peak_pricing ({what})");
        let fields: Members = serde_json::from_str(raw.get()).map_err(|_| bad("not an object"))?;
        let mut off = OffPeak::default();
        for (field, value) in &fields.0 {
            match field.as_str() {
                "windows" => {
                    let windows: Vec<HoursFile> =
                        serde_json::from_str(value.get()).map_err(|e| bad(&e.to_string()))?;
                    for w in windows {
                        off.hours.push(w.into_hours().map_err(|e| bad(&e))?);
                    }
                }
                "weekday_timezone" => {
                    let name = string_of(value).ok_or_else(|| bad("weekday_timezone"))?;
                    off.weekday_zone = Some(weekday_zone(&name).map_err(|e| bad(&e))?);
                }
                _ => match classify(field) {
                    Some((Target::Class(class), 0, ServiceTier::Standard)) => {
                        let rate = parse_price(value.get()).ok_or_else(|| bad(field))?;
                        off.rates.set(class, rate);
                    }
                    _ => return Err(bad(field)),
                },
            }
        }
        if off.rates.is_empty() || off.hours.is_empty() {
            return Err(bad("needs rates and windows"));
        }
        self.off_peak = Some(Box::new(off));
        Ok(())
    }

    fn region(&mut self, field: &str, value: &RawValue) -> std::result::Result<(), String> {
        let multiplier = |v: &RawValue| {
            parse_price(v.get())
                .map(Rate)
                .ok_or_else(|| field.to_owned())
        };
        match field {
            "regional_processing_uplift_multiplier_us" => {
                self.regions.us = Some(multiplier(value)?)
            }
            "regional_processing_uplift_multiplier_eu" => {
                self.regions.eu = Some(multiplier(value)?)
            }
            "regional_endpoint_uplift_multiplier" => {
                self.regions.regional = Some(multiplier(value)?)
            }
            _ => {
                // provider_specific_entry: {"us": 1.1, "fast": 2.0, …}; only the regions are prices here.
                if let Ok(entries) = serde_json::from_str::<Members>(value.get()) {
                    for (k, v) in &entries.0 {
                        match k.as_str() {
                            "us" => self.regions.us = Some(multiplier(v)?),
                            "eu" => self.regions.eu = Some(multiplier(v)?),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn note_unbilled(&mut self, field: String) {
        if !self.unbilled.contains(&field) {
            self.unbilled.push(field);
        }
    }

    fn into_window(mut self) -> Option<PriceWindow> {
        // Bands are made on demand; the base band must exist (it may be empty when every price is banded).
        self.band(0);
        self.bands.sort_by_key(|b| b.above_tokens);
        let window = PriceWindow {
            effective_from: None,
            effective_until: None,
            per_request: self.per_request,
            bands: self.bands,
            off_peak: self.off_peak,
            regions: self.regions,
            unbilled_units: self.unbilled,
        };
        window.has_prices().then_some(window)
    }
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
///   "whisper": {"litellm_provider": "openai", "mode": "audio_transcription", "input_cost_per_second": 0.0001},
///   "empty": {"litellm_provider": "openai", "mode": "chat"}
/// }"#;
/// let import = keymeter::pricing::litellm::import(text).unwrap();
/// let model = import.catalog.model("openai/my-model").unwrap();
/// let base = &model.windows[0].bands[0];
/// assert_eq!(base.rates(keymeter::pricing::ServiceTier::Standard)
///     .get(keymeter::pricing::TokenClass::Input).unwrap().to_string(), "0.0000025");
/// assert_eq!(model.windows[0].bands[1].above_tokens, 200_000);
/// // Priced per second: kept, so that a usage of it is refused rather than priced at zero.
/// assert_eq!(import.catalog.model("whisper").unwrap().windows[0].unbilled_units, ["input_cost_per_second"]);
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
        let mut reading = Reading::default();
        let mut bad = None;
        for (field, value) in &fields.0 {
            let read = match field.as_str() {
                "litellm_provider" => {
                    provider = string_of(value);
                    Ok(())
                }
                "mode" => {
                    mode = string_of(value);
                    Ok(())
                }
                "tiered_pricing" => reading.tiered(value),
                "off_peak_pricing" => reading.off_peak(value),
                "provider_specific_entry"
                | "regional_processing_uplift_multiplier_us"
                | "regional_processing_uplift_multiplier_eu"
                | "regional_endpoint_uplift_multiplier" => reading.region(field, value),
                _ => match reading.price(field, value, 0) {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        if is_other_unit(field) && is_nonzero_price(value) {
                            reading.note_unbilled(field.clone());
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(field) = read {
                bad = Some(field);
                break;
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
        let Some(window) = reading.into_window() else {
            skipped.push(skip("no prices".into()));
            continue;
        };
        let provider = providers
            .entry(provider.clone())
            .or_insert_with(|| Arc::from(provider))
            .clone();
        models.push(ModelPrices {
            id: Arc::from(name),
            provider,
            mode,
            currency: usd.clone(),
            aliases: Vec::new(),
            windows: vec![window],
        });
    }
    add_short_aliases(&mut models);
    let mut catalog = PriceCatalog::new(models)?;
    catalog.source = Some("LiteLLM model_prices_and_context_window.json".into());
    Ok(LiteLlmImport { catalog, skipped })
}

/// Gives `provider/name` entries (LiteLLM's `gemini/gemini-2.5-pro`) the alias `name` where no entry is called
/// that (as an id or as `provider/id`), so callers can use the name the provider's own API uses.
pub fn add_short_aliases(models: &mut [ModelPrices]) {
    let taken: std::collections::HashSet<String> = models
        .iter()
        .flat_map(|m| {
            std::iter::once(m.id.to_string())
                .chain(std::iter::once(format!("{}/{}", m.provider, m.id)))
                .chain(m.aliases.iter().cloned())
        })
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
        assert_eq!(
            c("cache_creation_input_token_cost_above_12hr_above_272k_tokens_flex"),
            Some((Target::Class(CacheWrite12h), 272_000, Flex))
        );
        assert_eq!(
            c("output_cost_per_image"),
            Some((Target::Class(Images), 0, Standard))
        );
        for ignored in [
            "input_cost_per_second",
            "input_cost_per_token_ultrafast",
            "input_cost_per_token_above_xk_tokens",
        ] {
            assert_eq!(c(ignored), None, "{ignored}");
        }
    }
}

#[cfg(test)]
mod noise {
    use super::*;

    #[test]
    fn float_noise_is_rounded_and_nothing_else() {
        let p = |t: &str| parse_price(t).unwrap().to_string();
        assert_eq!(p("1.0000000000000001e-07"), "0.0000001");
        assert_eq!(p("2.9999900000000002e-06"), "0.00000299999");
        assert_eq!(p("0.30000000000000004"), "0.3");
        // 15 significant digits and fewer, or 18 and more, are kept exactly.
        assert_eq!(p("1.23456789012345e-06"), "0.00000123456789012345");
        assert_eq!(p("1.23456789012345678e-06"), "0.00000123456789012345678");
        assert_eq!(p("2.5e-06"), "0.0000025");
        assert!(parse_price("-1").is_none());
    }

    #[test]
    fn units_keymeter_does_not_bill() {
        for f in [
            "input_cost_per_second",
            "input_cost_per_pixel",
            "output_cost_per_second_720p",
            "input_cost_per_image_above_128k_tokens",
            "ocr_cost_per_page",
            "input_cost_per_query",
        ] {
            assert!(is_other_unit(f), "{f}");
        }
        for f in [
            "input_cost_per_token",
            "input_cost_per_token_ultrafast",
            "output_cost_per_image",
            "input_dbu_cost_per_token",
            "max_tokens",
            "search_context_cost_per_query",
        ] {
            assert!(!is_other_unit(f), "{f}");
        }
    }
}
