//! The services of the platform, their ports and the variables that locate them.

use std::fmt;

/// One of the platform's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    Auth,
    User,
    Audit,
    Credentials,
    Targets,
    Jobs,
    Notification,
    Scheduler,
    Executor,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 9] = [
        ServiceKind::Auth,
        ServiceKind::User,
        ServiceKind::Audit,
        ServiceKind::Credentials,
        ServiceKind::Targets,
        ServiceKind::Jobs,
        ServiceKind::Notification,
        ServiceKind::Scheduler,
        ServiceKind::Executor,
    ];

    /// The short name: used as service identity, data file name and in logs.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Auth => "auth",
            ServiceKind::User => "user",
            ServiceKind::Audit => "audit",
            ServiceKind::Credentials => "credentials",
            ServiceKind::Targets => "targets",
            ServiceKind::Jobs => "jobs",
            ServiceKind::Notification => "notification",
            ServiceKind::Scheduler => "scheduler",
            ServiceKind::Executor => "executor",
        }
    }

    /// Offset from the port base (3000 by default): auth is 3001 … executor 3009.
    pub fn port_offset(self) -> u16 {
        match self {
            ServiceKind::Auth => 1,
            ServiceKind::User => 2,
            ServiceKind::Audit => 3,
            ServiceKind::Credentials => 4,
            ServiceKind::Targets => 5,
            ServiceKind::Jobs => 6,
            ServiceKind::Notification => 7,
            ServiceKind::Scheduler => 8,
            ServiceKind::Executor => 9,
        }
    }

    pub fn default_port(self) -> u16 {
        3000 + self.port_offset()
    }

    /// The variable that holds this service's URL(s), e.g. `USER_SERVICE_URL`.
    pub fn url_var(self) -> &'static str {
        match self {
            ServiceKind::Auth => "AUTH_SERVICE_URL",
            ServiceKind::User => "USER_SERVICE_URL",
            ServiceKind::Audit => "AUDIT_SERVICE_URL",
            ServiceKind::Credentials => "CREDENTIALS_SERVICE_URL",
            ServiceKind::Targets => "TARGETS_SERVICE_URL",
            ServiceKind::Jobs => "JOBS_SERVICE_URL",
            ServiceKind::Notification => "NOTIFICATION_SERVICE_URL",
            ServiceKind::Scheduler => "SCHEDULER_SERVICE_URL",
            ServiceKind::Executor => "EXECUTOR_SERVICE_URL",
        }
    }

    /// The fully qualified gRPC service name, e.g. `opsconductor.user.v1.UserService`.
    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Auth => "opsconductor.auth.v1.AuthService",
            ServiceKind::User => "opsconductor.user.v1.UserService",
            ServiceKind::Audit => "opsconductor.audit.v1.AuditService",
            ServiceKind::Credentials => "opsconductor.credentials.v1.CredentialsService",
            ServiceKind::Targets => "opsconductor.targets.v1.TargetsService",
            ServiceKind::Jobs => "opsconductor.jobs.v1.JobsService",
            ServiceKind::Notification => "opsconductor.notification.v1.NotificationService",
            ServiceKind::Scheduler => "opsconductor.scheduler.v1.SchedulerService",
            ServiceKind::Executor => "opsconductor.executor.v1.ExecutorService",
        }
    }

    pub fn from_name(name: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
