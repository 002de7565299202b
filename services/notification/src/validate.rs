//! The rules requests follow, shared by the RPCs that take the same fields.

use std::collections::HashMap;

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::send_notification_request::{Content, Recipient};
use opsconductor_api::notification::v1::SendNotificationRequest;
use opsconductor_notify_channels::{check_email, check_url};
use opsconductor_platform::validate::{is_slug, Violations};
use sha2::{Digest, Sha256};

/// Longest body or template, in characters.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_VARIABLES: usize = 200;

pub fn idempotency_key(v: &mut Violations, key: &str) {
    if v.required("idempotency_key", key) {
        v.max_chars("idempotency_key", key, 128);
        v.printable("idempotency_key", key);
    }
}

pub fn channel(v: &mut Violations, field: &str, value: i32) -> Option<NotificationChannel> {
    match NotificationChannel::try_from(value) {
        Ok(NotificationChannel::Unspecified) | Err(_) => {
            v.add(field, "must be EMAIL, SLACK, TEAMS or WEBHOOK");
            None
        }
        Ok(c) => Some(c),
    }
}

/// Lower case words joined by dots: "run.failed", "deploy.done".
pub fn event_type(v: &mut Violations, field: &str, value: &str) {
    if v.required(field, value) {
        v.check(
            value.len() <= 64
                && value
                    .split('.')
                    .all(|part| is_slug(part, 1, 64, &['_', '-'])),
            field,
            "must be lower-case words joined by dots, at most 64 characters (e.g. run.failed)",
        );
    }
}

/// Never quotes the destination: a webhook URL carries its token.
pub fn destination(
    v: &mut Violations,
    field: &str,
    channel: NotificationChannel,
    value: &str,
    allow_plain_http: bool,
) {
    if !v.required(field, value) {
        return;
    }
    let checked = match channel {
        NotificationChannel::Email => check_email(value),
        other => check_url(other, value, allow_plain_http).map(|_| ()),
    };
    if let Err(why) = checked {
        v.add(field, why);
    }
}

pub fn variables(v: &mut Violations, field: &str, vars: &HashMap<String, String>) {
    v.check(
        vars.len() <= MAX_VARIABLES,
        field,
        format!("at most {MAX_VARIABLES} variables"),
    );
    for (name, value) in vars {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok {
            v.add(
                format!("{field}[{name}]"),
                "names are letters, digits and _ in dot-separated parts",
            );
        }
        v.max_chars(&format!("{field}[{name}]"), value, 16 * 1024);
    }
}

pub fn signing_credential(
    v: &mut Violations,
    field: &str,
    id: &str,
    channel: Option<NotificationChannel>,
) {
    if id.is_empty() {
        return;
    }
    v.id(field, id);
    v.check(
        channel == Some(NotificationChannel::Webhook),
        field,
        "only webhooks are signed",
    );
}

/// "key=value", the form of a job label.
pub fn label(v: &mut Violations, field: &str, value: &str) {
    let ok = match value.split_once('=') {
        Some((k, val)) => {
            is_slug(k, 1, 63, &['-', '_', '.', '/']) && val.len() <= 255 && !val.contains('\n')
        }
        None => false,
    };
    v.check(ok, field, "must be key=value");
}

/// What makes two SendNotification requests "the same request" for an idempotency key.
pub fn request_hash(req: &SendNotificationRequest) -> String {
    let mut h = Sha256::new();
    let mut part = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    part(&req.channel.to_string());
    match &req.recipient {
        Some(Recipient::Destination(d)) => {
            part("destination");
            part(d);
        }
        Some(Recipient::UserId(u)) => {
            part("user");
            part(u);
        }
        None => part("none"),
    }
    part(&req.event_type);
    match &req.content {
        Some(Content::Literal(l)) => {
            part("literal");
            part(&l.subject);
            part(&l.body);
        }
        Some(Content::Template(t)) => {
            part("template");
            part(&t.template_id);
            let mut vars: Vec<_> = t.variables.iter().collect();
            vars.sort();
            for (k, val) in vars {
                part(k);
                part(val);
            }
        }
        None => part("none"),
    }
    part(if req.urgent { "urgent" } else { "" });
    part(&req.signing_credential_id);
    crate::deliveries::hex(&h.finalize())
}
