//! Storage for OpsConductor services: one [`Database`] handle over SQLite (the embedded default,
//! one file per service) or PostgreSQL (several replicas), chosen by URL at start-up.
//!
//! Services write portable SQL: `$1` placeholders (SQLite accepts them too), `BIGINT` for
//! integers, booleans and times (microseconds since the Unix epoch), `TEXT` for ids and JSON.
//! Each service embeds one migration directory per backend, because DDL is where the dialects
//! differ; everything after DDL is shared.

mod database;
mod error;
mod select;
pub mod testing;

pub use database::{
    create_private_dir, redact_url, sqlite_url, Backend, Database, Migrations,
    DEFAULT_POSTGRES_POOL,
};
pub use error::{is_unique_violation, StorageError};
pub use select::{Arg, Select};
pub use sqlx;

/// The calling crate's embedded migrations, one directory per backend:
/// `migrations/sqlite` and `migrations/postgres` beside its `Cargo.toml`.
#[macro_export]
macro_rules! embedded_migrations {
    () => {{
        static SQLITE: $crate::sqlx::migrate::Migrator =
            $crate::sqlx::migrate!("./migrations/sqlite");
        static POSTGRES: $crate::sqlx::migrate::Migrator =
            $crate::sqlx::migrate!("./migrations/postgres");
        $crate::Migrations {
            sqlite: &SQLITE,
            postgres: &POSTGRES,
        }
    }};
}
