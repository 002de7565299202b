//! Outbound HTTP that cannot be aimed at the platform's own network. A URL an operator (or a
//! subscription, or a template) supplies must not reach cloud metadata endpoints, the broker's
//! management port, internal services or loopback: [`is_private_address`] names the ranges,
//! a [`Policy`] lists the networks allowed anyway, [`GuardedResolver`] applies it to what a name
//! resolves to (at connect time), and [`check_literal`] to an address written in the URL, which
//! never reaches a resolver. Clients must also turn off proxies from the environment (a proxy
//! resolves names itself) and not follow redirects past these checks.

mod policy;
mod ranges;
mod resolver;

use std::net::IpAddr;

pub use policy::{Network, Policy};
pub use ranges::is_private_address;
pub use resolver::GuardedResolver;

/// The error a refused destination carries; find it again in an error chain to name the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the destination is a private address (loopback, private, link-local or another \
             non-public range)",
        )
    }
}

impl std::error::Error for Refused {}

/// The address written in `url`'s host, if it is one.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Refuses a URL whose host is an address the policy refuses (names are checked when resolved).
pub fn check_literal(url: &url::Url, policy: &Policy) -> Result<(), Refused> {
    match literal_ip(url) {
        Some(ip) if !policy.permits(ip) => Err(Refused),
        _ => Ok(()),
    }
}

/// Whether `error` (a reqwest error, say) was caused by a refused destination.
pub fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<Refused>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}
