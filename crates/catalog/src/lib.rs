//! The services this build runs, in start-up order (auth first: the others fetch its keys and
//! tokens). Everything that lists services — `opsconductor up`, `serve`, `healthcheck`,
//! `secrets init`, the broker definitions, the test sandbox — reads this table, so a new
//! service is its crate plus one row here (and its entry in `docker-compose.yml`).

use opsconductor_platform::ServiceKind;
use opsconductor_runtime::ServiceModule;

/// Every implemented service, in start-up order.
pub static SERVICES: &[&dyn ServiceModule] = &[
    &opsconductor_auth::Auth,
    &opsconductor_user::User,
    &opsconductor_audit::Audit,
    &opsconductor_targets::Targets,
    &CREDENTIALS,
    &opsconductor_jobs::Jobs,
    &opsconductor_executor::Executor,
    &opsconductor_scheduler::Scheduler,
    &opsconductor_notification::Notification,
];

static CREDENTIALS: opsconductor_credentials::Credentials =
    opsconductor_credentials::Credentials::production();

/// The module of `kind`, if this build implements it.
pub fn module(kind: ServiceKind) -> Option<&'static dyn ServiceModule> {
    SERVICES.iter().copied().find(|m| m.kind() == kind)
}

/// The kinds this build implements, in start-up order.
pub fn implemented() -> impl Iterator<Item = ServiceKind> {
    SERVICES.iter().map(|m| m.kind())
}

/// Why `kind` cannot be started, for a build without it: `"the notification service is not
/// part of this build yet (implemented: auth, user, ...)"`.
pub fn not_implemented(kind: ServiceKind) -> String {
    let names: Vec<&str> = implemented().map(ServiceKind::name).collect();
    format!(
        "the {kind} service is not part of this build yet (implemented: {})",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_starts_first_and_each_kind_appears_once() {
        let kinds: Vec<ServiceKind> = implemented().collect();
        assert_eq!(kinds.first(), Some(&ServiceKind::Auth));
        let mut unique = kinds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len());
        assert!(module(ServiceKind::User).is_some());
        assert!(module(ServiceKind::Scheduler).is_some());
        assert!(module(ServiceKind::Notification).is_some());
        // Every kind the platform knows is part of this build.
        assert_eq!(kinds.len(), ServiceKind::ALL.len());
        assert!(not_implemented(ServiceKind::Notification).contains(
            "auth, user, audit, targets, credentials, jobs, executor, scheduler, notification"
        ));
    }
}
