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
    /// SQLite's writers: one connection, so write transactions queue in order here instead of
    /// sleeping in SQLite's busy handler, whose back-off collapses throughput under contention.
    writer: Option<AnyPool>,
    backend: Backend,
}

static DRIVERS: Once = Once::new();

/// Connections a service keeps to PostgreSQL at most, unless configured
/// (`OPSCONDUCTOR_DB_MAX_CONNECTIONS`).
pub const DEFAULT_POSTGRES_POOL: u32 = 16;

impl Database {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`). For SQLite the file and its
    /// directory are created when missing.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Database::connect_with(url, DEFAULT_POSTGRES_POOL).await
    }

    /// [`Database::connect`] with at most `max_connections` to PostgreSQL (SQLite's pools are
    /// fixed: one writer, four readers).
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StorageError::UnsupportedUrl(redact_url(url)));
        };
        let options: AnyConnectOptions = url.parse()?;
        match backend {
            // SQLite allows one writer: in WAL mode readers stay concurrent on a small pool,
            // and write transactions take turns on a pool of one (autocommit writes outside a
            // transaction wait in the busy handler).
            Backend::Sqlite => Ok(Database {
                pool: sqlite_pool(&options, 4).await?,
                writer: Some(sqlite_pool(&options, 1).await?),
                backend,
            }),
            Backend::Postgres => Ok(Database {
                pool: AnyPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?,
                writer: None,
                backend,
            }),
        }
    }

    /// Opens (creating it if needed) the SQLite file at `path`. The file is the owning
    /// service's alone: created (or tightened to) mode 0600, which SQLite gives its WAL and
    /// shared-memory files too; a directory created for it is 0700.
    pub async fn open_sqlite_file(path: &Path) -> Result<Self, StorageError> {
        let data_dir = |source, dir: &Path| StorageError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| data_dir(e, dir))?;
        }
        create_private_file(path).map_err(|e| data_dir(e, path))?;
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

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads, then writes after another
    /// connection committed, fails with `SQLITE_BUSY` instead of waiting its turn. PostgreSQL
    /// needs nothing of the kind.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let writer = self.writer.as_ref().unwrap_or(&self.pool);
                writer.begin_with("BEGIN IMMEDIATE").await
            }
            Backend::Postgres => self.pool.begin().await,
        }
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
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        self.pool.close().await;
    }
}

async fn sqlite_pool(
    options: &AnyConnectOptions,
    connections: u32,
) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(connections)
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
        .connect_with(options.clone())
        .await
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

/// Creates `dir` (and missing parents) readable by its owner only; an existing directory is
/// left as it is (it may be shared, like a system temp dir).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `path` empty with mode 0600 unless it exists; an existing file is set to 0600.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        options.open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    options.open(path)?;
    Ok(())
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

    async fn read(conn: &mut sqlx::AnyConnection) {
        sqlx::query("SELECT COUNT(*) FROM t")
            .fetch_one(conn)
            .await
            .unwrap();
    }

    /// What `Database::begin` exists for: on SQLite in WAL mode a deferred transaction that
    /// reads, then writes after another connection committed, fails at once.
    #[tokio::test]
    async fn a_transaction_that_reads_then_writes_waits_for_its_turn() {
        let tmp = tempfile::tempdir().unwrap();
        let db = super::Database::open_sqlite_file(&tmp.path().join("t.db"))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(db.pool())
            .await
            .unwrap();
        // Deferred: someone else commits between the read and the write.
        let mut deferred = db.pool().begin().await.unwrap();
        read(&mut deferred).await;
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(db.pool())
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut *deferred)
            .await;
        assert!(refused.is_err(), "SQLite refuses the stale writer");
        drop(deferred);
        // Database::begin: the other writer waits until this transaction commits (the pause
        // lets it reach SQLite's lock; nothing here depends on its length).
        let mut tx = db.begin().await.unwrap();
        read(&mut tx).await;
        let pool = db.pool().clone();
        let other =
            tokio::spawn(
                async move { sqlx::query("INSERT INTO t VALUES (3)").execute(&pool).await },
            );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        sqlx::query("INSERT INTO t VALUES (4)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        other.await.unwrap().unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, 3);
        db.close().await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_and_their_directory_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let path = dir.join("svc.db");
        let db = super::Database::open_sqlite_file(&path).await.unwrap();
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(db.pool())
            .await
            .unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() >= 2, "the database and its WAL: {files:?}");
        for file in &files {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        db.close().await;
        // A file left readable by an earlier version is tightened on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let db = super::Database::open_sqlite_file(&path).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        db.close().await;
    }

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
