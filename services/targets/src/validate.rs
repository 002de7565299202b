//! Field rules for targets.

use std::collections::HashSet;
use std::net::IpAddr;

use opsconductor_api::targets::v1::{OperatingSystem, Protocol, Target};
use opsconductor_platform::validate::{is_slug, Violations};

pub const MAX_TAGS: usize = 32;
pub const MAX_LABELS: usize = 64;

pub fn name(v: &mut Violations, field: &str, value: &str) {
    if v.required(field, value) {
        v.check(
            is_slug(value, 1, 63, &['-']),
            field,
            "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        );
    }
}

pub fn tag(v: &mut Violations, field: &str, value: &str) {
    v.check(
        is_slug(value, 1, 63, &['-', '_', '.']),
        field,
        "must be 1-63 characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit",
    );
}

/// A host name (RFC 1123) or an IPv4/IPv6 address.
pub fn is_address(value: &str) -> bool {
    if value.parse::<IpAddr>().is_ok() {
        return true;
    }
    // A dotted all-numeric name that is not an IP (300.1.1.1) is a typo, not a host name.
    let numeric_tld = value
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    !numeric_tld
        && value.len() <= 253
        && value.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub fn target(v: &mut Violations, t: &Target) {
    name(v, "target.name", &t.name);
    if v.required("target.address", &t.address) {
        v.check(
            is_address(&t.address),
            "target.address",
            "must be a host name or an IP address",
        );
    }
    v.check(
        (1..=65535).contains(&t.port),
        "target.port",
        "must be between 1 and 65535",
    );
    if OperatingSystem::try_from(t.os).is_err() {
        v.add("target.os", format!("{} is not an operating system", t.os));
    }
    v.check(
        t.tags.len() <= MAX_TAGS,
        "target.tags",
        format!("at most {MAX_TAGS} tags"),
    );
    let mut seen = HashSet::new();
    for (i, value) in t.tags.iter().enumerate() {
        let field = format!("target.tags[{i}]");
        tag(v, &field, value);
        v.check(seen.insert(value), &field, format!("{value:?} is repeated"));
    }
    v.check(
        t.labels.len() <= MAX_LABELS,
        "target.labels",
        format!("at most {MAX_LABELS} labels"),
    );
    for (key, value) in &t.labels {
        let field = format!("target.labels[{key:?}]");
        v.check(
            is_slug(key, 1, 63, &['-', '_', '.', '/']),
            &field,
            "key must be 1-63 characters of a-z, 0-9, '-', '_', '.' and '/'",
        );
        v.max_chars(&field, value, 256);
        v.printable(&field, value);
    }
    let mut protocols = HashSet::new();
    for (i, r) in t.credential_refs.iter().enumerate() {
        let field = format!("target.credential_refs[{i}]");
        match Protocol::try_from(r.protocol) {
            Ok(Protocol::Unspecified) | Err(_) => {
                v.add(format!("{field}.protocol"), "must be SSH, WINRM or HTTP")
            }
            Ok(p) => v.check(
                protocols.insert(p),
                format!("{field}.protocol"),
                "only one credential per protocol",
            ),
        }
        v.id(&format!("{field}.credential_id"), &r.credential_id);
    }
    v.max_chars("target.description", &t.description, 1024);
    if !t.ssh_host_key_fingerprint.is_empty() {
        v.check(
            is_sha256_fingerprint(&t.ssh_host_key_fingerprint),
            "target.ssh_host_key_fingerprint",
            "must be \"SHA256:\" and 43 characters of unpadded base64, as ssh-keygen -l prints it",
        );
    }
}

/// `SHA256:` and the unpadded standard base64 of 32 bytes.
fn is_sha256_fingerprint(value: &str) -> bool {
    value.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    })
}

#[cfg(test)]
mod tests {
    use super::{is_address, is_sha256_fingerprint};

    #[test]
    fn fingerprints() {
        assert!(is_sha256_fingerprint(
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
        ));
        assert!(!is_sha256_fingerprint(
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s="
        ));
        assert!(!is_sha256_fingerprint("MD5:aa:bb"));
        assert!(!is_sha256_fingerprint("SHA256:short"));
    }

    #[test]
    fn addresses() {
        assert!(is_address("10.0.0.1"));
        assert!(is_address("::1"));
        assert!(is_address("web-01.example.com"));
        assert!(!is_address("web_01"));
        assert!(!is_address("-web"));
        assert!(!is_address("a..b"));
        assert!(!is_address("300.1.1.1"));
        assert!(!is_address("999.999.999.999"));
    }
}
