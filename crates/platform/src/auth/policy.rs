use opsconductor_api::common::v1::CallerPolicy;

use crate::principal::Principal;

/// Whether a policy admits a caller. A user passes on their role (`min_role`) or as themselves
/// (`allow_self`, ownership checked by the handler); a service passes if it is listed. A service
/// calling on a user's behalf passes only if both pass: a viewer cannot make a job run by
/// asking a service to run it.
pub fn admits(policy: &CallerPolicy, principal: &Principal) -> bool {
    if policy.public {
        return true;
    }
    let service = principal
        .service
        .as_ref()
        .map(|id| policy.services.iter().any(|allowed| allowed == id));
    let user = principal.user.as_ref().map(|user| {
        policy.allow_self || (policy.min_role != 0 && user.role as i32 >= policy.min_role)
    });
    match (service, user) {
        (Some(service), None) => service,
        (None, Some(user)) => user,
        (Some(service), Some(user)) => service && user,
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::UserIdentity;
    use opsconductor_api::common::v1::Role;

    fn user(role: Role) -> Principal {
        Principal::user(UserIdentity::new("u", role, None, "t"))
    }

    #[test]
    fn roles_services_self_and_on_behalf() {
        let operator_or_scheduler = CallerPolicy {
            min_role: Role::Operator as i32,
            services: vec!["scheduler".into()],
            ..Default::default()
        };
        assert!(!admits(&operator_or_scheduler, &user(Role::Viewer)));
        assert!(admits(&operator_or_scheduler, &user(Role::Operator)));
        assert!(admits(&operator_or_scheduler, &user(Role::Admin)));
        assert!(admits(
            &operator_or_scheduler,
            &Principal::service("scheduler")
        ));
        assert!(!admits(&operator_or_scheduler, &Principal::service("jobs")));
        let mut for_viewer = Principal::service("scheduler");
        for_viewer.user = user(Role::Viewer).user;
        assert!(
            !admits(&operator_or_scheduler, &for_viewer),
            "both must pass"
        );
        let mut for_operator = Principal::service("scheduler");
        for_operator.user = user(Role::Operator).user;
        assert!(admits(&operator_or_scheduler, &for_operator));

        let own = CallerPolicy {
            allow_self: true,
            ..Default::default()
        };
        assert!(admits(&own, &user(Role::Viewer)));
        assert!(!admits(&own, &Principal::service("jobs")));
        assert!(!admits(&CallerPolicy::default(), &user(Role::Admin)));
        let unknown_role = Principal::user(UserIdentity::new("u", Role::Unspecified, None, "t"));
        assert!(!admits(&operator_or_scheduler, &unknown_role));
    }
}
