//! Compact JWS with `alg: EdDSA` only. Anything else — `none`, HMAC, RSA — is refused
//! before a signature is looked at, so algorithm confusion is impossible.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier};
use serde::{Deserialize, Serialize};

use crate::{Claims, KeySet, TokenError};

/// Tokens longer than this are refused unparsed.
const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
}

/// What a verifier accepts besides a good signature.
#[derive(Debug, Clone)]
pub struct Validation {
    pub issuer: String,
    pub audience: String,
    /// Allowed clock skew, in seconds, for `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Validation {
    pub fn new(issuer: &str, audience: &str) -> Validation {
        Validation {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway_secs: 30,
        }
    }
}

pub(crate) fn encode(
    kid: &str,
    claims: &Claims,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<String, TokenError> {
    let header = Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
        kid: Some(kid.to_string()),
    };
    let header = serde_json::to_vec(&header).map_err(|e| TokenError::Encode(e.to_string()))?;
    let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Encode(e.to_string()))?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

fn split(token: &str) -> Result<(&str, &str, &str), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(TokenError::Malformed("not three dot-separated parts")),
    }
}

/// The header, unverified: which key a token claims to be signed with.
pub fn decode_header(token: &str) -> Result<Header, TokenError> {
    let (header, _, _) = split(token)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("header is not JSON"))
}

/// The `iat` a token claims, unverified: only for deciding whether its unknown key could be
/// newer than the key set at hand, never for trusting anything.
pub fn unverified_issued_at(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Issued {
        iat: u64,
    }
    let (_, payload, _) = split(token).ok()?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Issued>(&bytes).ok().map(|i| i.iat)
}

/// Verifies signature, then `exp`, `nbf`, `iss` and `aud` at time `now` (Unix seconds).
pub fn verify(
    token: &str,
    keys: &KeySet,
    validation: &Validation,
    now: u64,
) -> Result<Claims, TokenError> {
    let (header_b64, payload_b64, signature_b64) = split(token)?;
    let header = decode_header(token)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::UnsupportedAlgorithm(header.alg));
    }
    let kid = header
        .kid
        .ok_or(TokenError::Malformed("no kid in header"))?;
    let key = keys
        .get(&kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    let signature =
        Signature::from_slice(&signature).map_err(|_| TokenError::Malformed("signature size"))?;
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;

    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|_| TokenError::Malformed("payload is not the expected claims"))?;
    if now >= claims.exp.saturating_add(validation.leeway_secs) {
        return Err(TokenError::Expired);
    }
    if now.saturating_add(validation.leeway_secs) < claims.nbf {
        return Err(TokenError::NotYetValid);
    }
    if claims.iss != validation.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if claims.aud != validation.audience {
        return Err(TokenError::WrongAudience);
    }
    Ok(claims)
}
