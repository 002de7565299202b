//! Every gRPC method the platform serves, with its kind, for the metrics' labels: read once
//! from the contracts' descriptors.

use std::sync::OnceLock;

use opsconductor_metrics::MethodKinds;

/// The platform's services, health and reflection. A path not listed is recorded as
/// "unknown", so invented paths cannot grow the series.
pub fn method_kinds() -> MethodKinds {
    static KINDS: OnceLock<MethodKinds> = OnceLock::new();
    KINDS
        .get_or_init(|| {
            let mut kinds = MethodKinds::new();
            for set in [
                opsconductor_api::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ] {
                let Ok(pool) = prost_reflect::DescriptorPool::decode(set) else {
                    continue;
                };
                for service in pool.services() {
                    for method in service.methods() {
                        let kind =
                            match (method.is_client_streaming(), method.is_server_streaming()) {
                                (false, false) => "unary",
                                (true, false) => "client_stream",
                                (false, true) => "server_stream",
                                (true, true) => "bidi_stream",
                            };
                        kinds.insert(service.full_name(), method.name(), kind);
                    }
                }
            }
            for reflection in [
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ] {
                kinds.insert(reflection, "ServerReflectionInfo", "bidi_stream");
            }
            kinds
        })
        .clone()
}
