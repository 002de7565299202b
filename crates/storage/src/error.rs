use thiserror::Error;

/// What can go wrong below a service's store. Services map these to their own errors once.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The database URL is not one we can open.
    #[error("unsupported database URL (expected sqlite:// or postgres://): {0}")]
    UnsupportedUrl(String),
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Two migration sets applied together use the same version number.
    #[error("migration version {0} is used by two migration sets")]
    DuplicateMigration(i64),
    /// Creating the SQLite file's directory failed.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether this error is a unique-key violation (a duplicate), on either backend.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StorageError::Database(e) if is_unique_violation(e))
    }
}

/// Whether a sqlx error is a unique-key violation, on either backend.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}
