//! Destinations as responses show them. Webhook, Slack and Teams URLs carry their credential
//! in the path or query, so responses keep only the scheme and host; an email address is shown
//! whole to an administrator or its recipient, and as `j…@example.com` to anyone else.

use opsconductor_api::common::v1::NotificationChannel;

pub fn destination(channel: i32, destination: &str, reveal_email: bool) -> String {
    if channel == NotificationChannel::Email as i32 {
        if reveal_email {
            return destination.to_string();
        }
        return match destination.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}…@{domain}")
            }
            None => "…".into(),
        };
    }
    match url::Url::parse(destination) {
        Ok(u) => match u.host_str() {
            Some(host) => match u.port() {
                Some(port) => format!("{}://{host}:{port}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            },
            None => "…".into(),
        },
        Err(_) => "…".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_host_and_emails_their_domain() {
        let slack = NotificationChannel::Slack as i32;
        let email = NotificationChannel::Email as i32;
        assert_eq!(
            destination(slack, "https://hooks.slack.com/services/T0/B0/secret", true),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            destination(slack, "http://127.0.0.1:8080/hook?token=secret", true),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(
            destination(email, "jane@example.com", true),
            "jane@example.com"
        );
        assert_eq!(
            destination(email, "jane@example.com", false),
            "j…@example.com"
        );
        assert_eq!(destination(slack, "not a url", false), "…");
    }
}
