//! The secrets of a deployment, generated once into a directory and never overwritten, one
//! subdirectory per service holding exactly what that service reads — so a container mounts
//! its own directory and nothing else:
//!
//! ```text
//! <dir>/<service>/service.secret    its identity secret (every service but auth, which signs
//!                                   its own token)
//! <dir>/<service>/<file>            what the service's module declares (auth: the key-
//!                                   encryption key and the identities list; user: the
//!                                   administrator's password)
//! <dir>/<service>/amqp-password     its broker account's password (with broker accounts)
//! <dir>/rabbitmq/definitions.json   the broker accounts, their permissions and the topology
//! <dir>/rabbitmq/admin-password     the broker administrator's password
//! <dir>/<service>/database-url      its PostgreSQL URL, as its own role (with database roles)
//! <dir>/databases/roles.sql         the SQL that creates those roles and their databases
//! ```
//!
//! Directories are 0700, files 0600. The list of secrets comes from the catalog.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsconductor_messaging::{Account, DeadLetterStrategy, Names};
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{broker_use, SecretKind, ServiceModule};

pub mod database;
pub use database::{role_sql, DatabaseOptions, DATABASES_DIR, DATABASE_URL, ROLES_SQL};

/// A service's identity secret, in its directory.
pub const SERVICE_SECRET: &str = "service.secret";
/// A service's broker password, in its directory.
pub const AMQP_PASSWORD: &str = "amqp-password";
/// The broker's directory.
pub const BROKER_DIR: &str = "rabbitmq";
pub const BROKER_DEFINITIONS: &str = "definitions.json";
pub const BROKER_ADMIN: &str = "admin";

/// How to generate: which variables the environment provides already (their secrets are not
/// generated), and whether to write broker accounts.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub provided: Vec<String>,
    pub broker: Option<BrokerOptions>,
    pub database: Option<DatabaseOptions>,
}

/// The broker the accounts are for.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub prefix: String,
    pub vhost: String,
    pub strategy: DeadLetterStrategy,
}

/// The secrets of one deployment. Debug shows none of them.
pub struct Secrets {
    pub dir: PathBuf,
    /// Each implemented service's variables and their values.
    pub services: BTreeMap<ServiceKind, BTreeMap<&'static str, String>>,
    /// Passwords for people that this call generated, to show once: (who, password).
    pub shown_once: Vec<(String, String)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// 24 base64 characters: 144 bits, and easy to paste.
fn password() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

/// Whether `kind` has an identity secret: every service but auth, which mints its own token.
pub fn has_identity(kind: ServiceKind) -> bool {
    kind != ServiceKind::Auth
}

impl Secrets {
    /// Reads the secrets of `modules` in `dir`, generating the missing ones.
    pub fn ensure(
        dir: &Path,
        modules: &[&dyn ServiceModule],
        options: &Options,
    ) -> std::io::Result<Secrets> {
        private_dir(dir)?;
        migrate_flat_layout(dir, modules)?;
        let mut services: BTreeMap<ServiceKind, BTreeMap<&'static str, String>> = BTreeMap::new();
        let mut shown_once = Vec::new();
        let mut identities = Vec::new();
        for module in modules {
            let kind = module.kind();
            let own = dir.join(kind.name());
            private_dir(&own)?;
            let vars = services.entry(kind).or_default();
            if has_identity(kind) {
                let (secret, _) = read_or_create(&own.join(SERVICE_SECRET), random_secret)?;
                identities.push((kind, secret.clone()));
                vars.insert("SERVICE_SECRET", secret);
            }
        }
        for module in modules {
            let own = dir.join(module.kind().name());
            let vars = services.entry(module.kind()).or_default();
            for spec in module.secrets() {
                if options.provided.iter().any(|v| v == spec.var) {
                    continue;
                }
                let path = own.join(spec.file);
                let value = match spec.kind {
                    SecretKind::Random(generate) => read_or_create(&path, generate)?.0,
                    SecretKind::Password => {
                        let (value, generated) = read_or_create(&path, password)?;
                        if generated {
                            shown_once.push((spec.var.to_string(), value.clone()));
                        }
                        value
                    }
                    SecretKind::Identities(render) => {
                        let text = render(&identities);
                        write_private(&path, &text, true)?;
                        text
                    }
                };
                vars.insert(spec.var, value);
            }
        }
        if let Some(broker) = &options.broker {
            write_broker_accounts(dir, modules, broker, &mut services)?;
        }
        if let Some(database) = &options.database {
            database::write_database_roles(dir, modules, database, &mut services)?;
        }
        Ok(Secrets {
            dir: dir.to_path_buf(),
            services,
            shown_once,
        })
    }

