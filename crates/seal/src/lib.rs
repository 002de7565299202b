//! Sealing secrets at rest: XChaCha20-Poly1305 under a 256-bit key, with a random 192-bit nonce
//! (random nonces of this size never repeat in practice) and associated data that binds the
//! sealed bytes to where they belong — a key id, a credential and its version — so a sealed value
//! moved to another row does not open. Keys and opened plaintexts are zeroed when dropped.
//!
//! ```
//! use opsconductor_seal::{open, seal, Key};
//! let key = Key::generate();
//! let sealed = seal(&key, b"credential:42:v1", b"hunter2");
//! assert_eq!(&open(&key, b"credential:42:v1", &sealed).unwrap()[..], b"hunter2");
//! assert!(open(&key, b"credential:43:v1", &sealed).is_err());
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

const NONCE: usize = 24;

/// A 256-bit key. Debug shows nothing of it; dropped, it is zeroed.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// A new random key.
    pub fn generate() -> Key {
        Key(Zeroizing::new(rand::random()))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// From exactly 32 bytes (e.g. an opened data key).
    pub fn from_slice(bytes: &[u8]) -> Option<Key> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Key::from_bytes(bytes))
    }

    /// From 32 bytes in standard base64 (how the deployment's keys are written).
    pub fn from_base64(text: &str) -> Option<Key> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
        Key::from_slice(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Why a sealed value did not open. Never says more: not which byte, not the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealed value is too short")]
    TooShort,
    #[error("the sealed value does not open with this key and associated data")]
    Refused,
}

/// `nonce ‖ ciphertext ‖ tag` of `plaintext` under `key`, bound to `aad`.
pub fn seal(key: &Key, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE] = rand::random();
    let sealed = XChaCha20Poly1305::new(key.as_bytes().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Encryption fails only for messages beyond the AEAD's limit (256 GiB).
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend(sealed);
    out
}

/// The plaintext of a [`seal`]ed value, if `key` and `aad` are the ones it was sealed with.
pub fn open(key: &Key, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < NONCE + 16 {
        return Err(SealError::TooShort);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    XChaCha20Poly1305::new(key.as_bytes().into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_key_and_place() {
        let key = Key::from_bytes([7u8; 32]);
        let sealed = seal(&key, b"kid-1", b"secret");
        assert_eq!(&open(&key, b"kid-1", &sealed).unwrap()[..], b"secret");
        assert_eq!(open(&key, b"kid-2", &sealed), Err(SealError::Refused));
        assert_eq!(
            open(&Key::from_bytes([8u8; 32]), b"kid-1", &sealed),
            Err(SealError::Refused)
        );
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            open(&key, b"kid-1", &sealed[..10]),
            Err(SealError::TooShort)
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(open(&key, b"kid-1", &flipped), Err(SealError::Refused));
        assert_ne!(
            seal(&key, b"kid-1", b"secret"),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
        assert!(Key::from_base64("not base64").is_none());
    }
}
