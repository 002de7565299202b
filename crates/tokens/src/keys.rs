use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::jwt::encode;
use crate::{Claims, Jwk, TokenError};

/// A private Ed25519 signing key with its key id. Debug shows the key id only.
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A new random key; its id is derived from the public key.
    pub fn generate() -> SigningKey {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        SigningKey {
            kid: key_id(&key.verifying_key()),
            key,
        }
    }

    /// A key restored from its 32 secret bytes (as returned by [`SigningKey::secret_bytes`]).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<SigningKey, TokenError> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TokenError::BadKey("an Ed25519 secret key is 32 bytes"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&bytes);
        Ok(SigningKey {
            kid: key_id(&key.verifying_key()),
            key,
        })
    }

    /// The secret bytes, for storage. Keep them encrypted at rest.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            kid: self.kid.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `claims` as a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        encode(&self.kid, claims, |input| {
            self.key.sign(input).to_bytes().to_vec()
        })
    }
}

/// What a detached signature covers: a context naming what is signed (so a signature made for
/// one purpose can never pass for another, nor for a token), then the payload.
pub(crate) fn detached_input(context: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(context.len() + 1 + payload.len());
    input.extend_from_slice(context.as_bytes());
    input.push(0);
    input.extend_from_slice(payload);
    input
}

impl SigningKey {
    /// A detached signature of `payload` in `context`, base64url.
    pub fn sign_detached(&self, context: &str, payload: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.key.sign(&detached_input(context, payload)).to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A public key with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub key: VerifyingKey,
}

impl PublicKey {
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.key.as_bytes()),
            kid: self.kid.clone(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }

    pub fn from_jwk(jwk: &Jwk) -> Result<PublicKey, TokenError> {
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(TokenError::BadKey("only OKP Ed25519 keys are accepted"));
        }
        if !jwk.alg.is_empty() && jwk.alg != "EdDSA" {
            return Err(TokenError::BadKey("the key's alg must be EdDSA"));
        }
        Ok(PublicKey {
            kid: jwk.kid.clone(),
            key: decode_public(&jwk.x)?,
        })
    }
}

/// An Ed25519 public key from its base64url form (a JWK's `x`, a certificate's key).
pub(crate) fn decode_public(text: &str) -> Result<VerifyingKey, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TokenError::BadKey("the key is not base64url"))?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| TokenError::BadKey("an Ed25519 public key is 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| TokenError::BadKey("not a valid Ed25519 point"))
}

/// The public keys tokens may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> KeySet {
        KeySet {
            keys: keys.into_iter().map(|k| (k.kid, k.key)).collect(),
        }
    }

    /// Keys from a JWKS; keys this platform cannot use are skipped, not fatal.
    pub fn from_jwks<'a>(jwks: impl IntoIterator<Item = &'a Jwk>) -> KeySet {
        KeySet::from_keys(jwks.into_iter().filter_map(|j| PublicKey::from_jwk(j).ok()))
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// Checks a [`SigningKey::sign_detached`] signature made by key `kid`.
    pub fn verify_detached(
        &self,
        kid: &str,
        context: &str,
        payload: &[u8],
        signature: &str,
    ) -> Result<(), TokenError> {
        use ed25519_dalek::Verifier;
        let key = self
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| TokenError::Malformed("signature size"))?;
        key.verify(&detached_input(context, payload), &signature)
            .map_err(|_| TokenError::BadSignature)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A stable id from the public key: base64url of its SHA-256, shortened.
fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}
