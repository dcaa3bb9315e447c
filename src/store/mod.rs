//! Storage backends. Each implements every trait it can; features gate the ones with dependencies.
//!
//! | backend | feature | for |
//! | --- | --- | --- |
//! | [`MemoryStore`] | always | tests, single-process services, caches |
//! | `SqliteStore` | `sqlite` | the embedded default for one machine |

pub mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
