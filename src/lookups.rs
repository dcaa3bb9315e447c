//! [`Lookups`]: how often an in-process cache answered from memory and how often it asked its store, for a
//! service's metrics (DESIGN §14's cache hit ratios).
//!
//! ```
//! use keymeter::lookups::Lookups;
//!
//! let lookups = Lookups::default();
//! lookups.hit();
//! lookups.hit();
//! lookups.miss();
//! assert_eq!((lookups.hits(), lookups.misses()), (2, 1));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of a cache's answers: from memory (hits) and from its store (misses). Shared by `Arc`.
#[derive(Debug, Default)]
pub struct Lookups {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Lookups {
    /// Counts an answer from memory.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer the store gave.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers from memory so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Answers from the store so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}
