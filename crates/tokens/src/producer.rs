//! Producer certificates: the auth service's statement that a message-signing key belongs to a
//! service identity until a given time. A service makes a key pair of its own when it starts
//! (the private half never leaves its memory), has the public half certified when it exchanges
//! its secret for a token, and signs what it publishes with it; consumers check the certificate
//! against the auth service's JWKS, then the message's signature against the certified key.
//!
//! Text form, five dot-separated fields after a version:
//! `p1.<service>.<key, base64url>.<issued at>.<not after>.<issuer kid>.<signature, base64url>`,
//! the signature (by the issuer's key, in its own context) covering everything before it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::{KeySet, SigningKey, TokenError};

/// Never valid as a token, a revocation or a message signature.
const CONTEXT: &str = "opsconductor.producer-certificate.v1";
const VERSION: &str = "p1";
/// Longer certificates are refused unparsed.
const MAX_LEN: usize = 512;

/// A verified certificate: `key` signs for `service` until `not_after` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerCertificate {
    pub service: String,
    pub key: VerifyingKey,
    pub issued_at: u64,
    pub not_after: u64,
}

impl SigningKey {
    /// Certifies `key` as `service`'s message-signing key from `issued_at` to `not_after`.
    pub fn certify_producer(
        &self,
        service: &str,
        key: &VerifyingKey,
        issued_at: u64,
        not_after: u64,
    ) -> String {
        let body = format!(
            "{VERSION}.{service}.{}.{issued_at}.{not_after}.{}",
            URL_SAFE_NO_PAD.encode(key.as_bytes()),
            self.kid()
        );
        let signature = self.sign_detached(CONTEXT, body.as_bytes());
        format!("{body}.{signature}")
    }
}

struct Parts<'a> {
    service: &'a str,
    key: &'a str,
    issued_at: u64,
    not_after: u64,
    kid: &'a str,
    signed: &'a str,
    signature: &'a str,
}

fn parse(text: &str) -> Result<Parts<'_>, TokenError> {
    if text.len() > MAX_LEN {
        return Err(TokenError::Malformed("certificate too long"));
    }
    let fields: Vec<&str> = text.split('.').collect();
    let [version, service, key, issued_at, not_after, kid, signature] = fields[..] else {
        return Err(TokenError::Malformed("certificate is not seven fields"));
    };
    if version != VERSION {
        return Err(TokenError::Malformed("unknown certificate version"));
    }
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| TokenError::Malformed("certificate time is not a number"))
    };
    Ok(Parts {
        service,
        key,
        issued_at: number(issued_at)?,
        not_after: number(not_after)?,
        kid,
        signed: &text[..text.len() - signature.len() - 1],
        signature,
    })
}

impl ProducerCertificate {
    /// The issuer's key id and the issue time a certificate claims, unverified: only for
    /// deciding whether to look for a key not known yet.
    pub fn unverified_issuer(text: &str) -> Option<(String, u64)> {
        parse(text).ok().map(|p| (p.kid.to_string(), p.issued_at))
    }

    /// Checks the issuer's signature against `keys` and decodes the certificate. Validity in
    /// time is the caller's to judge (against when a message says it was signed).
    pub fn verify(text: &str, keys: &KeySet) -> Result<ProducerCertificate, TokenError> {
        let parts = parse(text)?;
        keys.verify_detached(parts.kid, CONTEXT, parts.signed.as_bytes(), parts.signature)?;
        let key = crate::keys::decode_public(parts.key)?;
        Ok(ProducerCertificate {
            service: parts.service.to_string(),
            key,
            issued_at: parts.issued_at,
            not_after: parts.not_after,
        })
    }

    /// Checks a [`SigningKey::sign_detached`] signature made with the certified key.
    pub fn verify_detached(
        &self,
        context: &str,
        payload: &[u8],
        signature: &str,
    ) -> Result<(), TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signature =
            Signature::from_slice(&bytes).map_err(|_| TokenError::Malformed("signature size"))?;
        self.key
            .verify_strict(&crate::keys::detached_input(context, payload), &signature)
            .map_err(|_| TokenError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> (SigningKey, SigningKey, String) {
        let issuer = SigningKey::generate();
        let producer = SigningKey::generate();
        let text = issuer.certify_producer("jobs", &producer.public().key, 100, 700);
        (issuer, producer, text)
    }

    #[test]
    fn a_certificate_verifies_under_its_issuer_and_carries_its_key() {
        let (issuer, producer, text) = issued();
        let keys = KeySet::from_keys([issuer.public()]);
        let cert = ProducerCertificate::verify(&text, &keys).unwrap();
        assert_eq!(cert.service, "jobs");
        assert_eq!((cert.issued_at, cert.not_after), (100, 700));
        assert_eq!(cert.key, producer.public().key);
        let signature = producer.sign_detached("ctx", b"payload");
        cert.verify_detached("ctx", b"payload", &signature).unwrap();
        assert_eq!(
            cert.verify_detached("ctx", b"payloaD", &signature),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            cert.verify_detached("other", b"payload", &signature),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            ProducerCertificate::unverified_issuer(&text),
            Some((issuer.kid().to_string(), 100))
        );
    }

    #[test]
    fn forged_and_altered_certificates_are_refused() {
        let (issuer, producer, text) = issued();
        let keys = KeySet::from_keys([issuer.public()]);
        // Any field changed: the issuer's signature no longer matches.
        for (from, to) in [
            (".jobs.", ".scheduler."),
            (".100.", ".101."),
            (".700.", ".99999999999."),
        ] {
            let altered = text.replacen(from, to, 1);
            assert_ne!(altered, text);
            assert!(
                ProducerCertificate::verify(&altered, &keys).is_err(),
                "{to}"
            );
        }
        // Self-issued: signed by the producer's own key, unknown to the key set.
        let own = producer.certify_producer("jobs", &producer.public().key, 100, 700);
        assert!(matches!(
            ProducerCertificate::verify(&own, &keys),
            Err(TokenError::UnknownKey(_))
        ));
        // A token or message signature by the issuer is not a certificate.
        let other = issuer.sign_detached("opsconductor.message.v1", b"x");
        let spliced = format!("{}.{other}", &text[..text.rfind('.').unwrap()]);
        assert_eq!(
            ProducerCertificate::verify(&spliced, &keys),
            Err(TokenError::BadSignature)
        );
        for garbage in [
            "",
            "p1",
            "p2.jobs.a.1.2.k.s",
            "p1.jobs.a.x.2.k.s",
            "p1.jobs.a.1.2.k.s.extra",
            &"p1.".repeat(200),
        ] {
            assert!(
                ProducerCertificate::verify(garbage, &keys).is_err(),
                "{garbage}"
            );
        }
    }
}
