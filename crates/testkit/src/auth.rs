//! Tokens for servers started on their own, without an auth service: an in-memory signing key
//! behind a static key set, the same verifier and authenticator the platform uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::TokenRevoked;
use opsconductor_api::common::v1::Role;
use opsconductor_messaging::{BrokerConfig, ProducerTrust};
use opsconductor_platform::auth::{
    AuthError, Authenticator, IssuedToken, KeySource, StaticKeys, StaticToken, TokenFetcher,
    TokenSettings, TokenSource, Verifier,
};
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::{Env, ServerConfig};
use opsconductor_platform::principal::role_name;
use opsconductor_platform::time::now_secs;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{RevocationSource, ServiceContext};
use opsconductor_tokens::{Claims, KeySet, PublicKey, SigningKey};

/// A signing key and the verifier that trusts it.
pub struct TestAuth {
    key: Arc<SigningKey>,
    pub settings: TokenSettings,
    verifier: Arc<Verifier>,
}

impl Default for TestAuth {
    fn default() -> Self {
        Self::new()
    }
}

struct NoRevocations;

impl RevocationSource for NoRevocations {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRevoked>, opsconductor_platform::ApiError>> {
        futures::future::ready(Ok(Vec::new())).boxed()
    }
}

impl TestAuth {
    pub fn new() -> TestAuth {
        let key = Arc::new(SigningKey::generate());
        let settings = TokenSettings::default();
        let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::new(KeySet::from_keys([key.public()])));
        let verifier = Arc::new(Verifier::new(settings.clone(), keys));
        TestAuth {
            key,
            settings,
            verifier,
        }
    }

    /// The key set tokens and certificates are checked against.
    pub fn keys(&self) -> Arc<dyn KeySource> {
        self.verifier.keys().clone()
    }

    /// Signs as `service` (its message key certified by this key) and trusts what this key
    /// certified: a service's producer trust, without an auth service.
    pub fn producer_trust(&self, service: &str) -> ProducerTrust {
        producer_trust(self.key.clone(), service)
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::new(Authenticator::new(self.verifier.clone()).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        self.key
            .sign(claims)
            .unwrap_or_else(|e| panic!("sign: {e}"))
    }

    /// A user with `role`, valid for 15 minutes.
    pub fn user_token(&self, user_id: &str, role: Role) -> String {
        self.sign(&Claims::user(
            &self.settings.issuer,
            &self.settings.audience,
            user_id,
            role_name(role),
            0,
            now_secs(),
            900,
        ))
    }

    pub fn admin_token(&self) -> String {
        self.user_token("01900000-0000-7000-8000-00000000ad00", Role::Admin)
    }

    pub fn service_token(&self, service: &str) -> String {
        self.sign(&Claims::service(
            &self.settings.issuer,
            &self.settings.audience,
            service,
            now_secs(),
            600,
        ))
    }

    /// Tokens of `service`'s identity, with its message key certified, as the auth service
    /// would hand them out.
    pub fn service_source(&self, service: &str) -> TokenSource {
        TokenSource::new(Mint {
            key: self.key.clone(),
            settings: self.settings.clone(),
            service: service.to_string(),
        })
    }

    /// A context for running `kind` on its own: its clients carry a token of its identity.
    pub fn context(
        &self,
        kind: ServiceKind,
        server: ServerConfig,
        broker: BrokerConfig,
        env: &Env,
    ) -> ServiceContext {
        let clients = Clients::from_env(env)
            .unwrap_or_else(|e| panic!("clients: {e}"))
            .with_tokens(self.service_source(kind.name()));
        ServiceContext::new(
            kind,
            server,
            broker,
            self.settings.clone(),
            Arc::new(clients),
            self.verifier.clone(),
            Arc::new(NoRevocations),
        )
    }
}

/// Publishes as `service` would, its message key certified by `issuer` (the auth service's
/// active key, say), and trusts what `issuer` certified.
pub fn producer_trust(issuer: Arc<SigningKey>, service: &str) -> ProducerTrust {
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::new(KeySet::from_keys([issuer.public()])));
    let source = TokenSource::new(Mint {
        key: issuer,
        settings: TokenSettings::default(),
        service: service.to_string(),
    });
    ProducerTrust::new(Arc::new(source), keys)
}

struct Mint {
    key: Arc<SigningKey>,
    settings: TokenSettings,
    service: String,
}

impl TokenFetcher for Mint {
    fn fetch<'a>(
        &'a self,
        message_key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<IssuedToken, AuthError>> {
        let claims = Claims::service(
            &self.settings.issuer,
            &self.settings.audience,
            &self.service,
            now_secs(),
            600,
        );
        let issued = self
            .key
            .sign(&claims)
            .map_err(|e| AuthError::Fetch(e.to_string()))
            .map(|token| IssuedToken {
                token,
                expire_time: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
                message_certificate: Some(self.key.certify_producer(
                    &self.service,
                    &message_key.key,
                    claims.iat,
                    claims.exp,
                )),
            });
        futures::future::ready(issued).boxed()
    }
}

/// A token source that always hands out `token` (valid for ten minutes).
pub fn static_source(token: String) -> TokenSource {
    TokenSource::new(StaticToken(IssuedToken {
        token,
        expire_time: SystemTime::now() + Duration::from_secs(600),
        message_certificate: None,
    }))
}

/// `authorization: Bearer <token>` for a request's metadata.
pub fn bearer<T>(request: &mut tonic::Request<T>, token: &str) {
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| panic!("header value: {e}"));
    request.metadata_mut().insert("authorization", value);
}

/// A lazily connected channel to `url` that sends `token` on every call.
pub fn channel_as(url: &str, token: String) -> opsconductor_platform::auth::AuthChannel {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .connect_lazy();
    opsconductor_platform::auth::AuthChannel::new(channel, Some(static_source(token)))
}