    /// The variables `kind` is configured with, with their values.
    pub fn vars(&self, kind: ServiceKind) -> impl Iterator<Item = (&'static str, &str)> {
        self.services
            .get(&kind)
            .into_iter()
            .flat_map(|vars| vars.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// The file a service reads `file` from.
    pub fn path(&self, kind: ServiceKind, file: &str) -> PathBuf {
        self.dir.join(kind.name()).join(file)
    }
}

/// A broker account per service with exactly the permissions its use needs, an administrator,
/// and the definitions file that creates them and the topology.
fn write_broker_accounts(
    dir: &Path,
    modules: &[&dyn ServiceModule],
    broker: &BrokerOptions,
    services: &mut BTreeMap<ServiceKind, BTreeMap<&'static str, String>>,
) -> std::io::Result<()> {
    let broker_dir = dir.join(BROKER_DIR);
    private_dir(&broker_dir)?;
    let mut accounts = Vec::new();
    for module in modules {
        let kind = module.kind();
        let (password, _) =
            read_or_create(&dir.join(kind.name()).join(AMQP_PASSWORD), random_secret)?;
        services
            .entry(kind)
            .or_default()
            .insert("AMQP_PASSWORD", password.clone());
        accounts.push(Account {
            name: kind.name().to_string(),
            password,
            use_: Some(broker_use(*module)),
        });
    }
    let (admin, _) = read_or_create(&broker_dir.join("admin-password"), password)?;
    accounts.push(Account {
        name: BROKER_ADMIN.to_string(),
        password: admin,
        use_: None,
    });
    let definitions = opsconductor_messaging::definitions(
        &Names::new(&broker.prefix),
        &broker.vhost,
        &accounts,
        broker.strategy,
    );
    let text = serde_json::to_string_pretty(&definitions).map_err(std::io::Error::other)?;
    write_private(&broker_dir.join(BROKER_DEFINITIONS), &text, true)
}

/// Files of the flat layout of earlier versions, moved to where their service reads them:
/// `up` keeps working over a data directory it made before (its keys stay readable).
fn migrate_flat_layout(dir: &Path, modules: &[&dyn ServiceModule]) -> std::io::Result<()> {
    let mut moves: Vec<(String, PathBuf)> = vec![
        (
            "admin-password".into(),
            Path::new("user").join("admin-password"),
        ),
        (
            "auth-key-encryption-key".into(),
            Path::new("auth").join("key-encryption-key"),
        ),
    ];
    for module in modules {
        let name = module.kind().name();
        moves.push((
            format!("service-{name}.secret"),
            Path::new(name).join(SERVICE_SECRET),
        ));
    }
    for (old, new) in moves {
        let (old, new) = (dir.join(old), dir.join(new));
        if old.is_file() && !new.exists() {
            if let Some(parent) = new.parent() {
                private_dir(parent)?;
            }
            std::fs::rename(&old, &new)?;
        }
    }
    for stale in ["service-identities", "service-auth.secret"] {
        let path = dir.join(stale);
        if path.is_file() {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The file's content, or `generate()` written to it now (second value: generated).
fn read_or_create(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok((text.trim().to_string(), false)),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is empty; delete it to have it generated",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = generate();
            write_private(path, &value, false)?;
            Ok((value, true))
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, text: &str, replace: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsconductor_catalog::SERVICES;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_once_private_and_one_directory_per_service() {
        let dir = tempfile::tempdir().unwrap();
        let first = Secrets::ensure(dir.path(), SERVICES, &Options::default()).unwrap();
        assert_eq!(first.shown_once.len(), 1, "the administrator's password");
        let again = Secrets::ensure(dir.path(), SERVICES, &Options::default()).unwrap();
        assert!(again.shown_once.is_empty());
        let var = |s: &Secrets, kind, var: &str| {
            s.vars(kind)
                .find(|(v, _)| *v == var)
                .map(|(_, value)| value.to_string())
        };
        assert_eq!(
            var(&first, ServiceKind::User, "OPSCONDUCTOR_ADMIN_PASSWORD"),
            var(&again, ServiceKind::User, "OPSCONDUCTOR_ADMIN_PASSWORD")
        );
        assert_eq!(
            var(&first, ServiceKind::Auth, "AUTH_KEY_ENCRYPTION_KEY"),
            var(&again, ServiceKind::Auth, "AUTH_KEY_ENCRYPTION_KEY")
        );
        assert_ne!(
            var(&first, ServiceKind::User, "SERVICE_SECRET"),
            var(&first, ServiceKind::Targets, "SERVICE_SECRET")
        );
        assert_eq!(
            var(&first, ServiceKind::Auth, "SERVICE_SECRET"),
            None,
            "auth has none"
        );
        let identities = var(&first, ServiceKind::Auth, "AUTH_SERVICE_IDENTITIES").unwrap();
        let parsed = opsconductor_auth::parse_identities(&identities).unwrap();
        assert_eq!(parsed.len(), SERVICES.len() - 1, "every service but auth");
        // The user service's directory holds the admin password; no other does.
        assert!(first.path(ServiceKind::User, "admin-password").is_file());
        assert!(!first.path(ServiceKind::Targets, "admin-password").exists());
        assert!(!first
            .path(ServiceKind::Targets, "key-encryption-key")
            .exists());
        assert!(!format!("{first:?}").contains(&first.shown_once[0].1));
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join("user")), 0o700);
        assert_eq!(
            mode(&first.path(ServiceKind::User, "admin-password")),
            0o600
        );

        let provided = Options {
            provided: vec!["OPSCONDUCTOR_ADMIN_PASSWORD".into()],
            ..Options::default()
        };
        let without_admin = tempfile::tempdir().unwrap();
        let secrets = Secrets::ensure(without_admin.path(), SERVICES, &provided).unwrap();
        assert!(secrets.shown_once.is_empty());
        assert!(!secrets.path(ServiceKind::User, "admin-password").exists());
    }

    #[test]
    fn a_flat_directory_of_an_earlier_version_is_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-password"), "old admin\n").unwrap();
        std::fs::write(dir.path().join("auth-key-encryption-key"), "old kek\n").unwrap();
        std::fs::write(dir.path().join("service-user.secret"), "old user\n").unwrap();
        std::fs::write(dir.path().join("service-identities"), "stale\n").unwrap();
        let secrets = Secrets::ensure(dir.path(), SERVICES, &Options::default()).unwrap();
        assert!(secrets.shown_once.is_empty(), "the old password is kept");
        let user: BTreeMap<_, _> = secrets.vars(ServiceKind::User).collect();
        assert_eq!(user["OPSCONDUCTOR_ADMIN_PASSWORD"], "old admin");
        assert_eq!(user["SERVICE_SECRET"], "old user");
        let auth: BTreeMap<_, _> = secrets.vars(ServiceKind::Auth).collect();
        assert_eq!(auth["AUTH_KEY_ENCRYPTION_KEY"], "old kek");
        assert!(!dir.path().join("admin-password").exists());
    }

    #[test]
    fn broker_accounts_get_passwords_and_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            provided: Vec::new(),
            broker: Some(BrokerOptions {
                prefix: "opsconductor".into(),
                vhost: "/".into(),
                strategy: DeadLetterStrategy::AtLeastOnce,
            }),
            database: None,
        };
        let secrets = Secrets::ensure(dir.path(), SERVICES, &options).unwrap();
        let definitions: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("rabbitmq/definitions.json")).unwrap(),
        )
        .unwrap();
        let users: Vec<&str> = definitions["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            users,
            [
                "auth",
                "user",
                "audit",
                "targets",
                "credentials",
                "jobs",
                "executor",
                "scheduler",
                "notification",
                "admin"
            ]
        );
        let password: BTreeMap<_, _> = secrets.vars(ServiceKind::Targets).collect();
        assert!(!definitions.to_string().contains(password["AMQP_PASSWORD"]));
        assert_eq!(mode(&dir.path().join("rabbitmq/definitions.json")), 0o600);
    }
}
