//! Escaping a value for where it goes.

/// One POSIX shell word that is exactly `value`: single quotes, with each `'` written as `'\''`.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str(r"'\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Every byte but A-Z a-z 0-9 `-._~` as `%XX`, so a value stays inside one URL component.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What /bin/sh makes of the quoted word is the value itself, whatever it holds.
    #[test]
    fn a_real_shell_reads_back_the_value() {
        for value in [
            "plain",
            "x'; touch /tmp/pwned; '",
            "$(id) `id` ${HOME} \\ \" \n newline",
            "",
            "''''",
        ] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(value)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), value);
        }
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_bytes() {
        assert_eq!(percent_encode("a/b?c=d#é"), "a%2Fb%3Fc%3Dd%23%C3%A9");
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
    }
}
