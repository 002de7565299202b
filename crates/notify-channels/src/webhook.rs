//! Standard Webhooks (https://www.standardwebhooks.com) signing: receivers verify the body,
//! its id and timestamp with a secret shared when the webhook was configured.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::ChannelError;

/// The shared secret. Wiped from memory when dropped; never printed.
#[derive(Clone)]
pub struct SigningKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

impl SigningKey {
    /// `whsec_<base64>` (the spec's form) decodes to its bytes; anything else is taken as the
    /// raw UTF-8 bytes, for receivers that configured a plain string.
    pub fn parse(secret: &str) -> Result<SigningKey, ChannelError> {
        let bytes = match secret.strip_prefix("whsec_") {
            Some(encoded) => STANDARD
                .decode(encoded.trim())
                // The decoder's message can quote the offending byte, so it is not passed on.
                .map_err(|_| {
                    ChannelError::SigningKey("whsec_ secret is not valid base64".into())
                })?,
            None => secret.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(ChannelError::SigningKey("secret is empty".into()));
        }
        Ok(SigningKey(Zeroizing::new(bytes)))
    }
}

/// `v1,<base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}"))>`.
pub fn sign(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.0) else {
        // HMAC takes keys of any length; this arm is unreachable in practice.
        return String::new();
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-id`, `webhook-timestamp` and (with a key) `webhook-signature` headers. The id
/// should stay the same across retries of one message so receivers can deduplicate; one that is
/// not a valid header value (control characters) is left out rather than sent mangled.
pub fn webhook_headers(
    msg_id: &str,
    timestamp: i64,
    key: Option<&SigningKey>,
    body: &[u8],
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    match HeaderValue::from_str(msg_id) {
        Ok(id) => {
            headers.insert("webhook-id", id);
        }
        Err(_) => tracing::warn!("webhook message id is not a valid header value; left out"),
    }
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    if let Some(key) = key {
        if let Ok(sig) = HeaderValue::from_str(&sign(key, msg_id, timestamp, body)) {
            headers.insert("webhook-signature", sig);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn spec_test_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(
            sign(&key, MSG_ID, TS, BODY),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn headers_carry_id_timestamp_signature() {
        let key = SigningKey::parse(SECRET).unwrap();
        let h = webhook_headers(MSG_ID, TS, Some(&key), BODY);
        assert_eq!(h["webhook-id"], MSG_ID);
        assert_eq!(h["webhook-timestamp"], "1614265330");
        assert_eq!(
            h["webhook-signature"],
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let unsigned = webhook_headers(MSG_ID, TS, None, BODY);
        assert!(unsigned.get("webhook-signature").is_none());
        assert_eq!(unsigned.len(), 2);
    }

    #[test]
    fn parse_forms_and_debug() {
        assert!(SigningKey::parse("").is_err());
        assert!(SigningKey::parse("whsec_").is_err());
        assert!(SigningKey::parse("whsec_!!notbase64").is_err());
        let raw = SigningKey::parse("plain-secret").unwrap();
        assert_eq!(raw.0.as_slice(), b"plain-secret");
        assert_eq!(format!("{raw:?}"), "SigningKey(redacted)");
        let err = SigningKey::parse("whsec_!!supersecret")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("supersecret"), "{err}");
    }
}
