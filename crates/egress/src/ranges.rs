//! The address ranges outbound requests must not reach unless a policy allows them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` lies in a range an outbound request must not reach by default: loopback, private,
/// link-local, unique-local, unspecified, multicast, broadcast/reserved, CGNAT, "this network",
/// and the IPv6 forms that embed such an IPv4 address.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        // CGNAT 100.64.0.0/10: shared with the provider's internal network.
        || (a == 100 && (b & 0xc0) == 64)
        // 240.0.0.0/4 is reserved; nothing public lives there.
        || a >= 240
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return true;
    }
    // fe80::/10 link-local, fc00::/7 unique-local.
    if (seg[0] & 0xffc0) == 0xfe80 || (seg[0] & 0xfe00) == 0xfc00 {
        return true;
    }
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (deprecated compatible) and 64:ff9b::a.b.c.d (NAT64)
    // reach the embedded IPv4 address, so they are judged by it.
    let embedded = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    let mapped = seg[..5] == [0; 5] && seg[5] == 0xffff;
    let compatible = seg[..6] == [0; 6];
    let nat64 = seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (mapped || compatible || nat64) && is_private_v4(embedded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(s: &str) -> bool {
        is_private_address(s.parse().unwrap())
    }
    #[test]
    fn private_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(private(ip), "{ip} should be private");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!private(ip), "{ip} should be public");
        }
    }
}
