//! Fresh, isolated databases for tests: a temporary SQLite file, or a new PostgreSQL database
//! on the server named by `OPSCONDUCTOR_TEST_POSTGRES_URL` (default: postgres@127.0.0.1:5432).
//! Each is dropped when the handle is.

use std::path::PathBuf;

use crate::{Backend, Database, StorageError};

/// The admin URL used to create and drop per-test PostgreSQL databases.
pub fn postgres_admin_url() -> String {
    std::env::var("OPSCONDUCTOR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Connections per test database: a sandbox holds nine services' databases and tests run in
/// parallel, so PostgreSQL's 100 connections would not go round at the production default.
/// `OPSCONDUCTOR_TEST_PG_POOL` overrides it (the benchmarks use the production default).
fn test_pool() -> u32 {
    std::env::var("OPSCONDUCTOR_TEST_PG_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub db: Database,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempdir::Dir),
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> Result<Self, StorageError> {
        match backend {
            Backend::Sqlite => Self::sqlite().await,
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A new SQLite file in its own temporary directory.
    pub async fn sqlite() -> Result<Self, StorageError> {
        let dir = tempdir::Dir::new()?;
        let path = dir.path.join("test.db");
        let url = crate::database::sqlite_url(&path);
        let db = Database::open_sqlite_file(&path).await?;
        Ok(TestDatabase {
            db,
            url,
            cleanup: Cleanup::Dir(dir),
        })
    }

    /// A new PostgreSQL database with a unique name.
    pub async fn postgres() -> Result<Self, StorageError> {
        let admin_url = postgres_admin_url();
        let name = format!("opsconductor_test_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect_with(&admin_url, 1).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await?;
        admin.close().await;
        let url = match admin_url.rfind('/') {
            Some(slash) if slash > "postgres://".len() => {
                format!("{}/{}", &admin_url[..slash], name)
            }
            _ => format!("{admin_url}/{name}"),
        };
        let db = Database::connect_with(&url, test_pool()).await?;
        Ok(TestDatabase {
            db,
            url,
            cleanup: Cleanup::Postgres { admin_url, name },
        })
    }
}

/// Runs a cleanup to completion from `Drop`: the test's own runtime may be shutting down, so it
/// gets a thread and a small runtime of its own, and the caller waits for it — at most a minute:
/// a broker or database that stopped answering must not hang the suite (what is left behind is
/// named by the test's prefix, for the cleanup commands in the README).
pub fn cleanup_on_own_runtime(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let handle = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let limit = std::time::Duration::from_secs(60);
            // The timer is made inside the runtime: it needs its clock.
            if rt
                .block_on(async move { tokio::time::timeout(limit, cleanup).await })
                .is_err()
            {
                eprintln!("test cleanup gave up after {limit:?}; some resources are left behind");
            }
        }
    });
    let _ = handle.join();
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            let pool = self.db.pool().clone();
            cleanup_on_own_runtime(async move {
                pool.close().await;
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(admin.pool())
                        .await;
                    admin.close().await;
                }
            });
        }
    }
}

mod tempdir {
    use super::*;

    /// A directory removed on drop (kept small to avoid a dependency for one struct).
    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new() -> Result<Self, StorageError> {
            let path = std::env::temp_dir().join(format!(
                "opsconductor-test-{}",
                uuid::Uuid::now_v7().simple()
            ));
            std::fs::create_dir_all(&path).map_err(|source| StorageError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Dir { path })
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
