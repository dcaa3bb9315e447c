//! The price catalog: models (with aliases and provider-qualified names) and their price windows.
//!
//! A name resolves in this order: an exact model id; `provider/id` of a model whose id has no `/`; an alias. An
//! alias two models share is an error naming both ([`Error::AmbiguousModel`]); names match exactly first, then
//! case-insensitively. The file format is described in [`mod@crate::pricing::format`].

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};
pub use crate::pricing::rates::{
    Band, OffPeak, OffPeakHours, PriceWindow, Rate, Rates, Region, RegionMultipliers, ServiceTier,
    parse_decimal,
};

/// The format tag of keymeter's own catalog files.
pub const FORMAT: &str = crate::pricing::format::FORMAT;

/// The largest catalog file [`PriceCatalog::from_path`] reads: 64 MiB (LiteLLM's whole file is about 1.5 MB).
pub const MAX_CATALOG_BYTES: u64 = 64 * 1024 * 1024;

/// A model and its price windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrices {
    /// The model id, for example `gpt-4o`.
    pub id: Arc<str>,
    /// The provider, for example `openai`.
    pub provider: Arc<str>,
    /// The mode (`chat`, `embedding`, …), if known.
    pub mode: Option<String>,
    /// ISO 4217 currency of the prices.
    pub currency: Arc<str>,
    /// Other names that resolve to this model.
    pub aliases: Vec<String>,
    /// Price windows, sorted by start.
    pub windows: Vec<PriceWindow>,
}

/// Serialises as one model of keymeter's catalog format.
impl Serialize for ModelPrices {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::pricing::format::ModelFile::from_model(self).serialize(s)
    }
}

impl ModelPrices {
    /// The window in force at `at`.
    pub fn window_at(&self, at: DateTime<Utc>) -> Option<&PriceWindow> {
        self.windows.iter().find(|w| w.contains(at))
    }
}

/// What a name in the index stands for, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameKind {
    Id,
    Qualified,
    Alias,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: NameKind,
    model: usize,
    // Other models sharing the name: only ever an alias, and then the name is ambiguous.
    others: Vec<usize>,
}

/// A set of model prices, looked up by id, `provider/id` or alias.
#[derive(Debug, Clone, Default)]
pub struct PriceCatalog {
    models: Vec<ModelPrices>,
    index: HashMap<String, Entry>,
    /// The date of the snapshot the prices were taken from, if known.
    pub snapshot_date: Option<String>,
    /// Where the prices came from.
    pub source: Option<String>,
}

impl PartialEq for PriceCatalog {
    fn eq(&self, other: &Self) -> bool {
        self.models == other.models
            && self.snapshot_date == other.snapshot_date
            && self.source == other.source
    }
}

impl PriceCatalog {
    /// A catalog of `models`.
    ///
    /// # Errors
    /// [`Error::Catalog`] when a model has no window, overlapping windows, or no prices at all, or when two models
    /// have the same id.
    pub fn new(mut models: Vec<ModelPrices>) -> Result<Self> {
        for m in &mut models {
            validate(m)?;
        }
        let mut index: HashMap<String, Entry> = HashMap::with_capacity(models.len() * 3);
        let mut add = |name: String, kind: NameKind, i: usize| -> Result<()> {
            match index.get_mut(&name) {
                None => {
                    index.insert(
                        name,
                        Entry {
                            kind,
                            model: i,
                            others: Vec::new(),
                        },
                    );
                }
                Some(e) if e.kind == NameKind::Id && kind == NameKind::Id => {
                    return Err(Error::Catalog(format!("model {name:?} is listed twice")));
                }
                // A stronger kind of name replaces a weaker one; a weaker one is ignored.
                Some(e) if kind < e.kind => {
                    *e = Entry {
                        kind,
                        model: i,
                        others: Vec::new(),
                    }
                }
                Some(e) if kind == NameKind::Alias && e.kind == NameKind::Alias => {
                    if e.model != i && !e.others.contains(&i) {
                        e.others.push(i);
                    }
                }
                Some(_) => {}
            }
            Ok(())
        };
        for (i, m) in models.iter().enumerate() {
            add(m.id.to_string(), NameKind::Id, i)?;
            if !m.id.contains('/') {
                add(format!("{}/{}", m.provider, m.id), NameKind::Qualified, i)?;
            }
            for alias in &m.aliases {
                add(alias.clone(), NameKind::Alias, i)?;
            }
        }
        Ok(PriceCatalog {
            models,
            index,
            snapshot_date: None,
            source: None,
        })
    }

    /// The models, in catalog order.
    pub fn models(&self) -> &[ModelPrices] {
        &self.models
    }

    /// The model named `name` (see the module docs for the order), or `None` when unknown or ambiguous.
    pub fn model(&self, name: &str) -> Option<&ModelPrices> {
        self.resolve(name).ok()
    }

