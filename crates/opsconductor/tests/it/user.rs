//! The user service through its generated client, on SQLite and PostgreSQL.

use opsconductor_api::common::v1::{NotificationChannel, Role};
use opsconductor_api::user::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{now_secs, on_both_backends, Sandbox, UsersExt};
use tonic::Code;

use crate::support::{assert_code, assert_violations, MISSING_ID};

fn new_user(username: &str) -> User {
    User {
        username: username.into(),
        email: format!("{username}@example.com"),
        display_name: format!("The {username}"),
        role: Role::Operator as i32,
        ..Default::default()
    }
}

async fn create(s: &Sandbox, username: &str, password: &str) -> User {
    s.user()
        .create(new_user(username), password)
        .await
        .expect("create user")
}

/// Users besides the bootstrapped administrator.
async fn count_users(s: &Sandbox) -> usize {
    s.user()
        .list(ListUsersRequest {
            page_size: 500,
            show_disabled: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .users
        .iter()
        .filter(|u| u.username != "admin")
        .count()
}

on_both_backends!(crud_round_trip);
async fn crud_round_trip(s: &Sandbox) {
    let created = create(s, "alice", "correct horse battery").await;
    assert!(uuid::Uuid::try_parse(&created.id).is_ok());
    assert!(created.password_set);
    assert_eq!(created.role, Role::Operator as i32);
    assert!(created.create_time.is_some());

    let got = s.user().get(&created.id).await.unwrap();
    assert_eq!(got, created);

    let updated = s
        .user()
        .update(
            User {
                id: created.id.clone(),
                display_name: "Alice A.".into(),
                role: Role::Admin as i32,
                email: "ignored@example.com".into(),
                ..Default::default()
            },
            &["display_name", "role"],
        )
        .await
        .unwrap();
    assert_eq!(updated.display_name, "Alice A.");
    assert_eq!(updated.role, Role::Admin as i32);
    assert_eq!(updated.email, created.email, "fields outside the mask stay");
    assert!(
        updated.update_time.unwrap().seconds * 1_000_000_000
            + i64::from(updated.update_time.unwrap().nanos)
            > created.update_time.unwrap().seconds * 1_000_000_000
                + i64::from(created.update_time.unwrap().nanos)
    );

    s.user().delete(&created.id).await.unwrap();
    let err = s.user().get(&created.id).await.unwrap_err();
    assert_code(&err, Code::NotFound, "RESOURCE_NOT_FOUND");
}

on_both_backends!(duplicates_and_missing);
async fn duplicates_and_missing(s: &Sandbox) {
    create(s, "bob", "").await;
    let err = s.user().create(new_user("bob"), "").await.unwrap_err();
    assert_code(&err, Code::AlreadyExists, "RESOURCE_ALREADY_EXISTS");
    assert_eq!(count_users(s).await, 1, "the duplicate wrote nothing");

    let id = MISSING_ID.to_string();
    let mut c = s.user();
    let not_found = [
        c.get(&id).await.unwrap_err(),
        c.delete(&id).await.unwrap_err(),
        // No mask at all, not an empty one.
        c.update_user(UpdateUserRequest {
            user: Some(User {
                id: id.clone(),
                ..new_user("ghost")
            }),
            update_mask: None,
        })
        .await
        .unwrap_err(),
        c.set_password(SetPasswordRequest {
            user_id: id.clone(),
            new_password: "long enough password".into(),
        })
        .await
        .unwrap_err(),
        // A user who no longer exists, with a token still alive, changing their own password.
        s.clients_as(&s.mint(&opsconductor_tokens::Claims::user(
            "opsconductor",
            "opsconductor",
            &id,
            "viewer",
            0,
            now_secs(),
            900,
        )))
        .user()
        .change_password(ChangePasswordRequest {
            user_id: id.clone(),
            current_password: "whatever it was".into(),
            new_password: "long enough password".into(),
        })
        .await
        .unwrap_err(),
        c.preferences(&id).await.unwrap_err(),
        c.set_preferences(NotificationPreferences {
            user_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    ];
    for err in not_found {
        assert_code(&err, Code::NotFound, "RESOURCE_NOT_FOUND");
    }
    // Not even an administrator changes someone else's password with ChangePassword.
    let err = c
        .change_password(ChangePasswordRequest {
            user_id: id.clone(),
            current_password: "whatever it was".into(),
            new_password: "long enough password".into(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
}

on_both_backends!(bad_input_is_rejected_and_writes_nothing);
async fn bad_input_is_rejected_and_writes_nothing(s: &Sandbox) {
    let existing = create(s, "carol", "").await;
    let mut c = s.user();

    let err = c
        .create(
            User {
                username: "9-Bad Name".into(),
                email: "not-an-email".into(),
                display_name: "x".repeat(200),
                role: 42,
                ..Default::default()
            },
            "short",
        )
        .await
        .unwrap_err();
    assert_violations(
        &err,
        &[
            "user.username",
            "user.email",
            "user.display_name",
            "user.role",
            "password",
        ],
    );
    let err = c
        .create_user(CreateUserRequest {
            user: None,
            password: String::new(),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["user"]);
    let err = c
        .create(
            User {
                role: 0,
                ..new_user("dave")
            },
            "",
        )
        .await
        .unwrap_err();
    assert_violations(&err, &["user.role"]);

    let err = c.get("nope").await.unwrap_err();
    assert_violations(&err, &["id"]);
    let err = c.delete("").await.unwrap_err();
    assert_violations(&err, &["id"]);
    let err = c
        .list(ListUsersRequest {
            page_size: -1,
            page_token: "garbage".into(),
            role: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["page_size", "page_token", "role"]);

    let err = c
        .update(
            User {
                id: existing.id.clone(),
                ..Default::default()
            },
            &["username", "email"],
        )
        .await
        .unwrap_err();
    assert_violations(&err, &["update_mask.paths[0]"]);
    let err = c
        .update(
            User {
                id: existing.id.clone(),
                email: "bad".into(),
                ..Default::default()
            },
            &["email"],
        )
        .await
        .unwrap_err();
    assert_violations(&err, &["user.email"]);

    let err = c
        .set_password(SetPasswordRequest {
            user_id: existing.id.clone(),
            new_password: "short".into(),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["new_password"]);
    let err = c
        .change_password(ChangePasswordRequest {
            user_id: "x".into(),
            current_password: String::new(),
            new_password: "short".into(),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["user_id", "current_password", "new_password"]);
    let err = s
        .clients_as(&s.service_token(ServiceKind::Auth).await)
        .user()
        .check("", "")
        .await
        .unwrap_err();
    assert_violations(&err, &["username", "password"]);
    let err = c.preferences("1").await.unwrap_err();
    assert_violations(&err, &["user_id"]);
    let err = c
        .set_preferences(NotificationPreferences {
            user_id: existing.id.clone(),
            destinations: vec![
                ChannelDestination {
                    channel: NotificationChannel::Email as i32,
                    destination: "nobody".into(),
                    enabled: true,
                    signing_credential_id: String::new(),
                },
                ChannelDestination {
                    channel: NotificationChannel::Slack as i32,
                    destination: "http://insecure.example.com/hook".into(),
                    enabled: true,
                    signing_credential_id: String::new(),
                },
                ChannelDestination {
                    channel: 0,
                    destination: "x".into(),
                    enabled: true,
                    signing_credential_id: String::new(),
                },
            ],
            quiet_hours: Some(QuietHours {
                enabled: true,
                start: "25:00".into(),
                end: "07:00".into(),
                time_zone: "Mars/Olympus".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(
        &err,
        &[
            "preferences.destinations[0].destination",
            "preferences.destinations[1].destination",
            "preferences.destinations[2].channel",
            "preferences.quiet_hours.start",
            "preferences.quiet_hours.time_zone",
        ],
    );

    // Nothing above was written.
    assert_eq!(count_users(s).await, 1);
    let still = c.get(&existing.id).await.unwrap();
    assert_eq!(still, existing);
    let prefs = c.preferences(&existing.id).await.unwrap();
    assert!(prefs.update_time.is_none(), "still the defaults: {prefs:?}");
}

on_both_backends!(passwords_are_checked_and_never_returned);
async fn passwords_are_checked_and_never_returned(s: &Sandbox) {
    let user = create(s, "erin", "first password 1").await;
    // CheckPassword is the auth service's; a password change is the user's own.
    let mut c = s
        .clients_as(&s.service_token(ServiceKind::Auth).await)
        .user();
    let mut erin = s
        .clients_as(&s.login("erin", "first password 1").await.access_token)
        .user();
    let ok = c.check("erin", "first password 1").await.unwrap();
    assert!(ok.valid);
    assert_eq!(ok.user.unwrap().id, user.id);
    let bad = c.check("erin", "wrong password!!").await.unwrap();
    assert!(!bad.valid && bad.user.is_none());
    let unknown = c.check("nobody", "first password 1").await.unwrap();
    assert!(!unknown.valid);

    let err = erin
        .change_password(ChangePasswordRequest {
            user_id: user.id.clone(),
            current_password: "not the password".into(),
            new_password: "second password 2".into(),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["current_password"]);
    erin.change_password(ChangePasswordRequest {
        user_id: user.id.clone(),
        current_password: "first password 1".into(),
        new_password: "second password 2".into(),
    })
    .await
    .unwrap();
    assert!(!c.check("erin", "first password 1").await.unwrap().valid);
    assert!(c.check("erin", "second password 2").await.unwrap().valid);

    s.user()
        .set_password(SetPasswordRequest {
            user_id: user.id.clone(),
            new_password: "admin reset pw 3".into(),
        })
        .await
        .unwrap();
    assert!(c.check("erin", "admin reset pw 3").await.unwrap().valid);

    // A disabled user's correct password does not pass.
    s.user()
        .update(
            User {
                id: user.id.clone(),
                disabled: true,
                ..Default::default()
            },
            &["disabled"],
        )
        .await
        .unwrap();
    assert!(!c.check("erin", "admin reset pw 3").await.unwrap().valid);
    // Disabled users are hidden unless asked for (the auth service sees the administrator).
    assert_eq!(
        c.list(ListUsersRequest::default())
            .await
            .unwrap()
            .users
            .len(),
        1
    );
    assert_eq!(count_users(s).await, 1);

    // Stored as an argon2id hash, never as the password.
    let (stored,): (Option<String>,) =
        sqlx::query_as("SELECT password_hash FROM users WHERE id = $1")
            .bind(&user.id)
            .fetch_one(s.db(ServiceKind::User).pool())
            .await
            .unwrap();
    let stored = stored.expect("a hash is stored");
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("admin reset pw 3"));
}

on_both_backends!(preferences_default_and_replace);
async fn preferences_default_and_replace(s: &Sandbox) {
    let user = create(s, "frank", "").await;
    let mut c = s.user();
    let defaults = c.preferences(&user.id).await.unwrap();
    assert!(defaults.notify_on_failure && !defaults.notify_on_success);
    assert_eq!(defaults.destinations[0].destination, user.email);

    let wanted = NotificationPreferences {
        user_id: user.id.clone(),
        destinations: vec![
            ChannelDestination {
                channel: NotificationChannel::Teams as i32,
                destination: "https://example.webhook.office.com/x".into(),
                enabled: true,
                signing_credential_id: String::new(),
            },
            ChannelDestination {
                channel: NotificationChannel::Webhook as i32,
                destination: "http://hooks.internal:8080/ops".into(),
                enabled: false,
                signing_credential_id: String::new(),
            },
        ],
        notify_on_start: true,
        notify_on_success: true,
        notify_on_failure: true,
        quiet_hours: Some(QuietHours {
            enabled: true,
            start: "22:00".into(),
            end: "06:30".into(),
            time_zone: "Europe/Berlin".into(),
        }),
        update_time: None,
    };
    let stored = c.set_preferences(wanted.clone()).await.unwrap();
    assert!(stored.update_time.is_some());
    let read = c.preferences(&user.id).await.unwrap();
    assert_eq!(
        NotificationPreferences {
            update_time: None,
            ..read.clone()
        },
        wanted
    );
    assert_eq!(read.update_time, stored.update_time);

    // Deleting the user deletes the preferences with it.
    c.delete(&user.id).await.unwrap();
    let again = create(s, "frank", "").await;
    let fresh = c.preferences(&again.id).await.unwrap();
    assert!(fresh.update_time.is_none());
}

on_both_backends!(list_filters_and_pages);
async fn list_filters_and_pages(s: &Sandbox) {
    let mut c = s.user();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut u = new_user(&format!("user{i}"));
        if i % 3 == 0 {
            u.role = Role::Viewer as i32;
        }
        ids.push(c.create(u, "").await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list(ListUsersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    // The bootstrapped administrator came first.
    let mut expected = vec![s.admin.user_id.clone()];
    expected.extend(ids.clone());
    assert_eq!(seen, expected, "every user once, in creation order");

    let viewers = c
        .list(ListUsersRequest {
            role: Role::Viewer as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .users;
    assert_eq!(viewers.len(), 3);
    let one = c
        .list(ListUsersRequest {
            username: "user4".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .users;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, ids[4]);
}

on_both_backends!(password_change_needs_a_password);
async fn password_change_needs_a_password(s: &Sandbox) {
    let user = create(s, "nopass", "").await;
    // Without a password the user cannot sign in: a token for them, signed by the auth
    // service's key, stands in for a session.
    let token = s.mint(&opsconductor_tokens::Claims::user(
        "opsconductor",
        "opsconductor",
        &user.id,
        "operator",
        0,
        now_secs(),
        900,
    ));
    let err = s
        .clients_as(&token)
        .user()
        .change_password(ChangePasswordRequest {
            user_id: user.id.clone(),
            current_password: "anything at all".into(),
            new_password: "a brand new password".into(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, "PASSWORD_NOT_SET");
}

on_both_backends!(stale_updates_are_refused);
async fn stale_updates_are_refused(s: &Sandbox) {
    let user = create(s, "racer", "").await;
    let outbox = opsconductor_messaging::Outbox::new(s.db(ServiceKind::User).clone());
    let audit = opsconductor_messaging::AuditLog::new(&outbox, &s.broker.names(), "user");
    let store = opsconductor_user::UserStore::new(s.db(ServiceKind::User).clone(), audit);
    let (mut read, version) = store.version(&user.id).await.unwrap();
    let (fields, cause) = (
        ["display_name".to_string()],
        opsconductor_messaging::Cause::default(),
    );
    read.display_name = "first writer".into();
    store.update(&read, version, &fields, &cause).await.unwrap();
    // A second writer that read the same version must not overwrite the first.
    read.display_name = "second writer".into();
    let err = store
        .update(&read, version, &fields, &cause)
        .await
        .unwrap_err();
    let status = tonic::Status::from(err);
    assert_code(&status, Code::FailedPrecondition, "CONCURRENT_MODIFICATION");
    let now = s.user().get(&user.id).await.unwrap();
    assert_eq!(now.display_name, "first writer");
}
