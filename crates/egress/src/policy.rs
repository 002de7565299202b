//! Which non-public addresses outbound requests may reach anyway.

use std::net::IpAddr;

use crate::ranges::is_private_address;

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is judged as the IPv4 address it reaches.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0-{max}"))?,
        };
        Ok(Network { addr, prefix })
    }
}

/// Where outbound requests may go: every public address, plus the non-public networks listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allowed: Vec<Network>,
    any: bool,
}

impl Policy {
    /// Public addresses only.
    pub fn public_only() -> Policy {
        Policy::default()
    }

    /// Every address (for tests and trusted set-ups).
    pub fn any() -> Policy {
        Policy {
            allowed: Vec::new(),
            any: true,
        }
    }

    /// A comma-separated list of networks allowed besides public addresses, or `any`; empty is
    /// public only.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("any") {
            return Ok(Policy::any());
        }
        let allowed = text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Network>, String>>()?;
        Ok(Policy {
            allowed,
            any: false,
        })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.any || !is_private_address(ip) || self.allowed.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listed_networks_open_exactly_their_addresses() {
        let policy = Policy::parse(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8").unwrap();
        for allowed in [
            "10.1.2.3",
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "fd12::1",
            "8.8.8.8",
        ] {
            assert!(policy.permits(ip(allowed)), "{allowed}");
        }
        for refused in [
            "127.0.0.2",
            "169.254.169.254",
            "192.168.0.1",
            "::1",
            "fe80::1",
            "11.0.0.0",
        ] {
            let public = !is_private_address(ip(refused));
            assert_eq!(policy.permits(ip(refused)), public, "{refused}");
        }
        assert!(!Policy::public_only().permits(ip("127.0.0.1")));
        assert!(Policy::parse("").unwrap() == Policy::public_only());
        assert!(Policy::parse("ANY").unwrap().permits(ip("169.254.169.254")));
        assert!(Policy::parse("0.0.0.0/0")
            .unwrap()
            .permits(ip("169.254.169.254")));
    }

    #[test]
    fn bad_networks_are_refused_naming_themselves() {
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "ten",
            "10.0.0.0/x",
            "localhost",
        ] {
            let err = Policy::parse(bad).unwrap_err();
            assert!(
                err.contains(bad.split('/').next().unwrap_or(bad)),
                "{bad}: {err}"
            );
        }
    }
}
