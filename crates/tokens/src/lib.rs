//! Tokens for OpsConductor: compact JWTs signed with Ed25519 (`alg: EdDSA`, a `kid` in the
//! header), public keys as a JWKS, offline verification with `exp`/`nbf`/`iss`/`aud` checks,
//! and a bounded cache of verified tokens so that steady state costs a hash lookup instead of
//! a signature check.
//!
//! ```
//! use opsconductor_tokens::{Claims, KeySet, SigningKey, Validation, verify};
//! let key = SigningKey::generate();
//! let claims = Claims::user("opsconductor", "opsconductor", "user-1", "admin", 1, 0, 900);
//! let token = key.sign(&claims).unwrap();
//! let keys = KeySet::from_keys([key.public()]);
//! let v = Validation::new("opsconductor", "opsconductor");
//! assert_eq!(verify(&token, &keys, &v, 10).unwrap().sub, "user-1");
//! ```

mod cache;
mod claims;
mod error;
mod jwk;
mod jwt;
mod keys;
mod producer;

pub use cache::{Expiring, VerifiedCache};
pub use claims::{Claims, Kind};
/// The public half of an Ed25519 key, as certificates and key sets hold it.
pub use ed25519_dalek::VerifyingKey;
pub use error::TokenError;
pub use jwk::Jwk;
pub use jwt::{decode_header, unverified_issued_at, verify, Header, Validation};
pub use keys::{KeySet, PublicKey, SigningKey};
pub use producer::ProducerCertificate;
