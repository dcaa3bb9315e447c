//! Every backend runs the same conformance suite.

mod memory {
    keymeter::key_store_conformance!(std::sync::Arc::new(keymeter::store::MemoryStore::new()));
    mod credentials {
        keymeter::credential_store_conformance!(std::sync::Arc::new(
            keymeter::store::MemoryStore::new()
        ));
    }
    mod ledger {
        keymeter::ledger_conformance!(std::sync::Arc::new(keymeter::store::MemoryStore::new()));
    }
    mod limits {
        keymeter::limit_store_conformance!(
            std::sync::Arc::new(keymeter::store::MemoryStore::new())
        );
        keymeter::rate_limiter_conformance!(std::sync::Arc::new(
            keymeter::store::MemoryStore::new()
        ));
        keymeter::bucket_store_conformance!(std::sync::Arc::new(
            keymeter::store::MemoryStore::new()
        ));
        mod local {
            keymeter::rate_limiter_conformance!(std::sync::Arc::new(
                keymeter::limits::LocalLimiter::open(
                    std::sync::Arc::new(keymeter::store::MemoryStore::new()),
                    0
                )
                .await
                .expect("open")
            ));
        }
        mod leased {
            keymeter::rate_limiter_conformance!(std::sync::Arc::new(
                keymeter::limits::LeasedLimiter::new(std::sync::Arc::new(
                    keymeter::store::MemoryStore::new()
                ))
            ));
        }
    }
    mod slots {
        keymeter::slot_store_conformance!(std::sync::Arc::new(keymeter::store::MemoryStore::new()));
    }
    mod stats {
        keymeter::stats_store_conformance!(
            std::sync::Arc::new(keymeter::store::MemoryStore::new())
        );
    }
    mod alerts {
        keymeter::outbox_conformance!(std::sync::Arc::new(keymeter::store::MemoryStore::new()));
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    async fn fresh() -> std::sync::Arc<keymeter::store::SqliteStore> {
        // A database file of its own per test, left in the OS temp dir.
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let url = format!("sqlite://{}", dir.join("conformance.db").display());
        std::sync::Arc::new(
            keymeter::store::SqliteStore::connect(&url)
                .await
                .expect("connect"),
        )
    }
    keymeter::key_store_conformance!(fresh().await);
    mod credentials {
        use super::fresh;
        keymeter::credential_store_conformance!(fresh().await);
    }
    mod ledger {
        use super::fresh;
        keymeter::ledger_conformance!(fresh().await);
    }
    mod limits {
        use super::fresh;
        keymeter::limit_store_conformance!(fresh().await);
        keymeter::rate_limiter_conformance!(fresh().await);
        keymeter::bucket_store_conformance!(fresh().await);
        mod leased {
            use super::fresh;
            keymeter::rate_limiter_conformance!(std::sync::Arc::new(
                keymeter::limits::LeasedLimiter::new(fresh().await)
            ));
        }
    }
    mod slots {
        use super::fresh;
        keymeter::slot_store_conformance!(fresh().await);
    }
    mod stats {
        use super::fresh;
        keymeter::stats_store_conformance!(fresh().await);
    }
    mod alerts {
        use super::fresh;
        keymeter::outbox_conformance!(fresh().await);
    }
}

#[cfg(feature = "postgres")]
#[path = "common/mod.rs"]
mod common;

/// Against the server of `KEYMETER_TEST_PG_URL`, each test in a schema of its own; every test passes (after
/// saying so) when the variable is unset.
#[cfg(feature = "postgres")]
mod postgres {
    macro_rules! fresh {
        () => {
            match crate::common::pg_store(module_path!()).await {
                Some(store) => store,
                None => return,
            }
        };
    }
    keymeter::key_store_conformance!(fresh!());
    mod credentials {
        keymeter::credential_store_conformance!(fresh!());
    }
    mod ledger {
        keymeter::ledger_conformance!(fresh!());
    }
    mod limits {
        keymeter::limit_store_conformance!(fresh!());
        keymeter::rate_limiter_conformance!(fresh!());
        keymeter::bucket_store_conformance!(fresh!());
        mod leased {
            keymeter::rate_limiter_conformance!(std::sync::Arc::new(
                keymeter::limits::LeasedLimiter::new(fresh!())
            ));
        }
    }
    mod slots {
        keymeter::slot_store_conformance!(fresh!());
    }
    mod stats {
        keymeter::stats_store_conformance!(fresh!());
    }
    mod alerts {
        keymeter::outbox_conformance!(fresh!());
    }
}
