//! Storage backends. Each implements every trait it can; features gate the ones with dependencies.
//!
//! | backend | feature | for |
//! | --- | --- | --- |
//! | [`MemoryStore`] | always | tests, single-process services, caches |
//! | `SqliteStore` | `sqlite` | the embedded default for one machine |
//! | `env_file::EnvFile` | `env-file` | development system keys in a `.env` file (a plaintext source, not a [`crate::credentials::CredentialStore`]) |

#[cfg(feature = "env-file")]
pub mod env_file;
pub mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_ledger;

#[cfg(feature = "env-file")]
pub use env_file::EnvFile;
pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
