//! The compose deployment's PostgreSQL roles, created by the SQL `secrets init` writes, against
//! the real server: each service's role owns its database, reaches no other service's, and can
//! neither raise itself nor create roles or databases. (The compose lint checks that every
//! service uses its own role's URL and never the cluster administrator's.)

use opsconductor::secrets::{self, DatabaseOptions, Options, Secrets};
use opsconductor_platform::ServiceKind;
use opsconductor_storage::testing::postgres_admin_url;
use sqlx::{Connection, PgConnection, Row};

fn psql(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new("psql")
        .args(["-X", "-q", "-d", &postgres_admin_url(), "-f"])
        .arg(file)
        .output()
        .expect("psql")
}

async fn admin_execute(sql: &str) {
    let mut admin = PgConnection::connect(&postgres_admin_url()).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut admin).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_owns_its_database_and_reaches_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("t{}_", rand::random::<u32>());
    let options = Options {
        database: Some(DatabaseOptions {
            host: "127.0.0.1:5432".into(),
            prefix: prefix.clone(),
        }),
        ..Options::default()
    };
    let generated = Secrets::ensure(dir.path(), opsconductor_catalog::SERVICES, &options).unwrap();
    let roles_sql = dir
        .path()
        .join(secrets::DATABASES_DIR)
        .join(secrets::ROLES_SQL);
    // Twice: provisioning runs at every `compose up`.
    for _ in 0..2 {
        let out = psql(&roles_sql);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let url_of = |kind: ServiceKind| {
        std::fs::read_to_string(generated.path(kind, secrets::DATABASE_URL))
            .unwrap()
            .trim()
            .to_string()
    };
    let kinds = [ServiceKind::Credentials, ServiceKind::Jobs];
    let result = async {
        for kind in kinds {
            let mut own = PgConnection::connect(&url_of(kind)).await.unwrap();
            let row = sqlx::query(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles \
                 WHERE rolname = current_user",
            )
            .fetch_one(&mut own)
            .await
            .unwrap();
            for i in 0..4 {
                assert!(!row.get::<bool, _>(i), "{kind}: privilege {i} granted");
            }
            // Its migrations can create what they need in its own database.
            sqlx::raw_sql("CREATE TABLE owned (x INT); INSERT INTO owned VALUES (1)")
                .execute(&mut own)
                .await
                .unwrap();
            for refused in [
                format!("CREATE DATABASE {prefix}extra"),
                format!("CREATE ROLE {prefix}extra"),
                format!("ALTER ROLE {prefix}{kind} SUPERUSER"),
            ] {
                let error = sqlx::raw_sql(&refused).execute(&mut own).await.unwrap_err();
                assert!(
                    error.to_string().contains("permission denied")
                        || error.to_string().contains("must be superuser"),
                    "{refused}: {error}"
                );
            }
        }
        // The credentials service's role cannot even connect to the jobs database.
        let mut foreign = url_of(ServiceKind::Credentials);
        foreign.truncate(foreign.rfind('/').unwrap());
        foreign.push_str(&format!("/{prefix}jobs"));
        let error = PgConnection::connect(&foreign).await.unwrap_err();
        assert!(error.to_string().contains("permission denied"), "{error}");
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    for module in opsconductor_catalog::SERVICES {
        let name = format!("{prefix}{}", module.kind());
        // One statement per call: DROP DATABASE refuses to run inside the implicit transaction
        // of a multi-statement query.
        admin_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        admin_execute(&format!("DROP ROLE IF EXISTS {name}")).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
