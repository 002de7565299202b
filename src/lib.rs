//! OpsConductor's contracts: the generated messages, tonic clients and servers of every service,
//! and the encoded descriptor set they were generated from.
//!
//! ```no_run
//! use opsconductor_api::user::v1::{user_service_client::UserServiceClient, GetUserRequest};
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = UserServiceClient::connect("http://127.0.0.1:3002").await?;
//! let user = client.get_user(GetUserRequest { id: "…".into() }).await?;
//! # Ok(()) }
//! ```

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// The encoded `FileDescriptorSet` of every contract, with its imports (google.protobuf included).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/opsconductor_descriptor.bin"));

/// Stands in for a sensitive field in `Debug` output (see the `sensitive` field option).
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

include!(concat!(env!("OUT_DIR"), "/redacted_debug.rs"));

macro_rules! package {
    ($(#[$doc:meta])* $name:ident, $pkg:literal) => {
        $(#[$doc])*
        pub mod $name {
            pub mod v1 {
                tonic::include_proto!($pkg);
            }
        }
    };
}

package!(
    /// Types shared by every contract: roles, caller policies, channels, actors.
    common,
    "opsconductor.common.v1"
);
package!(
    /// Sign-in, tokens, service identities and signing keys.
    auth,
    "opsconductor.auth.v1"
);
package!(
    /// Users, roles, passwords and notification preferences.
    user,
    "opsconductor.user.v1"
);
package!(
    /// The append-only, hash-chained audit log.
    audit,
    "opsconductor.audit.v1"
);
package!(
    /// Encrypted credentials.
    credentials,
    "opsconductor.credentials.v1"
);
package!(
    /// The host inventory.
    targets,
    "opsconductor.targets.v1"
);
package!(
    /// Job definitions, runs, steps and logs.
    jobs,
    "opsconductor.jobs.v1"
);
package!(
    /// Notification templates and deliveries.
    notification,
    "opsconductor.notification.v1"
);
package!(
    /// Schedules and their fire records.
    scheduler,
    "opsconductor.scheduler.v1"
);
package!(
    /// The stateless step executor.
    executor,
    "opsconductor.executor.v1"
);
package!(
    /// Dead-letter queue administration.
    deadletters,
    "opsconductor.deadletters.v1"
);
