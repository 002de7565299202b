//! The check every fire makes of its schedule's owner: the account must exist, be enabled and
//! be at least an operator. Answers are cached briefly (the TTL is configurable, 0 turns the
//! cache off) so thousands of fires a second do not each cost a call to the user service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::GetUserRequest;
use opsconductor_platform::client::Clients;
use tonic::Code;

/// Why a fire may not run as its owner.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// For good: (reason, message).
    Refused(&'static str, String),
    /// The user service could not answer; try the fire again later.
    Unavailable(String),
}

type Cached = (Instant, Result<(), Refusal>);

#[derive(Clone)]
pub struct OwnerCheck {
    clients: Arc<Clients>,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl OwnerCheck {
    pub fn new(clients: Arc<Clients>, ttl: Duration) -> OwnerCheck {
        OwnerCheck {
            clients,
            ttl,
            cache: Arc::default(),
        }
    }

    pub async fn check(&self, user_id: &str) -> Result<(), Refusal> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, answer)) = cache.get(user_id) {
                if at.elapsed() < self.ttl {
                    return answer.clone();
                }
            }
        }
        let answer = self.ask(user_id).await;
        if !matches!(answer, Err(Refusal::Unavailable(_))) && !self.ttl.is_zero() {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(user_id.to_string(), (Instant::now(), answer.clone()));
            }
        }
        answer
    }

    async fn ask(&self, user_id: &str) -> Result<(), Refusal> {
        let request = GetUserRequest {
            id: user_id.to_string(),
        };
        let user = match self.clients.user().get_user(request).await {
            Ok(response) => response.into_inner().user.unwrap_or_default(),
            Err(status) if status.code() == Code::NotFound => {
                return Err(Refusal::Refused(
                    "OWNER_NOT_FOUND",
                    format!("the schedule's owner {user_id} no longer exists"),
                ))
            }
            Err(status) => {
                return Err(Refusal::Unavailable(format!(
                    "the user service: {}",
                    status.message()
                )))
            }
        };
        if user.disabled {
            return Err(Refusal::Refused(
                "OWNER_DISABLED",
                format!("the schedule's owner {} is disabled", user.username),
            ));
        }
        let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
        if (role as i32) < (Role::Operator as i32) {
            return Err(Refusal::Refused(
                "OWNER_ROLE",
                format!(
                    "the schedule's owner {} is a {}, and running jobs needs an operator",
                    user.username,
                    role.as_str_name()
                        .trim_start_matches("ROLE_")
                        .to_lowercase()
                ),
            ));
        }
        Ok(())
    }
}
