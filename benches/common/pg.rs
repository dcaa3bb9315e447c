//! A PostgreSQL store for benches: a schema of its own in `KEYMETER_TEST_PG_URL`'s database, dropped on drop.

use std::sync::Arc;

use keymeter::store::{PostgresStore, Store};

/// The store and what drops its schema.
pub struct BenchSchema {
    pub store: Arc<dyn Store>,
    admin: PostgresStore,
    schema: String,
    rt: tokio::runtime::Handle,
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let store = self.store.clone();
        let _ = self.rt.block_on(async {
            store.close().await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(self.admin.pool())
                .await
        });
    }
}

/// A fresh store, or `None` (saying so) when `KEYMETER_TEST_PG_URL` is unset.
pub fn schema(rt: &tokio::runtime::Runtime, bench: &str) -> Option<BenchSchema> {
    let Ok(base) = std::env::var("KEYMETER_TEST_PG_URL") else {
        eprintln!("{bench}: KEYMETER_TEST_PG_URL is not set: PostgreSQL cases skipped");
        return None;
    };
    let schema = format!("bench_{bench}_{}", std::process::id());
    let admin = rt.block_on(PostgresStore::connect(&base)).unwrap();
    rt.block_on(
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(admin.pool()),
    )
    .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = rt.block_on(keymeter::store::connect(&url)).unwrap();
    Some(BenchSchema {
        store,
        admin,
        schema,
        rt: rt.handle().clone(),
    })
}
