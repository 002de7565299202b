//! Caller policies and idempotency levels, read from the descriptor set.
//!
//! prost drops unknown fields, so the custom `(opsconductor.common.v1.policy)` option is read
//! with prost-reflect from the encoded descriptor set that `build.rs` writes. A served method
//! without a policy stops the server from starting: authorization is deny-by-default.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use opsconductor_api::common::v1::CallerPolicy;
use prost_reflect::{DescriptorPool, Value};
use thiserror::Error;

pub const POLICY_EXTENSION: &str = "opsconductor.common.v1.policy";

#[derive(Debug, Error, Clone)]
pub enum PolicyError {
    #[error("descriptor set cannot be read: {0}")]
    Descriptor(String),
    #[error("service {0} is not in the descriptor set")]
    UnknownService(String),
    #[error("methods without a caller policy (deny-by-default): {}", .0.join(", "))]
    MissingPolicies(Vec<String>),
}

/// Whether a method may be retried, from the standard `idempotency_level` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Not declared: a retry could repeat a side effect.
    Unknown,
    /// A read: always safe to retry.
    NoSideEffects,
    /// Repeating it has the same effect as doing it once.
    Idempotent,
}

impl Idempotency {
    pub fn retry_safe(self) -> bool {
        !matches!(self, Idempotency::Unknown)
    }
}

/// What the descriptor set says about one method.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// `/package.Service/Method`, the HTTP/2 path of the call.
    pub path: String,
    /// `None` when the method declares no (or an empty) policy.
    pub policy: Option<CallerPolicy>,
    pub idempotency: Idempotency,
    pub server_streaming: bool,
    pub client_streaming: bool,
    /// The number of the request's string field `idempotency_key`, if it has one: a call
    /// that sets it may be retried whatever the method's idempotency level.
    pub idempotency_key_field: Option<u32>,
}

/// Every method of every OpsConductor service, keyed by path.
#[derive(Debug)]
pub struct PolicyTable {
    methods: BTreeMap<String, MethodInfo>,
    services: BTreeMap<String, Vec<String>>,
}

impl PolicyTable {
    /// The table of the contracts compiled into this binary, read once.
    pub fn global() -> Result<&'static PolicyTable, PolicyError> {
        static TABLE: OnceLock<Result<PolicyTable, PolicyError>> = OnceLock::new();
        TABLE
            .get_or_init(|| PolicyTable::decode(opsconductor_api::FILE_DESCRIPTOR_SET))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn decode(encoded: &[u8]) -> Result<PolicyTable, PolicyError> {
        let pool =
            DescriptorPool::decode(encoded).map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        let extension = pool
            .get_extension_by_name(POLICY_EXTENSION)
            .ok_or_else(|| PolicyError::Descriptor(format!("{POLICY_EXTENSION} is missing")))?;
        let mut methods = BTreeMap::new();
        let mut services = BTreeMap::new();
        for service in pool.services() {
            if !service.full_name().starts_with("opsconductor.") {
                continue;
            }
            let mut paths = Vec::new();
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let options = method.options();
                let policy = if options.has_extension(&extension) {
                    match options.get_extension(&extension).as_ref() {
                        Value::Message(m) => {
                            m.transcode_to::<CallerPolicy>().ok().filter(is_declared)
                        }
                        _ => None,
                    }
                } else {
                    None
                };
                let idempotency = match options
                    .get_field_by_name("idempotency_level")
                    .as_deref()
                    .and_then(Value::as_enum_number)
                {
                    Some(1) => Idempotency::NoSideEffects,
                    Some(2) => Idempotency::Idempotent,
                    _ => Idempotency::Unknown,
                };
                paths.push(path.clone());
                methods.insert(
                    path.clone(),
                    MethodInfo {
                        path,
                        policy,
                        idempotency,
                        server_streaming: method.is_server_streaming(),
                        client_streaming: method.is_client_streaming(),
                        idempotency_key_field: method
                            .input()
                            .get_field_by_name("idempotency_key")
                            .filter(|f| f.kind() == prost_reflect::Kind::String && !f.is_list())
                            .map(|f| f.number()),
                    },
                );
            }
            services.insert(service.full_name().to_string(), paths);
        }
        Ok(PolicyTable { methods, services })
    }

    pub fn method(&self, path: &str) -> Option<&MethodInfo> {
        self.methods.get(path)
    }

    pub fn methods(&self) -> impl Iterator<Item = &MethodInfo> {
        self.methods.values()
    }

    /// Fully qualified names of every OpsConductor service in the contracts.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// Methods of a service, as paths.
    pub fn service_methods(&self, service: &str) -> Result<&[String], PolicyError> {
        self.services
            .get(service)
            .map(Vec::as_slice)
            .ok_or_else(|| PolicyError::UnknownService(service.to_string()))
    }

    /// Fails unless every method of `service` declares a caller policy.
    pub fn require_policies(&self, service: &str) -> Result<(), PolicyError> {
        let missing: Vec<String> = self
            .service_methods(service)?
            .iter()
            .filter(|path| self.methods.get(*path).is_none_or(|m| m.policy.is_none()))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::MissingPolicies(missing))
        }
    }
}

/// A policy that lets nobody in is as good as none: treat it as undeclared.
fn is_declared(policy: &CallerPolicy) -> bool {
    policy.public || policy.allow_self || policy.min_role != 0 || !policy.services.is_empty()
}
