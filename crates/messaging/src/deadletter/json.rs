//! A dead letter's body as protobuf JSON, decoded by its message type from the contracts, with
//! fields marked `(opsconductor.common.v1.sensitive)` shown as "<redacted>".

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, ReflectMessage, Value};

const SENSITIVE: &str = "opsconductor.common.v1.sensitive";
const REDACTED: &str = "<redacted>";

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(opsconductor_api::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// The body as JSON, or None when the type is unknown or the body does not decode as it.
pub(crate) fn body_json(message_type: &str, body: &[u8]) -> Option<String> {
    let pool = pool()?;
    let descriptor = pool.get_message_by_name(message_type)?;
    let mut message = DynamicMessage::decode(descriptor, body).ok()?;
    if let Some(sensitive) = pool.get_extension_by_name(SENSITIVE) {
        redact(&mut message, &sensitive);
    }
    serde_json::to_string(&message).ok()
}

fn redact(message: &mut DynamicMessage, sensitive: &prost_reflect::ExtensionDescriptor) {
    let fields: Vec<_> = message.descriptor().fields().collect();
    for field in fields {
        if !message.has_field(&field) {
            continue;
        }
        let options = field.options();
        let secret = options.has_extension(sensitive)
            && matches!(options.get_extension(sensitive).as_ref(), Value::Bool(true));
        if secret {
            match field.kind() {
                Kind::String if !field.is_list() && !field.is_map() => {
                    message.set_field(&field, Value::String(REDACTED.into()));
                }
                Kind::Bytes if !field.is_list() && !field.is_map() => {
                    message.set_field(&field, Value::Bytes(REDACTED.as_bytes().to_vec().into()));
                }
                _ => message.clear_field(&field),
            }
            continue;
        }
        if let Kind::Message(_) = field.kind() {
            match message.get_field_mut(&field) {
                Value::Message(inner) => redact(inner, sensitive),
                Value::List(items) => {
                    for item in items {
                        if let Value::Message(inner) = item {
                            redact(inner, sensitive);
                        }
                    }
                }
                Value::Map(entries) => {
                    for value in entries.values_mut() {
                        if let Value::Message(inner) = value {
                            redact(inner, sensitive);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn decodes_known_types_and_redacts_secrets() {
        use opsconductor_api::user::v1::{ChannelDestination, NotificationPreferences};
        let prefs = NotificationPreferences {
            user_id: "u-1".into(),
            destinations: vec![ChannelDestination {
                channel: 4,
                destination: "https://hooks.example.com/secret-token".into(),
                enabled: true,
                signing_credential_id: String::new(),
            }],
            ..Default::default()
        };
        let json = body_json(
            "opsconductor.user.v1.NotificationPreferences",
            &prefs.encode_to_vec(),
        )
        .unwrap();
        assert!(json.contains("u-1"), "{json}");
        assert!(!json.contains("secret-token"), "{json}");
        assert!(json.contains(REDACTED), "{json}");
        assert!(body_json("opsconductor.nope.v1.Nothing", b"").is_none());
        assert!(body_json(
            "opsconductor.user.v1.NotificationPreferences",
            &[0xff, 0xff]
        )
        .is_none());
    }
}
