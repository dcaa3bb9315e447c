//! Catalogs the pricing tests share, each parsed once per test binary.
#![allow(dead_code)]

use std::sync::OnceLock;

use keymeter::pricing::{PriceCatalog, litellm};

/// LiteLLM 1.109.1's whole price file, imported.
pub fn litellm_catalog() -> &'static PriceCatalog {
    static CATALOG: OnceLock<PriceCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        litellm::import(include_str!(
            "../fixtures/litellm/model_prices_and_context_window.json"
        ))
        .expect("the committed fixture imports")
        .catalog
    })
}

/// The bundled snapshot.
pub fn bundled() -> &'static PriceCatalog {
    static CATALOG: OnceLock<PriceCatalog> = OnceLock::new();
    CATALOG.get_or_init(PriceCatalog::bundled)
}

/// The URL of a fresh, empty schema in the test PostgreSQL database (`KEYMETER_TEST_PG_URL`), so each test sees
/// only its own tables; `None`, with the reason printed, when the variable is unset.
#[cfg(feature = "postgres")]
pub async fn pg_schema_url(test: &str) -> Option<String> {
    use sqlx::Connection;
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Ok(base) = std::env::var("KEYMETER_TEST_PG_URL") else {
        eprintln!(
            "skipping {test}: KEYMETER_TEST_PG_URL is not set (see README: tests against real servers)"
        );
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let schema = format!(
        "t{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    );
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to KEYMETER_TEST_PG_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    )))
    .execute(&mut conn)
    .await
    .expect("create a test schema");
    let _ = conn.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// A [`keymeter::store::PostgresStore`] on a fresh schema; `None` when `KEYMETER_TEST_PG_URL` is unset.
#[cfg(feature = "postgres")]
pub async fn pg_store(test: &str) -> Option<std::sync::Arc<keymeter::store::PostgresStore>> {
    let url = pg_schema_url(test).await?;
    Some(std::sync::Arc::new(
        keymeter::store::PostgresStore::connect(&url)
            .await
            .expect("connect to the test schema"),
    ))
}
