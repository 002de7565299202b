//! Secret material as it comes in: checked against the credential's kind and parsed, so bad
//! material is refused with a field violation (never a 500), and what can be shown about it —
//! algorithm, fingerprint, subject, issuer, expiry — is read from it.

use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::{CredentialKind, SecretMaterial};
use opsconductor_platform::validate::Violations;

/// What is shown about a secret besides the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub algorithm: String,
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    /// A certificate's notAfter, in microseconds.
    pub not_after: Option<i64>,
}

const MAX_SECRET: usize = 8192;
const MAX_PEM: usize = 64 * 1024;

/// Checks `secret` (the field `field`) for a credential of `kind`; returns what it shows.
pub fn check(
    v: &mut Violations,
    field: &str,
    kind: CredentialKind,
    secret: Option<&SecretMaterial>,
) -> Metadata {
    let Some(material) = secret.and_then(|s| s.material.as_ref()) else {
        v.add(field, "is required");
        return Metadata::default();
    };
    let expected = match material {
        Material::Password(_) => CredentialKind::Password,
        Material::SshKey(_) => CredentialKind::SshKey,
        Material::ApiToken(_) => CredentialKind::ApiToken,
        Material::Certificate(_) => CredentialKind::Certificate,
    };
    if expected != kind {
        v.add(
            field,
            format!(
                "holds {} material, the credential is {}",
                expected.as_str_name(),
                kind.as_str_name()
            ),
        );
        return Metadata::default();
    }
    match material {
        Material::Password(p) => {
            let f = format!("{field}.password.password");
            v.check(
                !p.password.is_empty() && p.password.len() <= 4096,
                f,
                "must be 1-4096 bytes",
            );
            Metadata::default()
        }
        Material::ApiToken(t) => {
            let f = format!("{field}.api_token.token");
            v.check(
                !t.token.is_empty() && t.token.len() <= MAX_SECRET,
                &f,
                "must be 1-8192 bytes",
            );
            v.check(
                !t.token.chars().any(char::is_control),
                f,
                "must not contain control characters",
            );
            Metadata::default()
        }
        Material::SshKey(k) => ssh_key(
            v,
            &format!("{field}.ssh_key"),
            &k.private_key,
            &k.passphrase,
        ),
        Material::Certificate(c) => certificate(
            v,
            &format!("{field}.certificate"),
            &c.certificate_chain_pem,
            &c.private_key_pem,
            &c.passphrase,
        ),
    }
}

/// [`check`] on a blocking thread: decrypting a key to check its passphrase is deliberately
/// slow (bcrypt, PBKDF2, scrypt), and must not hold up the runtime's other requests. Hands the
/// violations and the material back.
pub async fn check_blocking(
    mut v: Violations,
    kind: CredentialKind,
    secret: Option<SecretMaterial>,
) -> (Violations, Metadata, Option<SecretMaterial>) {
    let checked = tokio::task::spawn_blocking(move || {
        let meta = check(&mut v, "secret", kind, secret.as_ref());
        (v, meta, secret)
    })
    .await;
    match checked {
        Ok(done) => done,
        // Only a panic inside the parsers lands here: refuse the material rather than fail.
        Err(_) => {
            let mut v = Violations::new();
            v.add("secret", "could not be parsed");
            (v, Metadata::default(), None)
        }
    }
}

fn ssh_key(v: &mut Violations, field: &str, pem: &str, passphrase: &str) -> Metadata {
    let key_field = format!("{field}.private_key");
    if pem.is_empty() || pem.len() > MAX_PEM {
        v.add(
            key_field,
            "must be an OpenSSH private key of at most 64 KiB",
        );
        return Metadata::default();
    }
    let key = match ssh_key::PrivateKey::from_openssh(pem) {
        Ok(key) => key,
        Err(_) => {
            v.add(
                key_field,
                "is not an OpenSSH private key (\"-----BEGIN OPENSSH PRIVATE KEY-----\"; \
                 `ssh-keygen -p -m RFC4716` rewrites others)",
            );
            return Metadata::default();
        }
    };
    if key.is_encrypted() {
        // The key names its own KDF cost: a crafted one would keep a core busy for hours.
        if let ssh_key::Kdf::Bcrypt { rounds, .. } = key.kdf() {
            if *rounds > MAX_BCRYPT_ROUNDS {
                v.add(
                    key_field,
                    format!(
                        "is encrypted with {rounds} bcrypt rounds, more than {MAX_BCRYPT_ROUNDS}"
                    ),
                );
                return Metadata::default();
            }
        }
        if passphrase.is_empty() {
            v.add(
                format!("{field}.passphrase"),
                "is required: the key is encrypted",
            );
            return Metadata::default();
        }
        if key.decrypt(passphrase).is_err() {
            v.add(format!("{field}.passphrase"), "does not decrypt the key");
            return Metadata::default();
        }
    } else if !passphrase.is_empty() {
        v.add(
            format!("{field}.passphrase"),
            "must be empty: the key is not encrypted",
        );
    }
    let public = key.public_key();
    Metadata {
        algorithm: public.algorithm().to_string(),
        fingerprint: public.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        ..Metadata::default()
    }
}

/// The name of a public key algorithm by its OID.
fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.1" => "rsaEncryption".into(),
        "1.2.840.10045.2.1" => "id-ecPublicKey".into(),
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        other => other.to_string(),
    }
}

