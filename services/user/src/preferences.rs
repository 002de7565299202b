//! Notification preferences: defaults, and the rules a stored set must follow.

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::user::v1::{ChannelDestination, NotificationPreferences, User};
use opsconductor_platform::validate::{is_email, Violations};

pub const MAX_DESTINATIONS: usize = 16;

/// What a user who never set preferences gets: failures, by email to their address.
pub fn defaults(user: &User) -> NotificationPreferences {
    NotificationPreferences {
        user_id: user.id.clone(),
        destinations: vec![ChannelDestination {
            channel: NotificationChannel::Email as i32,
            destination: user.email.clone(),
            enabled: true,
            signing_credential_id: String::new(),
        }],
        notify_on_start: false,
        notify_on_success: false,
        notify_on_failure: true,
        quiet_hours: None,
        update_time: None,
    }
}

pub fn validate(v: &mut Violations, prefs: &NotificationPreferences) {
    v.id("preferences.user_id", &prefs.user_id);
    v.check(
        prefs.destinations.len() <= MAX_DESTINATIONS,
        "preferences.destinations",
        format!("at most {MAX_DESTINATIONS} destinations"),
    );
    for (i, d) in prefs.destinations.iter().enumerate() {
        let field = format!("preferences.destinations[{i}]");
        let dest_field = format!("{field}.destination");
        match NotificationChannel::try_from(d.channel) {
            Ok(NotificationChannel::Email) => {
                if v.required(&dest_field, &d.destination) {
                    v.check(
                        is_email(&d.destination),
                        &dest_field,
                        "must be an email address",
                    );
                }
            }
            Ok(NotificationChannel::Slack | NotificationChannel::Teams) => {
                if v.required(&dest_field, &d.destination) {
                    v.check(
                        is_url(&d.destination, &["https"]),
                        &dest_field,
                        "must be an https:// webhook URL",
                    );
                }
            }
            Ok(NotificationChannel::Webhook) => {
                if v.required(&dest_field, &d.destination) {
                    v.check(
                        is_url(&d.destination, &["https", "http"]),
                        &dest_field,
                        "must be an http:// or https:// URL",
                    );
                }
            }
            Ok(NotificationChannel::Unspecified) | Err(_) => v.add(
                format!("{field}.channel"),
                "must be EMAIL, SLACK, TEAMS or WEBHOOK",
            ),
        }
        v.max_chars(&dest_field, &d.destination, 2048);
        if !d.signing_credential_id.is_empty() {
            let key_field = format!("{field}.signing_credential_id");
            v.id(&key_field, &d.signing_credential_id);
            v.check(
                d.channel == NotificationChannel::Webhook as i32,
                &key_field,
                "only webhooks are signed",
            );
        }
    }
    if let Some(q) = &prefs.quiet_hours {
        let set = q.enabled || !q.start.is_empty() || !q.end.is_empty() || !q.time_zone.is_empty();
        if set {
            v.check(
                parse_hhmm(&q.start).is_some(),
                "preferences.quiet_hours.start",
                "must be HH:MM (24-hour)",
            );
            v.check(
                parse_hhmm(&q.end).is_some(),
                "preferences.quiet_hours.end",
                "must be HH:MM (24-hour)",
            );
            v.check(
                q.time_zone.parse::<chrono_tz::Tz>().is_ok(),
                "preferences.quiet_hours.time_zone",
                "must be an IANA time zone such as Europe/Berlin",
            );
        }
    }
}

/// Minutes after midnight of a strict "HH:MM".
pub fn parse_hhmm(value: &str) -> Option<u32> {
    let (h, m) = value.split_once(':')?;
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn is_url(value: &str, schemes: &[&str]) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    schemes.contains(&scheme)
        && !host.is_empty()
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("00:00"), Some(0));
        assert_eq!(parse_hhmm("23:59"), Some(23 * 60 + 59));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("7:00"), None);
        assert_eq!(parse_hhmm("+1:+5"), None);
    }

    #[test]
    fn urls() {
        assert!(is_url("https://hooks.slack.com/x", &["https"]));
        assert!(!is_url("http://hooks.slack.com/x", &["https"]));
        assert!(!is_url("https:///x", &["https"]));
    }
}
