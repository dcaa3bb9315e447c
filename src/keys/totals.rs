//! [`VerdictTotals`]: every verdict a verifier gave, by code, since it was made (for a service's metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::keys::VerdictCode;

/// One counter per [`VerdictCode`]: a relaxed add per verification, read whenever a scrape asks.
#[derive(Debug, Default)]
pub struct VerdictTotals {
    counts: [AtomicU64; VerdictCode::ALL.len()],
}

impl VerdictTotals {
    /// Counts one verdict.
    pub fn add(&self, code: VerdictCode) {
        self.counts[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Each code with its count, in [`VerdictCode::ALL`]'s order.
    pub fn counts(&self) -> [(VerdictCode, u64); VerdictCode::ALL.len()] {
        VerdictCode::ALL.map(|c| (c, self.counts[c.index()].load(Ordering::Relaxed)))
    }
}