fn certificate(
    v: &mut Violations,
    field: &str,
    chain: &str,
    key_pem: &str,
    passphrase: &str,
) -> Metadata {
    let chain_field = format!("{field}.certificate_chain_pem");
    let certificates = if chain.is_empty() || chain.len() > MAX_PEM {
        None
    } else {
        x509_cert::Certificate::load_pem_chain(chain.as_bytes()).ok()
    };
    let Some(first) = certificates.as_ref().and_then(|c| c.first()) else {
        v.add(
            chain_field,
            "is not a PEM certificate chain (\"-----BEGIN CERTIFICATE-----\", the leaf first)",
        );
        return Metadata::default();
    };
    let tbs = first.tbs_certificate();
    let spki = tbs.subject_public_key_info();
    let algorithm = algorithm_name(&spki.algorithm.oid.to_string());
    let not_after = tbs.validity().not_after.to_unix_duration().as_micros();
    let fingerprint = {
        use base64::engine::general_purpose::STANDARD_NO_PAD;
        use base64::Engine;
        use sha2::{Digest, Sha256};
        use x509_cert::der::Encode;
        let der = spki.to_der().unwrap_or_default();
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(der)))
    };
    private_key(
        v,
        &format!("{field}.private_key_pem"),
        key_pem,
        &format!("{field}.passphrase"),
        passphrase,
    );
    Metadata {
        algorithm,
        fingerprint,
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        not_after: i64::try_from(not_after).ok(),
    }
}

/// A PKCS#8 private key in PEM, encrypted with `passphrase` or not.
fn private_key(
    v: &mut Violations,
    field: &str,
    pem: &str,
    passphrase_field: &str,
    passphrase: &str,
) {
    let refused = "is not a PKCS#8 private key (\"-----BEGIN PRIVATE KEY-----\" or \
                   \"-----BEGIN ENCRYPTED PRIVATE KEY-----\"; `openssl pkcs8 -topk8` converts others)";
    if pem.is_empty() || pem.len() > MAX_PEM {
        v.add(field, refused);
        return;
    }
    let Ok((label, document)) = pkcs8::SecretDocument::from_pem(pem) else {
        v.add(field, refused);
        return;
    };
    match label {
        "PRIVATE KEY" => {
            if pkcs8::PrivateKeyInfoRef::try_from(document.as_bytes()).is_err() {
                v.add(field, refused);
            } else if !passphrase.is_empty() {
                v.add(passphrase_field, "must be empty: the key is not encrypted");
            }
        }
        "ENCRYPTED PRIVATE KEY" => {
            let Ok(encrypted) = pkcs8::EncryptedPrivateKeyInfoRef::try_from(document.as_bytes())
            else {
                v.add(field, refused);
                return;
            };
            if let Err(why) = affordable(&encrypted.encryption_algorithm) {
                v.add(field, why);
            } else if passphrase.is_empty() {
                v.add(passphrase_field, "is required: the key is encrypted");
            } else if encrypted.decrypt(passphrase).is_err() {
                v.add(passphrase_field, "does not decrypt the key");
            }
        }
        _ => v.add(field, refused),
    }
}

/// Whether a PKCS#8 key's own KDF parameters cost a bounded amount to try: PBKDF2 up to
/// [`MAX_PBKDF2_ITERATIONS`], scrypt up to [`MAX_SCRYPT_BYTES`] of memory.
fn affordable(scheme: &pkcs8::pkcs5::EncryptionScheme) -> Result<(), String> {
    use pkcs8::pkcs5::pbes2::Kdf;
    let pkcs8::pkcs5::EncryptionScheme::Pbes2(params) = scheme else {
        return Ok(()); // PBES1: fixed, cheap, and refused by the decryption anyway
    };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => Err(format!(
            "is encrypted with {} PBKDF2 iterations, more than {MAX_PBKDF2_ITERATIONS}",
            p.iteration_count
        )),
        Kdf::Scrypt(p) => {
            let bytes = 128u128
                * u128::from(p.cost_parameter)
                * u128::from(p.block_size)
                * u128::from(p.parallelization.max(1));
            if bytes > MAX_SCRYPT_BYTES {
                Err(format!(
                    "is encrypted with scrypt parameters needing {} MiB, more than {} MiB",
                    bytes >> 20,
                    MAX_SCRYPT_BYTES >> 20
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// `ssh-keygen` uses 16 rounds unless told otherwise (`-a`).
const MAX_BCRYPT_ROUNDS: u32 = 256;
/// OpenSSL uses 2,048 (PBKDF2) by default.
const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;
/// OpenSSL's default scrypt (N = 2^14, r = 8) needs 16 MiB.
const MAX_SCRYPT_BYTES: u128 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use opsconductor_api::credentials::v1::{ApiTokenSecret, PasswordSecret, SshKeySecret};

    fn material(m: Material) -> SecretMaterial {
        SecretMaterial { material: Some(m) }
    }

    fn fields(v: Violations) -> Vec<String> {
        match v.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.violations().iter().map(|f| f.field.clone()).collect(),
        }
    }

    #[test]
    fn kinds_must_match_and_bad_material_names_its_field() {
        let mut v = Violations::new();
        check(
            &mut v,
            "secret",
            CredentialKind::SshKey,
            Some(&material(Material::Password(PasswordSecret {
                password: "x".into(),
            }))),
        );
        assert_eq!(fields(v), ["secret"]);
        let mut v = Violations::new();
        check(
            &mut v,
            "secret",
            CredentialKind::SshKey,
            Some(&material(Material::SshKey(SshKeySecret {
                private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n".into(),
                passphrase: String::new(),
            }))),
        );
        assert_eq!(fields(v), ["secret.ssh_key.private_key"]);
        let mut v = Violations::new();
        check(
            &mut v,
            "secret",
            CredentialKind::ApiToken,
            Some(&material(Material::ApiToken(ApiTokenSecret {
                token: "line\nbreak".into(),
            }))),
        );
        assert_eq!(fields(v), ["secret.api_token.token"]);
        let mut v = Violations::new();
        check(&mut v, "secret", CredentialKind::Password, None);
        assert_eq!(fields(v), ["secret"]);
    }
}
