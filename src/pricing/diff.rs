//! What changed between two catalogs: models added and removed, and the rates of the models in both.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::pricing::{PriceCatalog, PriceWindow, ServiceTier, TokenClass};

/// The differences from an old catalog to a new one, judged at one instant (the windows in force then).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CatalogDiff {
    /// Models only in the new catalog, by id.
    pub added: Vec<String>,
    /// Models only in the old catalog, by id.
    pub removed: Vec<String>,
    /// Models in both whose prices differ.
    pub changed: Vec<ModelChange>,
    /// Models in both with the same prices.
    pub unchanged: usize,
}

/// One model whose prices differ between two catalogs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelChange {
    /// The model id.
    pub model: String,
    /// The currency of the new prices.
    pub currency: String,
    /// Base-band rates that differ, per tier and class (a per-request fee is class `request`).
    pub rates: Vec<RateChange>,
    /// Whether something other than those rates differs (long-context bands, off-peak hours, regions, windows,
    /// aliases, provider, currency).
    pub other_terms: bool,
}

/// One rate that differs: `None` where a catalog has no rate for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateChange {
    /// The service tier (`standard`, `batch`, `flex`, `priority`).
    pub tier: &'static str,
    /// The class (`input`, `output`, …) or `request` for a per-request fee.
    pub class: &'static str,
    /// Per token, query, image or request, in the old catalog.
    pub old: Option<Decimal>,
    /// The same in the new catalog.
    pub new: Option<Decimal>,
}

impl CatalogDiff {
    /// Compares `old` with `new` at `at`: ids sorted, rates compared by value (`2.50` equals `2.5`).
    pub fn between(old: &PriceCatalog, new: &PriceCatalog, at: DateTime<Utc>) -> CatalogDiff {
        let mut diff = CatalogDiff::default();
        for m in new.models() {
            let Some(before) = old.model(&m.id).filter(|b| b.id == m.id) else {
                diff.added.push(m.id.to_string());
                continue;
            };
            if before == m {
                diff.unchanged += 1;
                continue;
            }
            let rates = rate_changes(before.window_at(at), m.window_at(at));
            let mut same_rest_old = before.clone();
            let mut same_rest_new = m.clone();
            same_rest_old.windows.clear();
            same_rest_new.windows.clear();
            let other_terms =
                same_rest_old != same_rest_new || !same_but_base_rates(&before.windows, &m.windows);
            if rates.is_empty() && !other_terms {
                diff.unchanged += 1;
            } else {
                diff.changed.push(ModelChange {
                    model: m.id.to_string(),
                    currency: m.currency.to_string(),
                    rates,
                    other_terms,
                });
            }
        }
        for m in old.models() {
            if new.model(&m.id).is_none_or(|n| n.id != m.id) {
                diff.removed.push(m.id.to_string());
            }
        }
        diff.added.sort();
        diff.removed.sort();
        diff.changed.sort_by(|a, b| a.model.cmp(&b.model));
        diff
    }

    /// Whether the two catalogs price every model alike.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The base band's rates and the per-request fee of the two windows in force, where they differ.
fn rate_changes(old: Option<&PriceWindow>, new: Option<&PriceWindow>) -> Vec<RateChange> {
    let mut out = Vec::new();
    for tier in ServiceTier::ALL {
        let rates =
            |w: Option<&PriceWindow>| w.and_then(|w| w.bands.first()).map(|b| *b.rates(tier));
        let (a, b) = (
            rates(old).unwrap_or_default(),
            rates(new).unwrap_or_default(),
        );
        for class in TokenClass::ALL {
            let (x, y) = (a.get(class), b.get(class));
            if x.map(|d| d.normalize()) != y.map(|d| d.normalize()) {
                out.push(RateChange {
                    tier: tier.as_str(),
                    class: class.as_str(),
                    old: x,
                    new: y,
                });
            }
        }
    }
    let fee = |w: Option<&PriceWindow>| w.and_then(|w| w.per_request);
    if fee(old).map(|d| d.normalize()) != fee(new).map(|d| d.normalize()) {
        out.push(RateChange {
            tier: ServiceTier::Standard.as_str(),
            class: "request",
            old: fee(old),
            new: fee(new),
        });
    }
    out
}

/// Whether two window lists are equal once every base band's rates and per-request fee are set aside.
fn same_but_base_rates(old: &[PriceWindow], new: &[PriceWindow]) -> bool {
    let strip = |w: &PriceWindow| {
        let mut w = w.clone();
        w.per_request = None;
        if let Some(base) = w.bands.first_mut() {
            base.tiers = Default::default();
        }
        w
    };
    old.len() == new.len() && old.iter().zip(new).all(|(a, b)| strip(a) == strip(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{ModelPrices, Rates};
    use std::sync::Arc;

    fn model(id: &str, input: &str, output: &str) -> ModelPrices {
        let mut rates = Rates::default();
        rates.set(TokenClass::Input, input.parse().unwrap());
        rates.set(TokenClass::Output, output.parse().unwrap());
        ModelPrices {
            id: Arc::from(id),
            provider: Arc::from("openai"),
            mode: Some("chat".into()),
            currency: Arc::from("USD"),
            aliases: Vec::new(),
            windows: vec![PriceWindow::open(rates)],
        }
    }

    #[test]
    fn added_removed_and_changed_rates_are_named_and_equal_values_are_not() {
        let old = PriceCatalog::new(vec![
            model("a", "0.0000025", "0.00001"),
            model("b", "0.000001", "0.000002"),
            model("gone", "0.000001", "0.000002"),
        ])
        .unwrap();
        let new = PriceCatalog::new(vec![
            model("a", "0.00000250", "0.000012"),
            model("b", "0.000001", "0.000002"),
            model("fresh", "0.000003", "0.000004"),
        ])
        .unwrap();
        let diff = CatalogDiff::between(&old, &new, Utc::now());
        assert_eq!(diff.added, ["fresh"]);
        assert_eq!(diff.removed, ["gone"]);
        assert_eq!(diff.unchanged, 1);
        assert_eq!(diff.changed.len(), 1);
        let change = &diff.changed[0];
        assert_eq!(change.model, "a");
        assert!(!change.other_terms);
        assert_eq!(
            change.rates,
            [RateChange {
                tier: "standard",
                class: "output",
                old: Some("0.00001".parse().unwrap()),
                new: Some("0.000012".parse().unwrap()),
            }]
        );
        let json = serde_json::to_value(&diff).unwrap();
        assert_eq!(json["changed"][0]["rates"][0]["new"], "0.000012");
        assert!(CatalogDiff::between(&old, &old, Utc::now()).is_empty());
    }

    #[test]
    fn a_change_outside_the_base_rates_is_flagged() {
        let old = PriceCatalog::new(vec![model("a", "1", "2")]).unwrap();
        let mut changed = model("a", "1", "2");
        changed.aliases.push("a-latest".into());
        let new = PriceCatalog::new(vec![changed]).unwrap();
        let diff = CatalogDiff::between(&old, &new, Utc::now());
        assert_eq!(diff.changed.len(), 1);
        assert!(diff.changed[0].rates.is_empty() && diff.changed[0].other_terms);
    }
}
