use serde::{Deserialize, Serialize};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    User,
    Service,
}

/// The claims OpsConductor puts in a token. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id, or the service id.
    pub sub: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    /// A unique id, so a token can be told apart from another with the same claims.
    pub jti: String,
    pub kind: Kind,
    /// The user's role (`viewer`, `operator`, `admin`); absent for services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The user's token version when issued: a revoke-all raises it, refusing older tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<u64>,
    /// The session (refresh-token family) a user token belongs to: ending it revokes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

impl Claims {
    /// A user token valid from `now` for `ttl_secs`.
    #[allow(clippy::too_many_arguments)]
    pub fn user(
        iss: &str,
        aud: &str,
        user_id: &str,
        role: &str,
        version: u64,
        now: u64,
        ttl_secs: u64,
    ) -> Claims {
        Claims {
            iss: iss.to_string(),
            aud: aud.to_string(),
            sub: user_id.to_string(),
            exp: now + ttl_secs,
            nbf: now,
            iat: now,
            jti: new_jti(),
            kind: Kind::User,
            role: Some(role.to_string()),
            ver: Some(version),
            sid: None,
        }
    }

    /// These claims, for the session `sid`.
    pub fn with_session(mut self, sid: &str) -> Claims {
        self.sid = Some(sid.to_string());
        self
    }

    /// A service token valid from `now` for `ttl_secs`.
    pub fn service(iss: &str, aud: &str, service_id: &str, now: u64, ttl_secs: u64) -> Claims {
        Claims {
            iss: iss.to_string(),
            aud: aud.to_string(),
            sub: service_id.to_string(),
            exp: now + ttl_secs,
            nbf: now,
            iat: now,
            jti: new_jti(),
            kind: Kind::Service,
            role: None,
            ver: None,
            sid: None,
        }
    }
}

fn new_jti() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}
