//! Service authentication and authorization (DESIGN §4), on both sides of a call.
//!
//! Servers: [`AuthLayer`] takes the bearer token of every call, verifies it offline with the
//! [`Verifier`] (JWKS from the auth service, refetched on an unknown key id; a bounded cache of
//! verified tokens, so steady state costs a hash lookup; revocations applied as they are
//! broadcast), then checks the method's caller policy read from the descriptor set. Health and
//! reflection stay open. Handlers find the verified [`crate::principal::Principal`] in the
//! request extensions.
//!
//! Clients: a [`TokenSource`] per service identity fetches, caches and refreshes its token
//! ahead of expiry, one fetch at a time; [`AuthChannel`] attaches it to every call, and
//! forwards a user's token when a service calls on that user's behalf.

mod channel;
mod error;
mod keys;
mod layer;
mod policy;
mod revocations;
mod settings;
mod token_source;
mod verifier;

pub use channel::AuthChannel;
pub use error::AuthError;
pub use keys::{KeySource, RemoteJwks, StaticKeys};
pub use layer::{AuthLayer, Authenticator, Refusal, RefusalAudit};
pub use policy::admits;
pub use revocations::{Revocations, CLOCK_SKEW};
pub use settings::TokenSettings;
pub use token_source::{
    IssuedToken, MessageSigning, ServiceCredentials, StaticToken, TokenFetcher, TokenSource,
};
pub use verifier::{Verified, Verifier};

/// The header carrying `Bearer <access token>`.
pub const AUTHORIZATION: &str = "authorization";
/// The header a service sets to the user's access token when it calls on that user's behalf.
pub const ON_BEHALF_OF: &str = "x-on-behalf-of";
