//! Envelope encryption. Each secret version is sealed with a data key of its own (random, 256
//! bits); the data key is wrapped by a key-encryption key (KEK) version; each KEK version is
//! sealed under the master key (`CREDENTIALS_MASTER_KEY`), which never touches the database.
//! Rotating the KEK re-wraps data keys — a few dozen bytes each — not the secrets.
//!
//! Every seal binds its place through associated data, so sealed bytes moved elsewhere do not
//! open: a secret to its credential and version, a wrapped data key to its credential, version
//! and key version, a KEK to its version.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use opsconductor_seal::{open, seal, Key};
use zeroize::Zeroizing;

/// Why something did not open: the wrong master key, or bytes that are not where they were
/// sealed. Never more than that.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("key-encryption key version {0} does not open with CREDENTIALS_MASTER_KEY")]
    MasterKey(u64),
    #[error("key-encryption key version {0} is retired or missing")]
    KeyGone(u64),
    #[error("a sealed secret of credential {0} does not open")]
    Secret(String),
}

fn kek_aad(version: u64) -> Vec<u8> {
    format!("opsconductor.credentials.kek.v1|{version}").into_bytes()
}

fn data_key_aad(id: &str, secret_version: u64, key_version: u64) -> Vec<u8> {
    format!("opsconductor.credentials.data-key.v1|{id}|{secret_version}|{key_version}").into_bytes()
}

fn secret_aad(id: &str, secret_version: u64) -> Vec<u8> {
    format!("opsconductor.credentials.secret.v1|{id}|{secret_version}").into_bytes()
}

/// A secret version, sealed.
pub struct Sealed {
    pub sealed_secret: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub key_version: u64,
}

/// The master key and the KEK versions opened so far.
pub struct Vault {
    master: Key,
    keks: RwLock<HashMap<u64, Key>>,
}

impl Vault {
    pub fn new(master: Key) -> Vault {
        Vault {
            master,
            keks: RwLock::new(HashMap::new()),
        }
    }

    /// A new KEK for `version`, and how it is stored.
    pub fn new_kek(&self, version: u64) -> Vec<u8> {
        let kek = Key::generate();
        let sealed = seal(&self.master, &kek_aad(version), kek.as_bytes());
        self.keks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(version, kek);
        sealed
    }

    /// KEK `version` from its stored form (`None`: retired).
    pub fn kek(&self, version: u64, sealed: Option<&[u8]>) -> Result<Key, VaultError> {
        if let Some(kek) = self
            .keks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version)
        {
            return Ok(kek.clone());
        }
        let sealed = sealed.ok_or(VaultError::KeyGone(version))?;
        let bytes = open(&self.master, &kek_aad(version), sealed)
            .map_err(|_| VaultError::MasterKey(version))?;
        let kek = Key::from_slice(&bytes).ok_or(VaultError::MasterKey(version))?;
        self.keks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(version, kek.clone());
        Ok(kek)
    }

    /// Forgets a retired KEK.
    pub fn forget(&self, version: u64) {
        self.keks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&version);
    }

    /// Seals `plaintext` as version `secret_version` of credential `id`, under KEK
    /// `key_version`.
    pub fn seal(
        &self,
        kek: &Key,
        key_version: u64,
        id: &str,
        secret_version: u64,
        plaintext: &[u8],
    ) -> Sealed {
        let data_key = Key::generate();
        Sealed {
            sealed_secret: seal(&data_key, &secret_aad(id, secret_version), plaintext),
            wrapped_key: seal(
                kek,
                &data_key_aad(id, secret_version, key_version),
                data_key.as_bytes(),
            ),
            key_version,
        }
    }

    /// The plaintext of a sealed secret version.
    pub fn open(
        &self,
        kek: &Key,
        id: &str,
        secret_version: u64,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let data_key = self.unwrap(
            kek,
            id,
            secret_version,
            sealed.key_version,
            &sealed.wrapped_key,
        )?;
        open(
            &data_key,
            &secret_aad(id, secret_version),
            &sealed.sealed_secret,
        )
        .map_err(|_| VaultError::Secret(id.to_string()))
    }

    fn unwrap(
        &self,
        kek: &Key,
        id: &str,
        secret_version: u64,
        key_version: u64,
        wrapped: &[u8],
    ) -> Result<Key, VaultError> {
        let bytes = open(kek, &data_key_aad(id, secret_version, key_version), wrapped)
            .map_err(|_| VaultError::Secret(id.to_string()))?;
        Key::from_slice(&bytes).ok_or_else(|| VaultError::Secret(id.to_string()))
    }

    /// A data key wrapped under `old` (version `from`) wrapped again under `new` (version `to`).
    #[allow(clippy::too_many_arguments)]
    pub fn rewrap(
        &self,
        old: &Key,
        from: u64,
        new: &Key,
        to: u64,
        id: &str,
        secret_version: u64,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let data_key = self.unwrap(old, id, secret_version, from, wrapped)?;
        Ok(seal(
            new,
            &data_key_aad(id, secret_version, to),
            data_key.as_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_where_they_belong() {
        let vault = Vault::new(Key::generate());
        let stored = vault.new_kek(1);
        let kek = vault.kek(1, Some(&stored)).unwrap();
        let sealed = vault.seal(&kek, 1, "c1", 1, b"hunter2");
        assert_eq!(&vault.open(&kek, "c1", 1, &sealed).unwrap()[..], b"hunter2");
        // Another credential's row, or another version: does not open.
        assert!(vault.open(&kek, "c2", 1, &sealed).is_err());
        assert!(vault.open(&kek, "c1", 2, &sealed).is_err());
        // Re-wrapped under a new KEK: opens with it, the secret untouched.
        let new_stored = vault.new_kek(2);
        let new = vault.kek(2, Some(&new_stored)).unwrap();
        let rewrapped = vault
            .rewrap(&kek, 1, &new, 2, "c1", 1, &sealed.wrapped_key)
            .unwrap();
        let moved = Sealed {
            sealed_secret: sealed.sealed_secret.clone(),
            wrapped_key: rewrapped,
            key_version: 2,
        };
        assert_eq!(&vault.open(&new, "c1", 1, &moved).unwrap()[..], b"hunter2");
        // A KEK sealed under another master key does not open.
        let other = Vault::new(Key::generate());
        assert!(matches!(
            other.kek(1, Some(&stored)),
            Err(VaultError::MasterKey(1))
        ));
        assert!(matches!(other.kek(3, None), Err(VaultError::KeyGone(3))));
    }
}
