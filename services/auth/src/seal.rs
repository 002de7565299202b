//! Sealing signing keys at rest: XChaCha20-Poly1305 under the key-encryption key, with the key
//! id as associated data so a sealed key cannot be swapped onto another row.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub fn seal(kek: &[u8; 32], kid: &str, secret: &[u8]) -> Result<Vec<u8>, String> {
    let cipher = XChaCha20Poly1305::new(kek.into());
    let nonce: [u8; 24] = rand::random();
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| "sealing failed".to_string())?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(out)
}

pub fn open(kek: &[u8; 32], kid: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
    if sealed.len() < 24 {
        return Err("sealed key is too short".into());
    }
    let (nonce, ciphertext) = sealed.split_at(24);
    XChaCha20Poly1305::new(kek.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| {
            "cannot open a signing key: AUTH_KEY_ENCRYPTION_KEY is not the key it was sealed with"
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_the_key_id() {
        let kek = [7u8; 32];
        let sealed = seal(&kek, "kid-1", b"secret").unwrap();
        assert_eq!(open(&kek, "kid-1", &sealed).unwrap(), b"secret");
        assert!(open(&kek, "kid-2", &sealed).is_err());
        assert!(open(&[8u8; 32], "kid-1", &sealed).is_err());
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }
}
