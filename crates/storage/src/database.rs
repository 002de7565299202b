use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::{AnyPool, Executor};

use crate::StorageError;

/// Which database a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A service's embedded migrations, one directory per backend.
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

/// A pooled connection to a service's own database.
#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

static DRIVERS: Once = Once::new();

impl Database {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`). For SQLite the file and its
    /// directory are created when missing.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StorageError::UnsupportedUrl(redact_url(url)));
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool = match backend {
            // SQLite allows one writer: a small pool in WAL mode with a busy timeout keeps
            // readers concurrent and lets writers queue instead of failing.
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Database { pool, backend })
    }

    /// Opens (creating it if needed) the SQLite file at `path`.
    pub async fn open_sqlite_file(path: &Path) -> Result<Self, StorageError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        Self::connect(&sqlite_url(path)).await
    }

    /// Applies the backend's embedded migrations that have not run yet.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StorageError> {
        self.migrate_all(&[migrations]).await
    }

    /// Applies several components' migrations as one set — a service's own and those of the
    /// shared crates whose tables live in its database (the messaging outbox, inbox and dead
    /// letters). sqlx keeps one migrations table per database, so the sets must use disjoint
    /// version numbers: services count from 1, shared crates from their own range (messaging
    /// from 1_000_001).
    pub async fn migrate_all(&self, sets: &[&Migrations]) -> Result<(), StorageError> {
        let mut all: Vec<Migration> = Vec::new();
        for set in sets {
            let migrator = match self.backend {
                Backend::Sqlite => set.sqlite,
                Backend::Postgres => set.postgres,
            };
            for migration in migrator.iter() {
                if all.iter().any(|m| m.version == migration.version) {
                    return Err(StorageError::DuplicateMigration(migration.version));
                }
                all.push(migration.clone());
            }
        }
        all.sort_by_key(|m| m.version);
        let migrator = Migrator::new(Merged(all)).await?;
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Migrations gathered from several embedded sets, handed to sqlx as one source.
#[derive(Debug)]
struct Merged(Vec<Migration>);

type Resolved = Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>;

impl MigrationSource<'static> for Merged {
    fn resolve(
        self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resolved> + Send + 'static>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// The sqlx URL of a SQLite file, created on first open.
pub fn sqlite_url(path: &Path) -> String {
    // sqlx percent-decodes the path: escape what would end it or be decoded.
    let mut encoded = String::new();
    for c in path.display().to_string().chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    format!("sqlite://{encoded}?mode=rwc")
}

/// A URL with its password (if any) replaced, fit for an error message or a log line.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url as redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("mysql://bob:hunter2@db:5432/x"),
            "mysql://bob:***@db:5432/x"
        );
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact("nonsense"), "nonsense");
    }
}
