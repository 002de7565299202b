//! Name resolution that applies the policy to the addresses a name resolves to.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::{Policy, Refused};

/// Resolves with the system resolver, then drops the addresses the policy refuses, so a public
/// name pointed at an internal address is refused at connection time, after resolution, where a
/// check of the name alone could be raced by DNS rebinding.
pub struct GuardedResolver {
    pub policy: Policy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if kept.is_empty() && !resolved.is_empty() {
                return Err(Box::new(Refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_names_are_refused_unless_allowed() {
        let refused = GuardedResolver {
            policy: Policy::public_only(),
        }
        .resolve("localhost".parse().unwrap())
        .await;
        let err = refused.err().expect("localhost must be refused");
        assert!(err.to_string().contains("private address"));
        let allowed = GuardedResolver {
            policy: Policy::parse("127.0.0.0/8,::1").unwrap(),
        }
        .resolve("localhost".parse().unwrap())
        .await
        .expect("allowed");
        assert!(allowed.count() > 0);
    }
}