    /// The model named `name`: an exact id, then `provider/id`, then an alias; exact first, then
    /// case-insensitively.
    ///
    /// ```
    /// let catalog = keymeter::pricing::PriceCatalog::bundled();
    /// assert_eq!(&*catalog.resolve("openai/gpt-4o").unwrap().id, "gpt-4o");
    /// assert!(catalog.resolve("gpt-17").is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownModel`]; [`Error::AmbiguousModel`] for an alias of several models.
    pub fn resolve(&self, name: &str) -> Result<&ModelPrices> {
        let entry = match self.index.get(name) {
            Some(e) => Some(e),
            None => self.index.get(name.trim().to_ascii_lowercase().as_str()),
        };
        match entry {
            Some(e) if e.others.is_empty() => Ok(&self.models[e.model]),
            Some(e) => Err(Error::AmbiguousModel {
                model: name.chars().take(200).collect(),
                candidates: std::iter::once(e.model)
                    .chain(e.others.iter().copied())
                    .map(|i| self.models[i].id.to_string())
                    .collect(),
            }),
            None => Err(Error::UnknownModel {
                model: name.chars().take(200).collect(),
            }),
        }
    }

    /// The model named `name` and its window in force at `at`.
    ///
    /// # Errors
    /// As [`PriceCatalog::resolve`]; [`Error::NoPrice`] when no window covers `at`.
    pub fn price_at(&self, name: &str, at: DateTime<Utc>) -> Result<(&ModelPrices, &PriceWindow)> {
        let model = self.resolve(name)?;
        let window = model.window_at(at).ok_or_else(|| Error::NoPrice {
            model: model.id.to_string(),
            at,
        })?;
        Ok((model, window))
    }

    /// Reads a catalog file of either format ([`PriceCatalog::from_any_json`]), refusing a file over
    /// [`MAX_CATALOG_BYTES`] before reading it whole (a catalog path that is a pipe or a device cannot hang or
    /// exhaust memory).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or is too large; [`Error::Catalog`] when it does not parse.
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut bytes = Vec::new();
        file.take(MAX_CATALOG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        if bytes.len() as u64 > MAX_CATALOG_BYTES {
            return Err(Error::Config(format!(
                "{} is larger than {MAX_CATALOG_BYTES} bytes: not a price catalog",
                path.display()
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Catalog(format!("{} is not UTF-8", path.display())))?;
        PriceCatalog::from_any_json(&text)
    }

    /// Writes the catalog in keymeter's format to `path` atomically (a new file, mode 0600, renamed over the
    /// old one only once complete), so a failure leaves any catalog already there untouched.
    ///
    /// # Errors
    /// [`Error::Config`] naming the path when it cannot be written.
    pub fn write_to(&self, path: &std::path::Path) -> Result<()> {
        crate::file::write_atomic(path, self.to_json().as_bytes())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    }

    /// Reads either keymeter's format or LiteLLM's price file, by looking at the text. LiteLLM entries without
    /// any price are skipped.
    ///
    /// # Errors
    /// [`Error::Catalog`] naming what is wrong.
    pub fn from_any_json(text: &str) -> Result<Self> {
        if is_keymeter_format(text) {
            PriceCatalog::from_json(text)
        } else {
            Ok(crate::pricing::litellm::import(text)?.catalog)
        }
    }
}

// LiteLLM's file never contains keymeter's format tag, so finding it is enough, and cheaper than a parse.
fn is_keymeter_format(text: &str) -> bool {
    text.contains("\"keymeter-catalog/")
}

fn validate(m: &mut ModelPrices) -> Result<()> {
    if m.id.is_empty() || m.provider.is_empty() {
        return Err(Error::Catalog("a model needs an id and a provider".into()));
    }
    if m.windows.is_empty() {
        return Err(Error::Catalog(format!("model {:?} has no prices", m.id)));
    }
    m.windows.sort_by_key(|w| w.effective_from);
    for w in &mut m.windows {
        if w.bands.is_empty() || w.bands[0].above_tokens != 0 {
            return Err(Error::Catalog(format!(
                "model {:?}: a window needs base rates",
                m.id
            )));
        }
        w.bands[1..].sort_by_key(|b| b.above_tokens);
        if w.bands[1..].iter().any(|b| b.above_tokens == 0)
            || w.bands
                .windows(2)
                .any(|p| p[0].above_tokens == p[1].above_tokens)
        {
            return Err(Error::Catalog(format!(
                "model {:?}: two bands start at the same size",
                m.id
            )));
        }
        if !w.has_prices() {
            return Err(Error::Catalog(format!(
                "model {:?}: a window has no rates",
                m.id
            )));
        }
        if let Some(off) = &w.off_peak
            && (off.rates.is_empty() || off.hours.is_empty())
        {
            return Err(Error::Catalog(format!(
                "model {:?}: off-peak pricing needs rates and hours",
                m.id
            )));
        }
        if let (Some(from), Some(until)) = (w.effective_from, w.effective_until)
            && from >= until
        {
            return Err(Error::Catalog(format!(
                "model {:?}: a window ends before it starts",
                m.id
            )));
        }
    }
    for pair in m.windows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let overlap = match (a.effective_until, b.effective_from) {
            (Some(until), Some(from)) => until > from,
            _ => true,
        };
        if overlap {
            return Err(Error::Catalog(format!(
                "model {:?} has overlapping price windows",
                m.id
            )));
        }
    }
    Ok(())
}
