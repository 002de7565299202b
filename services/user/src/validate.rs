//! Field rules for users and passwords.

use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::User;
use opsconductor_platform::validate::{is_email, is_slug, Violations};

use crate::password;

pub fn username(v: &mut Violations, field: &str, value: &str) {
    if v.required(field, value) {
        v.check(
            is_slug(value, 3, 64, &['.', '_', '-'])
                && value.starts_with(|c: char| c.is_ascii_lowercase()),
            field,
            "must be 3-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter",
        );
    }
}

/// The mutable fields of a user (email, display name, role, disabled).
pub fn user_fields(v: &mut Violations, prefix: &str, user: &User) {
    let email = format!("{prefix}.email");
    if v.required(&email, &user.email) {
        v.check(is_email(&user.email), &email, "must be an email address");
    }
    let display_name = format!("{prefix}.display_name");
    v.max_chars(&display_name, &user.display_name, 128);
    v.printable(&display_name, &user.display_name);
    let role = format!("{prefix}.role");
    match Role::try_from(user.role) {
        Ok(Role::Unspecified) => v.add(
            role,
            "is required: ROLE_VIEWER, ROLE_OPERATOR or ROLE_ADMIN",
        ),
        Ok(_) => {}
        Err(_) => v.add(role, format!("{} is not a role", user.role)),
    }
}

pub fn new_password(v: &mut Violations, field: &str, value: &str) {
    let n = value.chars().count();
    v.check(
        (password::MIN_LEN..=password::MAX_LEN).contains(&n),
        field,
        format!(
            "must be {}-{} characters",
            password::MIN_LEN,
            password::MAX_LEN
        ),
    );
}
