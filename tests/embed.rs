//! keymeter inside a host application's database: the host's sqlx migrations and keymeter's coexist in either
//! order, on a pool the host owns or one keymeter opens.

use std::sync::Arc;

use keymeter::keys::{KeyStore, NewKey, Requirement, VerdictCode};
use keymeter::store::SqliteStore;
use keymeter::{Config, Error};
use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

static HOST: sqlx::migrate::Migrator = sqlx::migrate!("./tests/host_migrations");

async fn host_pool(path: &std::path::Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap()
}

fn url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn host_tables_work(pool: &SqlitePool) {
    sqlx::query("INSERT INTO users (email) VALUES ('a@example.com') ON CONFLICT DO NOTHING")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO api_keys (user_id, label) VALUES (1, 'host key')")
        .execute(pool)
        .await
        .unwrap();
}

async fn keymeter_works(store: Arc<SqliteStore>) {
    let vars = std::collections::HashMap::from([
        ("KEYMETER_ENV".to_string(), "test".to_string()),
        (
            "KEYMETER_PEPPER".to_string(),
            "p1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_string(),
        ),
    ]);
    let config = Config::from_source(&vars).unwrap();
    let issued = config
        .issuer(store.clone())
        .unwrap()
        .issue(NewKey::new("app", "alice"))
        .await
        .unwrap();
    let verdict = config
        .verifier(store.clone())
        .unwrap()
        .verify(issued.token.expose_secret(), &Requirement::new())
        .await
        .unwrap();
    assert_eq!(verdict.code(), VerdictCode::Valid);
    assert!(store.get(&issued.record.id).await.unwrap().is_some());
}

#[tokio::test]
async fn keymeter_first_then_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let store = Arc::new(SqliteStore::connect(&url(&db)).await.unwrap());
    let pool = host_pool(&db).await;
    HOST.run(&pool)
        .await
        .expect("the host's migrations ignore keymeter's tables");
    host_tables_work(&pool).await;
    keymeter_works(store).await;
    // Both sides start again on the migrated database.
    HOST.run(&pool).await.unwrap();
    keymeter_works(Arc::new(SqliteStore::connect(&url(&db)).await.unwrap())).await;
}

#[tokio::test]
async fn the_host_first_then_keymeter_on_the_hosts_pool() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let pool = host_pool(&db).await;
    HOST.run(&pool).await.unwrap();
    keymeter::store::sqlite::migrate(&pool)
        .await
        .expect("keymeter's migrations ignore the host's");
    keymeter::store::sqlite::migrate(&pool)
        .await
        .expect("and run again as a no-op");
    let store = Arc::new(SqliteStore::from_pool(pool.clone()));
    keymeter_works(store).await;
    host_tables_work(&pool).await;
    HOST.run(&pool).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(tables.contains(&"_sqlx_migrations".to_string()));
    assert!(tables.contains(&"keymeter_migrations".to_string()));
    assert!(
        tables.contains(&"api_keys".to_string())
            && tables.contains(&"keymeter_api_keys".to_string())
    );
}

#[tokio::test]
async fn a_changed_migration_is_refused_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    SqliteStore::connect(&url(&db)).await.unwrap().close().await;
    let pool = host_pool(&db).await;
    sqlx::query("UPDATE keymeter_migrations SET checksum = 'edited' WHERE version = 2")
        .execute(&pool)
        .await
        .unwrap();
    let err = keymeter::store::sqlite::migrate(&pool).await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(err.to_string().contains("migration 2"), "{err}");
    sqlx::query("UPDATE keymeter_migrations SET version = 99 WHERE version = 2")
        .execute(&pool)
        .await
        .unwrap();
    let err = keymeter::store::sqlite::migrate(&pool).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_database_and_its_wal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("private.db");
    let store = Arc::new(SqliteStore::connect(&url(&db)).await.unwrap());
    // A write while the pool is open: SQLite has made the -wal and -shm files beside the database.
    keymeter_works(store.clone()).await;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    store.close().await;
}
