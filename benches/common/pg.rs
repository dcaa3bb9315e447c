//! A PostgreSQL store for benches: a schema of its own in `KEYMETER_TEST_PG_URL`'s database, dropped on drop.

use std::sync::Arc;

use keymeter::store::{PostgresStore, Store};

/// The store and what drops its schema.
pub struct BenchSchema {
    pub store: Arc<dyn Store>,
    base: String,
    schema: String,
}

impl BenchSchema {
    /// Refreshes the planner's statistics of the event table, as autovacuum does after a bulk load.
    #[allow(dead_code)]
    pub async fn analyze(&self) {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base, self.schema
        );
        let pool = sqlx::postgres::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql("ANALYZE keymeter_usage_events")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let base = self.base.clone();
        // A runtime and a connection of their own, on a thread of their own: the bench's runtime may be a
        // current-thread one that only its own `block_on` drives (its handle would wait forever), and the drop
        // may run inside it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = sqlx::postgres::PgPool::connect(&base).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await
                    .ok()
            })
        })
        .join();
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
    rt.block_on(admin.close());
    Some(BenchSchema {
        store,
        base,
        schema,
    })
}
